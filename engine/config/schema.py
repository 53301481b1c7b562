"""JSON Schema of pipeline files, for editors (yaml-language-server): `slimops schema`.

The `passes` section is a map whose values are checked by `type`: each registered pass adds its
own Params schema, so an editor completes and checks pass keys.
"""

from __future__ import annotations

import json
from typing import Any

from slimops.config.spec import PipelineFile
from slimops.registry import Registry


def pipeline_schema(registry: Registry | None = None) -> dict[str, Any]:
    registry = registry or Registry()
    schema = PipelineFile.model_json_schema()
    defs = schema.setdefault("$defs", {})
    variants = []
    for name, cls in sorted(registry.all()[0].items()):
        params = cls.Params.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(params.pop("$defs", {}))
        properties = {
            "type": {"const": name, "description": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else name},
            "inputs": {"type": "array", "items": {"type": "string"}, "description": "Nodes this pass reads (default: the previous pass)."},
            "targets": {"type": "array", "items": {"type": "string"}, "description": "Limit a per-target pass to these targets."},
            **params.get("properties", {}),
        }
        variants.append({
            "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
            "then": {"properties": properties, "additionalProperties": False, "required": ["type", *params.get("required", [])]},
        })
    schema["properties"]["passes"] = {
        "type": "object",
        "description": schema["properties"]["passes"].get("description", ""),
        "additionalProperties": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": sorted(registry.all()[0])}},
            "allOf": variants,
        },
    }
    schema["title"] = "slimops pipeline"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def schema_text(registry: Registry | None = None) -> str:
    return json.dumps(pipeline_schema(registry), indent=2, sort_keys=True) + "\n"


def config_reference(registry: Registry | None = None) -> str:
    """The config reference in Markdown, generated from the config models and every pass's Params."""
    from pydantic import BaseModel

    from slimops.config.spec import DataSpec, EngineSettings, ModelSpec
    from slimops.targets import TargetProfile

    registry = registry or Registry()

    def table(model: type[BaseModel]) -> list[str]:
        rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, info in model.model_fields.items():
            kind = _type_name(info.annotation)
            default = "required" if info.is_required() else f"`{_default(info)}`"
            rows.append(f"| `{name}` | {kind} | {default} | {(info.description or '').replace('|', '/')} |")
        return rows

    out = [
        "# Config reference",
        "",
        "Generated from the config models by `slimops schema --markdown -o docs/config.md`; a test keeps it current.",
        "",
        "A pipeline file has these top-level keys: `name`, `model`, `data`, `targets`, `passes`, `engine`.",
        "",
    ]
    for title, model, note in (
        ("model", ModelSpec, "The input model; `model: smollm2-135m` is short for `model: {path: smollm2-135m}`."),
        ("data.<name>", DataSpec, "One data set; passes name it in their `data:` param."),
        ("targets.<name>", TargetProfile, "A target profile; `laptop: cpu-int4` is short for `laptop: {extends: cpu-int4}`."),
        ("engine", EngineSettings, ""),
    ):
        out += [f"## `{title}`", "", note, "", *table(model), ""]
    out += [
        "## `passes.<name>`",
        "",
        "Every pass takes `type` (which pass), optional `inputs` (node names, or `model`; default: the",
        "previous pass) and optional `targets` (limit a per-target pass to some targets), then its own params:",
        "",
    ]
    for name, cls in sorted(registry.all()[0].items()):
        about = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        consumes = "any" if cls.consumes is None else (", ".join(cls.consumes) or "nothing")
        out += [
            f"### `type: {name}`",
            "",
            about,
            "",
            f"Reads {consumes}; makes {cls.produces or 'the kind of its input'}; "
            f"{'runs once per target' if cls.per_target else 'runs once'}.",
            "",
        ]
        out += table(cls.Params) if cls.Params.model_fields else ["No params."]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _type_name(annotation) -> str:
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:  # a validated type (BlockSize): its base type, not the validator's repr
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType) and any(typing.get_origin(arg) is typing.Annotated for arg in args):
        return " or ".join(_type_name(arg) for arg in args)
    text = str(annotation).replace("typing.", "")
    if isinstance(annotation, type):
        text = annotation.__name__
    return text.replace("|", "or").replace("NoneType", "None")


def _default(info) -> str:
    if info.default_factory is not None:
        return repr(info.default_factory())
    return repr(info.default)
