"""`python -m slimops.cli`: the `slimops` command."""

from slimops.cli import entry

entry()
