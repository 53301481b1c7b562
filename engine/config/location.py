"""Where a config error is: pydantic's errors turned into `Issue`s with file, line and key path,
with a did-you-mean for unknown keys; and `--set` values typed by the schema they land in.

Pydantic reports locations by model and type names; these functions walk the data and the
annotations side by side to name the user's key path instead.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from slimops.config.source import Lines
from slimops.config.spec import RESERVED_PASS_KEYS, PipelineFile
from slimops.errors import Issue
from slimops.registry import PassNotFound, Registry


def issues_from(err: ValidationError, cls: type[BaseModel], data: Any, prefix: tuple, lines: Lines, extra: tuple[str, ...] = ()) -> list[Issue]:
    issues = []
    for error in err.errors():
        path = _data_path(error["loc"], data)
        full = (*prefix, *path)
        kind = error["type"]
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


def _data_path(loc: tuple, data: Any) -> tuple:
    """Drop the parts of a pydantic location that are type names, not keys of the data."""
    path: list = []
    node = data
    for position, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            path.append(part)
        elif position == len(loc) - 1 and isinstance(node, dict):
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


def typed_override(path: tuple, raw: str, data: dict[str, Any], registry: Registry) -> Any:
    """Type an override's text by the schema: text where a string is expected, YAML otherwise."""
    annotation = None
    if len(path) >= 3 and path[0] == "passes":
        body = (data.get("passes") or {}).get(path[1])
        type_name = body.get("type") if isinstance(body, dict) else None
        if path[2] == "type" or path[2] in RESERVED_PASS_KEYS[:1]:
            annotation = str
        elif isinstance(type_name, str):
            try:
                annotation = _annotation_at(registry.get(type_name).Params, path[2:])
            except PassNotFound:
                annotation = None
    else:
        annotation = _annotation_at(PipelineFile, path)
    if annotation is not None and _wants_text(annotation):
        return raw
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
