"""The error of a parity check: the `parity` module raises it, and so do the sessions and the KV
check it runs (`ort.open_session`, `kvcheck`), which is why it lives beside them."""

from __future__ import annotations

from slimops.errors import SlimopsError


class ParityError(SlimopsError):
    """A model missed a parity threshold; the scheduler reports it as the node's failure."""
