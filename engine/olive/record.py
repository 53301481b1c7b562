"""What a conversion from an Olive config writes, and where each piece came from.

- `Record`: the pipeline being built; `put` sets a slimops key from an Olive key, `note` and
  `drop` say what happened to a setting (a comment in the written file; a warning when it
  changes what runs), `error` is a located problem. Every Olive key of a section is either
  taken by `take` or reported: nothing is ignored in silence.
- `Note`: one of those sayings, at a pipeline path, from an Olive path.
- `OliveLines`: the pipeline's `Lines`, pointing each slimops key at the Olive line it came
  from, so an error in the converted pipeline names the Olive file, its line and its key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Iterable

from slimops.config.source import Lines, Path_, dotted_path
from slimops.errors import Issue


@dataclass(frozen=True)
class Note:
    """A comment on the converted pipeline: at `path` (slimops), about `source` (Olive)."""

    path: Path_
    source: Path_
    text: str
    warn: bool = False  # True: a setting that changes what runs was dropped or changed
    dropped: bool = False  # the Olive setting has no slimops equivalent; `text` says why

    @property
    def comment(self) -> str:
        """The note as the written pipeline says it, naming the Olive key it drops."""
        return f"dropped {dotted_path(self.source)}: {self.text}" if self.dropped else self.text


@dataclass
class OliveLines(Lines):
    """Lines of the converted pipeline: the Olive file's line of the key each slimops key came from."""

    origin: dict[Path_, Path_] = field(default_factory=dict)

    def issue(self, path: Path_, message: str) -> Issue:
        found = super().issue(path, message)
        for depth in range(len(path), -1, -1):
            source = self.origin.get(path[:depth])
            if source is not None:
                olive = dotted_path((*source, *path[depth:]))
                slimops = dotted_path(path)
                return Issue(found.file, found.line, olive if olive == slimops else f"{olive} (slimops {slimops})", message)
        return found


class Record:
    """The pipeline a conversion builds, with the origin of each key, its notes and its issues."""

    def __init__(self, lines: Lines):
        self.source = lines
        self.pipeline: dict[str, Any] = {}
        self.origin: dict[Path_, Path_] = {}
        self.notes: list[Note] = []
        self.issues: list[Issue] = []

    def put(self, path: Path_, value: Any, source: Path_, note: str | None = None) -> None:
        """Set `path` of the pipeline to `value`, which Olive's `source` gave."""
        target = self.pipeline
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
        self.origin.setdefault(path, source)
        if note is None and str(source[-1]) != str(path[-1]) and source in self.source.lines:
            note = f"from {dotted_path(source)}"  # a renamed setting: say which Olive key it was
        if note:
            self.notes.append(Note(path, source, note))

    def note(self, path: Path_, source: Path_, text: str, warn: bool = False) -> None:
        self.notes.append(Note(path, source, text, warn))

    def drop(self, path: Path_, source: Path_, why: str, warn: bool = True) -> None:
        """Olive's `source` has no slimops equivalent: a comment at `path`, and a warning when `warn`."""
        self.notes.append(Note(path, source, why, warn, dropped=True))

    def error(self, source: Path_, message: str) -> None:
        self.issues.append(self.source.issue(source, message))

    def unknown(self, source: Path_, known: Iterable[str], what: str, nearest: str = "") -> None:
        """`source` names no setting Olive has in this section: an error naming the nearest one."""
        key = str(source[-1])
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"{what} takes: {', '.join(sorted(known))}"
        self.error(source, f"'{key}' is not a setting of {what}; {hint}{nearest}")

    def take(self, body: dict[str, Any], source: Path_, known: Iterable[str], what: str) -> dict[str, Any]:
        """The items of `body` whose keys `known` lists; each other key is an `unknown` error."""
        known = set(known)
        for key in body:
            if key not in known:
                self.unknown((*source, key), known, what)
        return {key: value for key, value in body.items() if key in known}

    def lines(self) -> OliveLines:
        """The converted pipeline's lines: each key at its Olive source's line."""
        out = OliveLines(self.source.file, origin=dict(self.origin))
        for path, source in self.origin.items():
            for depth in range(len(source), -1, -1):
                line = self.source.lines.get(source[:depth])
                if line is not None:
                    out.lines[path] = line
                    break
        return out

    def warnings(self) -> list[Issue]:
        return [self.source.issue(note.source, f"dropped: {note.text}" if note.dropped else note.text)
                for note in self.notes if note.warn]  # the issue names the key already
