"""The split grammar of a `data:` entry: `name`, `[a:b]` or `name[a:b]`.

- `parse_split(text)`: `"train[:90%]"` -> `Split("train", None, "90%")`; bad syntax is a `DataError`.
- `Split.bounds(count)`: the slice of `count` examples it means (counts or percentages, negative
  from the end, clamped).
- `DEFAULT_SPLIT`: the split a data set without `splits:` has.
- `defined_splits(spec)` / `has_split(spec, split)`: the splits a `DataSpec` defines.
- `source_files(spec, source, split, name)`: the files a split reads, as written in the config.

The engine checks every split of a config with it before anything runs; the data loader of the
passes (`slimops.passes._data`) slices with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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


def defined_splits(spec: Any) -> list[str]:
    """The splits a data set defines: its `splits:` names and the keys of a `files:` mapping, or `train`."""
    names = list(spec.splits)
    if isinstance(spec.files, dict):
        return names + [key for key in spec.files if key not in names]
    return names or [DEFAULT_SPLIT]


def has_split(spec: Any, split: str) -> bool:
    """Whether `split` is defined: named in `splits`, a key of `files`, or `train` by default."""
    return split in defined_splits(spec)


def source_files(spec: Any, source: str | None, split: str, name: str = "data", where: str = "") -> list[str]:
    """The files split `split` (source `source`, from `parse_split`) of data set `name` reads.

    Raises:
        DataError: the source is not a key of a `files:` mapping, names a source though `files:`
            is no mapping, or no files are given.
    """
    files = spec.files
    if isinstance(files, dict):
        key = source or split
        if key not in files:
            raise DataError(f"{where}names '{key}', which is not a key of data.{name}.files ({', '.join(files)})")
        files = files[key]
    elif source not in (None, DEFAULT_SPLIT):
        raise DataError(f"{where}names '{source}', but data.{name}.files is not a mapping of split names to files; drop the name or use a mapping")
    paths = [files] if isinstance(files, str) else list(files or [])
    if not paths:
        raise DataError(f"{where}no files given; set data.{name}.files")
    return paths
