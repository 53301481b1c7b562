"""The pipeline config: pydantic models, and `load_config` that reports every mistake at once.

- `ModelSpec`, `DataSpec`, `EngineSettings`: the typed sections of a pipeline file.
- `PipelineFile`: the file's shape; pass params are checked against each pass's own `Params`.
- `PipelineConfig`: the validated result, passes resolved to their classes and params.
- `load_config(path, overrides)` / `parse_config(text, ...)`: YAML to `PipelineConfig`, or one
  `ConfigError` listing each problem as `FILE:LINE key.path: message`.

Nothing here imports torch: validating a file takes milliseconds.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slimops.errors import ConfigError, Issue
from slimops.plugin import Pass
from slimops.registry import PassNotFound, Registry
from slimops.search import SearchSpec
from slimops.source import Lines, apply_overrides, dotted_path, load_yaml, parse_yaml
from slimops.targets import TargetProfile

RESERVED_PASS_KEYS = ("type", "inputs", "targets")
MODEL_INPUT = "model"


class ModelSpec(BaseModel):
    """The pipeline's input model. In YAML a mapping, or just its path or name."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="A folder, a file (.gguf, .onnx), a registered name (smollm2-135m) or a hub id.")
    kind: str | None = Field(None, description="Artifact kind; detected from the files when absent.")
    task: Literal["text-generation", "text-classification"] = Field(
        "text-generation", description="What the model does: a causal LM, or an encoder with a classification head."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class DataSpec(BaseModel):
    """One data set: where it is, how to split it, how to turn an example into text."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["jsonl", "json", "csv", "parquet", "text", "hf"] = Field(
        "jsonl", description="File format, or hf for a hub data set (needs a network)."
    )
    files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="Local file(s), relative to the pipeline file; a mapping gives one per split."
    )
    name: str | None = Field(None, description="Hub data set name, for type: hf.")
    subset: str | None = Field(None, description="Hub data set subset (config name), for type: hf.")
    splits: dict[str, str] = Field(
        default_factory=dict,
        description="Split name to slice, e.g. {train: '[:90%]', eval: '[90%:]'} or {eval: 'test[:200]'}.",
    )
    template: str | None = Field(None, description="Text of one example, with {field} placeholders.")
    prompt: str | None = Field(None, description="Prompt part of an example; with `response`, loss covers the response only.")
    response: str | None = Field(None, description="Response part of an example, with {field} placeholders.")
    messages: str | None = Field(None, description="Column of chat messages, rendered with the model's chat template.")
    text: str | None = Field(None, description="Column of plain text (for perplexity or type: text).")
    label: str | None = Field(None, description="Column of the label, for classification and accuracy.")

    def file_list(self) -> list[str]:
        if self.files is None:
            return []
        if isinstance(self.files, str):
            return [self.files]
        if isinstance(self.files, list):
            return list(self.files)
        out: list[str] = []
        for value in self.files.values():
            out.extend([value] if isinstance(value, str) else value)
        return out


class EngineSettings(BaseModel):
    """Where the engine keeps its cache and writes its outputs."""

    model_config = ConfigDict(extra="forbid")

    cache_dir: str = Field(".slimops/cache", description="Cache folder, relative to the pipeline file.")
    output_dir: str = Field("out", description="Output folder, relative to the pipeline file.")


class PipelineFile(BaseModel):
    """The shape of a pipeline file. Pass params are validated by each pass's own Params."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("pipeline", description="A name for this pipeline, shown in plans and reports.")
    model: ModelSpec | None = Field(None, description="The input model.")
    data: dict[str, DataSpec] = Field(default_factory=dict, description="Data sets, by the name passes refer to.")
    targets: dict[str, TargetProfile] = Field(
        default_factory=dict, description="Hardware targets: a built-in name (cpu-int4) or a full profile."
    )
    passes: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Passes in order; each consumes the previous output unless `inputs` says."
    )
    engine: EngineSettings = Field(default_factory=EngineSettings)
    search: SearchSpec | None = Field(None, description="A search over pass params; `slimops run` then runs its trials.")


@dataclass
class PassConfig:
    """One pass of a pipeline, resolved."""

    name: str
    type: str
    cls: type[Pass]
    params: BaseModel
    inputs: list[str] | None
    targets: list[str] | None
    line: int | None = None


@dataclass
class PipelineConfig:
    """A validated pipeline, ready to plan."""

    file: Path | None
    base_dir: Path
    spec: PipelineFile
    passes: dict[str, PassConfig]
    lines: Lines
    registry: Registry = field(repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cache_dir(self) -> Path:
        return (self.base_dir / self.spec.engine.cache_dir).resolve()

    @property
    def output_dir(self) -> Path:
        return (self.base_dir / self.spec.engine.output_dir).resolve()

    def where(self, *path: str | int) -> str:
        """`FILE:LINE` of a key path, for messages."""
        return str(self.lines.issue(tuple(path), "")).rsplit(" ", 1)[0].rstrip(":")


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, override and validate a pipeline file.

    Raises:
        ConfigError: listing every problem found, each with file, line and key path.
    """
    path = Path(path)
    data, lines = load_yaml(path)
    return _validate(data, lines, path.resolve().parent, path, overrides or [])


def parse_config(text: str, base_dir: Path, overrides: list[str] | None = None, name: str | None = None) -> PipelineConfig:
    """Like `load_config`, for YAML text (paths resolve against `base_dir`)."""
    data, lines = parse_yaml(text, name)
    return _validate(data, lines, base_dir.resolve(), None, overrides or [])


def _validate(data: dict[str, Any], lines: Lines, base_dir: Path, file: Path | None, overrides: list[str]) -> PipelineConfig:
    registry = Registry(search_dir=base_dir)
    apply_overrides(data, overrides, lines, lambda path, raw: _typed_override(path, raw, data, registry))
    issues: list[Issue] = []

    top = {key: value for key, value in data.items()}
    passes_raw = top.get("passes") or {}
    if not isinstance(passes_raw, dict):
        issues.append(lines.issue(("passes",), "must be a mapping of pass name to its settings"))
        passes_raw = {}
        top["passes"] = {}
    spec: PipelineFile | None = None
    try:
        spec = PipelineFile.model_validate(top)
    except ValidationError as err:
        issues.extend(_issues_from(err, PipelineFile, top, (), lines))

    passes = _validate_passes(passes_raw, registry, lines, issues)
    if spec is not None:
        _check_references(spec, passes, lines, base_dir, issues)
    if issues:
        raise ConfigError(issues)
    assert spec is not None
    return PipelineConfig(file=file, base_dir=base_dir, spec=spec, passes=passes, lines=lines, registry=registry, raw=data)


def _validate_passes(passes_raw: dict[str, Any], registry: Registry, lines: Lines, issues: list[Issue]) -> dict[str, PassConfig]:
    passes: dict[str, PassConfig] = {}
    for name, body in passes_raw.items():
        where = ("passes", name)
        name = str(name)
        if name == MODEL_INPUT or any(ch in name for ch in "@/ "):
            issues.append(lines.issue(where, f"'{name}' cannot name a pass (reserved, or holds '@', '/' or a space)"))
            continue
        if not isinstance(body, dict):
            issues.append(lines.issue(where, "must be a mapping with at least 'type', e.g. {type: lora}"))
            continue
        type_name = body.get("type")
        if not isinstance(type_name, str) or not type_name:
            issues.append(lines.issue((*where, "type"), "missing required key 'type' (see 'slimops passes')"))
            continue
        try:
            cls = registry.get(type_name)
        except PassNotFound as err:
            issues.append(lines.issue((*where, "type"), str(err)))
            continue
        inputs = body.get("inputs")
        if inputs is not None:
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not all(isinstance(item, str) for item in inputs):
                issues.append(lines.issue((*where, "inputs"), "must be a list of pass names (or 'model')"))
                inputs = None
        targets = body.get("targets")
        if targets is not None:
            if isinstance(targets, str):
                targets = [targets]
            if not isinstance(targets, list) or not all(isinstance(item, str) for item in targets):
                issues.append(lines.issue((*where, "targets"), "must be a list of target names"))
                targets = None
        params_raw = {key: value for key, value in body.items() if key not in RESERVED_PASS_KEYS}
        try:
            params = cls.Params.model_validate(params_raw)
        except ValidationError as err:
            issues.extend(_issues_from(err, cls.Params, params_raw, where, lines, extra=RESERVED_PASS_KEYS))
            continue
        passes[name] = PassConfig(name, type_name, cls, params, inputs, targets, lines.lines.get(where))
    return passes


def _check_references(spec: PipelineFile, passes: dict[str, PassConfig], lines: Lines, base_dir: Path, issues: list[Issue]) -> None:
    names = list(passes)
    for name, config in passes.items():
        for index, input_name in enumerate(config.inputs or []):
            if input_name == MODEL_INPUT or input_name in names:
                continue
            close = difflib.get_close_matches(input_name, [*names, MODEL_INPUT], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; passes are: {', '.join(names)}"
            issues.append(lines.issue(("passes", name, "inputs", index), f"unknown input '{input_name}'{hint}"))
        for index, target_name in enumerate(config.targets or []):
            if target_name not in spec.targets:
                issues.append(lines.issue(("passes", name, "targets", index), f"unknown target '{target_name}'; targets are: {', '.join(spec.targets) or 'none'}"))
        for field_name in config.cls.data_fields:
            value = getattr(config.params, field_name, None)
            if isinstance(value, str) and value not in spec.data:
                close = difflib.get_close_matches(value, list(spec.data), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; add it under 'data:' (defined: {', '.join(spec.data) or 'none'})"
                issues.append(lines.issue(("passes", name, field_name), f"unknown data set '{value}'{hint}"))
    if spec.model is not None:
        from slimops.models import REGISTERED

        text = spec.model.path
        local = base_dir / Path(text).expanduser()
        hub_shaped = text.count("/") == 1 and not text.startswith((".", "/", "~"))
        if not local.exists() and text not in REGISTERED and not hub_shaped:
            close = difflib.get_close_matches(text, list(REGISTERED), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            issues.append(lines.issue(("model", "path") if ("model", "path") in lines.lines else ("model",),
                f"'{text}' is neither a local path (relative to {base_dir}) nor a registered model; {hint}registered: {', '.join(REGISTERED)}"))
    from slimops.errors import DataError
    from slimops.passes.data import parse_split

    for data_name, data in spec.data.items():
        for split_name, text in data.splits.items():
            try:
                parse_split(text)
            except DataError as err:
                issues.append(lines.issue(("data", data_name, "splits", split_name), str(err)))
        if data.type == "hf":
            if not data.name:
                issues.append(lines.issue(("data", data_name), "a data set of type hf needs 'name' (the hub data set id)"))
            continue
        if not data.files:
            issues.append(lines.issue(("data", data_name), f"a data set of type {data.type} needs 'files'"))
        for file in data.file_list():
            if not (base_dir / file).is_file():
                issues.append(lines.issue(("data", data_name, "files"), f"no such file '{file}' (relative to {base_dir})"))


# -- turning pydantic's errors into located, actionable issues ---------------------------------------


def _issues_from(err: ValidationError, cls: type[BaseModel], data: Any, prefix: tuple, lines: Lines, extra: tuple[str, ...] = ()) -> list[Issue]:
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


def _typed_override(path: tuple, raw: str, data: dict[str, Any], registry: Registry) -> Any:
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
