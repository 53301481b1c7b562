"""The split grammar of a `data:` entry: `name`, `[a:b]` or `name[a:b]`.

- `parse_split(text)`: `"train[:90%]"` -> `Split("train", None, "90%")`; bad syntax is a `DataError`.
- `Split.bounds(count)`: the slice of `count` examples it means (counts or percentages, negative
  from the end, clamped).
- `DEFAULT_SPLIT`: the split a data set without `splits:` has.

The engine checks every split of a config with it before anything runs; the data loader of the
passes (`slimops.passes._data`) slices with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slimops.errors import DataError

SPLIT_SYNTAX = re.compile(r"^\s*(?P<name>[A-Za-z_][\w.-]*)?\s*(?:\[\s*(?P<start>-?\d+%?)?\s*:\s*(?P<stop>-?\d+%?)?\s*\])?\s*$")
DEFAULT_SPLIT = "train"


@dataclass(frozen=True)
class Split:
    """A parsed split: which part of the source (a file key or hub split), and a slice of it."""

    source: str | None
    start: str | None = None
    stop: str | None = None

    def bounds(self, count: int) -> tuple[int, int]:
        return _bound(self.start, count, 0), _bound(self.stop, count, count)


def _bound(text: str | None, count: int, default: int) -> int:
    if text is None:
        return default
    if text.endswith("%"):
        value = round(count * int(text[:-1]) / 100)
    else:
        value = int(text)
    if value < 0:
        value += count
    return max(0, min(count, value))


def parse_split(text: str, where: str = "") -> Split:
    """Parse `name`, `[a:b]`, `name[a:b]`; `a`/`b` are counts or percentages, either may be empty.

    Raises:
        DataError: the text is not of that form.
    """
    match = SPLIT_SYNTAX.match(text or "")
    if not text or not text.strip() or match is None or (match["name"] is None and "[" not in text):
        raise DataError(
            f"{where}bad split '{text}': write a slice like '[:90%]', '[100:200]' or 'train[:90%]' "
            "(start and stop are counts or percentages; either may be empty)"
        )
    for bound in (match["start"], match["stop"]):
        if bound and bound.endswith("%") and not 0 <= int(bound[:-1].lstrip("-")) <= 100:
            raise DataError(f"{where}bad split '{text}': a percentage must lie between 0% and 100%")
    return Split(match["name"], match["start"], match["stop"])
