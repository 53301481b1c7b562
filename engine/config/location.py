"""Where a config error is: pydantic's errors turned into `Issue`s with file, line and key path,
with a did-you-mean for unknown keys; and `OverrideSchema`, what `--set` asks of the models: the type
a value lands in, the field a shorthand string stands for, and whether a path is a typo.

Pydantic reports locations by model and type names; these functions walk the data and the
annotations side by side to name the user's key path instead.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from slimops.config.source import Lines, dotted_path, parse_value
from slimops.config.spec import RESERVED_PASS_KEYS, SHORTHAND, PipelineFile
from slimops.errors import Issue
from slimops.registry import PassNotFound, Registry


def issues_from(err: ValidationError, cls: type[BaseModel], data: Any, prefix: tuple, lines: Lines, extra: tuple[str, ...] = ()) -> list[Issue]:
    issues = []
    for error in err.errors():
        kind = error["type"]
        path = _data_path(error["loc"], data, kind == "missing")
        full = (*prefix, *path)
        if kind == "extra_forbidden":
            allowed = [*_fields_at(cls, path[:-1]), *(extra if len(path) == 1 else ())]
            close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else (f"; allowed: {', '.join(allowed)}" if allowed else "")
            message = f"unknown key{hint}"
        elif kind == "missing":
            message = "missing required key"
        else:
            message = error["msg"].replace("Value error, ", "")
            if "input" in error and not isinstance(error["input"], (dict, list)):
                message += f" (got {error['input']!r})"
        issues.append(lines.issue(full, message))
    return issues


def _data_path(loc: tuple, data: Any, missing: bool = False) -> tuple:
    """Drop the parts of a pydantic location that are type names or union tags, not keys of the data;
    the last part of a `missing` error is the key to add, so it stays."""
    path: list = []
    node = data
    for position, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            path.append(part)
        elif missing and position == len(loc) - 1 and isinstance(node, dict):
            path.append(part)
    return tuple(path)


def _unwrap(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(annotation) for member in _unwrap(arg)]
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return [annotation]


def _annotation_at(cls: Any, path: tuple) -> Any:
    annotation = cls
    for part in path:
        next_annotation = None
        for member in _unwrap(annotation):
            if isinstance(member, type) and issubclass(member, BaseModel):
                field_info = member.model_fields.get(str(part))
                if field_info is not None:
                    next_annotation = field_info.annotation
                    break
            elif typing.get_origin(member) is dict:
                next_annotation = typing.get_args(member)[1]
                break
            elif typing.get_origin(member) is list:
                next_annotation = typing.get_args(member)[0]
                break
        if next_annotation is None:
            return None
        annotation = next_annotation
    return annotation


def _fields_at(cls: Any, path: tuple) -> list[str]:
    annotation = _annotation_at(cls, path)
    for member in _unwrap(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return list(member.model_fields)
    return []


def _wants_text(annotation: Any) -> bool:
    members = [m for m in _unwrap(annotation) if m is not type(None)]
    if not members:
        return False
    for member in members:
        if member is str:
            continue
        if typing.get_origin(member) is Literal and all(isinstance(v, str) for v in typing.get_args(member)):
            continue
        return False
    return True


_NULLS = ("null", "Null", "NULL", "~")  # what YAML reads as null (besides nothing at all, which `--set K=` keeps as "")

# Named entries `--set` may reach into, and the key that makes a new one (`--set passes.x.type=lora`).
_NAMED = {"passes": ("pass", "type"), "targets": ("target", "extends"), "data": ("data set", "type")}


class OverrideSchema:
    """The config models as `apply_overrides` asks them: typos, shorthands, and the type at a key path."""

    def __init__(self, data: dict[str, Any], registry: Registry):
        self.data = data
        self.registry = registry

    def problem(self, path: tuple, data: dict[str, Any]) -> str | None:
        section = str(path[0])
        if section not in PipelineFile.model_fields:
            close = difflib.get_close_matches(section, list(PipelineFile.model_fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"sections are: {', '.join(PipelineFile.model_fields)}"
            return f"unknown section '{section}'; {hint}"
        if section in _NAMED and len(path) >= 3:
            entries = data.get(section) if isinstance(data.get(section), dict) else {}
            what, maker = _NAMED[section]
            if path[1] not in entries and path[2] != maker:
                close = difflib.get_close_matches(str(path[1]), [str(name) for name in entries], n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                return (f"no {what} '{path[1]}' in the file; {hint}(to add one, set its {maker} first: "
                        f"--set {section}.{path[1]}.{maker}=...)")
        return None

    def shorthand(self, path: tuple) -> str | None:
        return next((SHORTHAND[member] for member in _unwrap(self.annotation(path)) if member in SHORTHAND), None)

    def annotation(self, path: tuple) -> Any:
        """The annotation of the field at `path`, pass params included; None where unknown."""
        if len(path) >= 3 and path[0] == "passes":
            passes = self.data.get("passes")
            body = passes.get(path[1]) if isinstance(passes, dict) else None
            type_name = body.get("type") if isinstance(body, dict) else None
            if path[2] in RESERVED_PASS_KEYS[:1]:
                return str
            if isinstance(type_name, str):
                try:
                    return _annotation_at(self.registry.get(type_name).Params, path[2:])
                except PassNotFound:
                    return None
            return None
        return _annotation_at(PipelineFile, path)

    def typed(self, path: tuple, raw: str) -> Any:
        """Text where a string is expected, YAML (under the file's rules) otherwise.

        Where a string is expected, the text is taken as typed (`8` stays "8"), except that a
        quoted value reads as in the file (`"null"` is null, the text) and, where the field may be
        null, YAML's null (`null`, `~`) is None.
        """
        annotation = self.annotation(path)
        if annotation is not None and _wants_text(annotation):
            text = raw.strip()
            if text in _NULLS and type(None) in _unwrap(annotation):
                return None
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                value = parse_value(text, dotted_path(path))
                if isinstance(value, str):  # not `"a" "b"`, which is not one quoted value
                    return value
            return raw
        return parse_value(raw, dotted_path(path)) if raw.strip() else ""
