"""Loading a pipeline file: YAML to a validated `PipelineConfig`, every mistake reported at once.
An Olive workflow config (`slimops.olive.is_olive`) is converted first and validated as its pipeline.

- `load_config(path, overrides)` / `parse_config(text, ...)`: YAML to `PipelineConfig`, or one
  `ConfigError` listing each problem as `FILE:LINE key.path: message`.
- `PipelineConfig`: the validated result, passes resolved to their classes and params.
- `PassConfig`: one resolved pass.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from slimops.config.location import OverrideSchema, issues_from
from slimops.config.names import name_problem
from slimops.config.source import Lines, apply_overrides, load_yaml, parse_yaml
from slimops.config.spec import MODEL_INPUT, RESERVED_PASS_KEYS, PipelineFile
from slimops.errors import ConfigError, Issue
from slimops.plugin import Pass
from slimops.registry import PassNotFound, Registry
from slimops.storage import default_local_dir, is_url, url_problem


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
    warnings: list[Issue] = field(default_factory=list)  # valid but unusual values, shown before a run
    olive: Any = field(default=None, repr=False)  # the conversion (slimops.olive.Record) when the file is an Olive config

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cache_location(self) -> str | Path:
        """`engine.cache_dir`: a URL as given (s3://...), else the folder, resolved against the pipeline file."""
        value = self.spec.engine.cache_dir
        return value if is_url(value) else (self.base_dir / Path(value).expanduser()).resolve()

    @property
    def local_cache_dir(self) -> Path | None:
        """`engine.local_cache_dir` resolved against the pipeline file; None for the default."""
        value = self.spec.engine.local_cache_dir
        return (self.base_dir / Path(value).expanduser()).resolve() if value else None

    @property
    def cache_dir(self) -> Path:
        """The cache folder on this machine: the cache itself, or with a cache URL, its local copies."""
        location = self.cache_location
        return location if isinstance(location, Path) else (self.local_cache_dir or default_local_dir(location))

    @property
    def output_dir(self) -> Path:
        """`engine.output_dir` resolved against the pipeline file, `~` expanded (as validation reads it)."""
        return (self.base_dir / Path(self.spec.engine.output_dir).expanduser()).resolve()

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
    return _read(data, lines, path.resolve().parent, path, overrides or [])


def parse_config(text: str, base_dir: Path, overrides: list[str] | None = None, name: str | None = None) -> PipelineConfig:
    """Like `load_config`, for YAML text (paths resolve against `base_dir`)."""
    data, lines = parse_yaml(text, name)
    return _read(data, lines, base_dir.resolve(), None, overrides or [])


def _read(data: dict[str, Any], lines: Lines, base_dir: Path, file: Path | None, overrides: list[str]) -> PipelineConfig:
    from slimops.olive import convert, is_olive

    if not is_olive(data):
        return _validate(data, lines, base_dir, file, overrides)
    record = convert(data, lines)  # an Olive workflow config: its pipeline, each key at its Olive line
    config = _validate(copy.deepcopy(record.pipeline), record.lines(), base_dir, file, overrides)
    config.olive = record
    config.warnings[:0] = record.warnings()
    return config


def _validate(data: dict[str, Any], lines: Lines, base_dir: Path, file: Path | None, overrides: list[str]) -> PipelineConfig:
    registry = Registry(search_dir=base_dir)
    apply_overrides(data, overrides, lines, OverrideSchema(data, registry))
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
        issues.extend(issues_from(err, PipelineFile, top, (), lines))

    passes = _validate_passes(passes_raw, registry, lines, issues)
    sections = [(getattr(spec, name), (name,)) for name in type(spec).model_fields if name != "passes"] if spec else []
    sections += [(pc.params, ("passes", name)) for name, pc in passes.items()]  # passes: their validated Params
    if spec is not None:
        _check_references(spec, passes, lines, base_dir, issues)
    issues.extend(lines.issue(path, f"{value} has no meaning here; give a finite number")
                  for section, where in sections for path, value in _non_finite(section, where))
    warnings = [warning for name, pc in passes.items() for warning in _unusual(pc.params, ("passes", name), lines)]
    if not issues and spec is not None and spec.search is not None:
        # each value a trial will set, checked as that trial's load checks it; only on an otherwise
        # valid file, since each check would repeat the file's own errors
        from slimops.config.search import space_issues

        def check(trial: dict[str, Any], sets: list[str]) -> None:
            _validate(trial, Lines(lines.file, dict(lines.lines)), base_dir, file, sets)

        issues.extend(space_issues(spec.search, data, lines, check))
    if issues:
        raise ConfigError(issues)
    assert spec is not None
    return PipelineConfig(file=file, base_dir=base_dir, spec=spec, passes=passes, lines=lines, registry=registry,
                          raw=data, warnings=warnings)


def _non_finite(value: Any, path: tuple) -> list[tuple[tuple, float]]:
    """Every inf or nan in a validated model (`.inf`, `.nan`, or text pydantic read as one), with its key path."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [(path, value)]
    if isinstance(value, BaseModel):
        return [found for name in type(value).model_fields for found in _non_finite(getattr(value, name), (*path, name))]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _non_finite(item, (*path, key))]
    if isinstance(value, (list, tuple)):
        return [found for index, item in enumerate(value) for found in _non_finite(item, (*path, index))]
    return []


def _unusual(params: BaseModel, path: tuple, lines: Lines) -> list[Issue]:
    """Values outside the range a field declares as usual (`json_schema_extra={"usual": [low, high]}`)."""
    found = []
    for name, info in type(params).model_fields.items():
        usual = (info.json_schema_extra or {}).get("usual") if isinstance(info.json_schema_extra, dict) else None
        value = getattr(params, name)
        if usual and isinstance(value, (int, float)) and not usual[0] <= value <= usual[1]:
            found.append(lines.issue((*path, name), f"{value:g} is unusual (usually {usual[0]:g} to {usual[1]:g}); "
                                     "check it is what you meant"))
    return found


def _validate_passes(passes_raw: dict[str, Any], registry: Registry, lines: Lines, issues: list[Issue]) -> dict[str, PassConfig]:
    passes: dict[str, PassConfig] = {}
    for name, body in passes_raw.items():
        where = ("passes", name)
        name = str(name)
        problem = name_problem(name, "pass")
        if problem:
            issues.append(lines.issue(where, problem))
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
            elif len(inputs) > 1 and not cls.many_inputs:
                issues.append(lines.issue((*where, "inputs"), f"a {type_name} pass reads one input, and this names "
                                          f"{len(inputs)} ({', '.join(inputs)}); give one, or one {type_name} pass per input"))
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
            issues.extend(issues_from(err, cls.Params, params_raw, where, lines, extra=RESERVED_PASS_KEYS))
            continue
        passes[name] = PassConfig(name, type_name, cls, params, inputs, targets, lines.lines.get(where))
    return passes


def _check_references(spec: PipelineFile, passes: dict[str, PassConfig], lines: Lines, base_dir: Path, issues: list[Issue]) -> None:
    names = list(passes)
    for target_name in spec.targets:
        problem = name_problem(str(target_name), "target")
        if problem is None and target_name in passes:
            problem = (f"'{target_name}' names both a target and a pass; their outputs would share "
                       f"{spec.engine.output_dir}/{target_name}/: rename one")
        if problem:
            issues.append(lines.issue(("targets", target_name), problem))
    folders: dict[str, Path] = {}
    for key, value in (("cache_dir", spec.engine.cache_dir), ("output_dir", spec.engine.output_dir),
                       ("local_cache_dir", spec.engine.local_cache_dir)):
        if value is None:
            continue
        if is_url(value):
            problem = url_problem(value) if key == "cache_dir" else (
                f"'{value}' is a URL; {key} is a folder on this machine (only cache_dir may be a URL)")
            if problem:
                issues.append(lines.issue(("engine", key), problem))
            continue
        folder = (base_dir / Path(value).expanduser()).resolve()
        if folder in (Path(folder.anchor), Path.home().resolve()):
            issues.append(lines.issue(("engine", key), f"'{value}' is {folder}: slimops writes and deletes there, "
                                      "so give it a folder of its own (e.g. .slimops/cache, out)"))
        elif folder.exists() and not folder.is_dir():
            issues.append(lines.issue(("engine", key), f"'{value}' is a file ({folder}); give a folder"))
        else:
            folders[key] = folder
    out = folders.get("output_dir")
    for key in ("cache_dir", "local_cache_dir"):  # `cache clear` deletes the cache's folder; a run writes the outputs'
        cache = folders.get(key)
        if out is None or cache is None:
            continue
        if out == cache or out.is_relative_to(cache):
            issues.append(lines.issue(("engine", "output_dir"), f"'{spec.engine.output_dir}' is {'' if out == cache else 'inside '}"
                                      f"engine.{key} ({cache}), so clearing the cache would delete the outputs; give each a "
                                      "folder of its own (e.g. out and .slimops/cache)"))
        elif cache.is_relative_to(out) and not cache.relative_to(out).parts[0].startswith("."):
            # a hidden name is safe: no node, target or report of the output folder is ever one
            issues.append(lines.issue(("engine", key), f"'{getattr(spec.engine, key)}' is inside engine.output_dir ({out}), "
                                      "where node folders and reports land; give each a folder of its own (e.g. out and .slimops/cache)"))
    for name, config in passes.items():
        for index, input_name in enumerate(config.inputs or []):
            if input_name == MODEL_INPUT and spec.model is None:
                issues.append(lines.issue(("passes", name, "inputs", index), "'model' is the pipeline's input model, and this "
                                          "pipeline has none: add a model: section, or read another pass"))
                continue
            if input_name == MODEL_INPUT or input_name in names:
                continue
            close = difflib.get_close_matches(input_name, [*names, MODEL_INPUT], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; passes are: {', '.join(names)}"
            issues.append(lines.issue(("passes", name, "inputs", index), f"unknown input '{input_name}'{hint}"))
        if config.targets is not None and not config.targets:  # read as "every target", which an empty list does not say
            issues.append(lines.issue(("passes", name, "targets"), "an empty list names no target; leave targets: out to build "
                                      "for every target, or list the ones to build for"))
        for index, target_name in enumerate(config.targets or []):
            if target_name not in spec.targets:
                issues.append(lines.issue(("passes", name, "targets", index), f"unknown target '{target_name}'; targets are: {', '.join(spec.targets) or 'none'}"))
        for field_name in config.cls.data_fields:
            value = getattr(config.params, field_name, None)
            if isinstance(value, str) and value not in spec.data:
                close = difflib.get_close_matches(value, list(spec.data), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; add it under 'data:' (defined: {', '.join(spec.data) or 'none'})"
                issues.append(lines.issue(("passes", name, field_name), f"unknown data set '{value}'{hint}"))
        from slimops.registry import function_problem

        for key_path, function in config.cls().imports(config.params).items():
            if problem := function_problem(function, base_dir):
                issues.append(lines.issue(("passes", name, *key_path), problem))
    if spec.model is not None:
        from slimops.inputs import REGISTERED, locate, model_problem

        text = spec.model.path
        where = ("model", "path") if ("model", "path") in lines.lines else ("model",)
        found = locate(text, base_dir)
        if found is None:
            close = difflib.get_close_matches(text, list(REGISTERED), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            issues.append(lines.issue(where,
                f"'{text}' is neither a local path (relative to {base_dir}) nor a registered model; {hint}registered: {', '.join(REGISTERED)}"))
        elif found[0] == "local" and (problem := model_problem(found[1])):
            issues.append(lines.issue(where, problem))
    from slimops.errors import DataError
    from slimops.config.data import path_problem
    from slimops.config.splits import parse_split

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
            problem = path_problem(file, base_dir)
            if problem:
                issues.append(lines.issue(("data", data_name, "files"), problem))


