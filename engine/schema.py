"""JSON Schema of pipeline files, for editors (yaml-language-server): `slimops schema`.

The `passes` section is a map whose values are checked by `type`: each registered pass adds its
own Params schema, so an editor completes and checks pass keys.
"""

from __future__ import annotations

import json
from typing import Any

from slimops.config import PipelineFile
from slimops.registry import Registry


def pipeline_schema(registry: Registry | None = None) -> dict[str, Any]:
    registry = registry or Registry()
    schema = PipelineFile.model_json_schema()
    defs = schema.setdefault("$defs", {})
    variants = []
    for name, cls in sorted(registry.all().items()):
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
            "properties": {"type": {"enum": sorted(registry.all())}},
            "allOf": variants,
        },
    }
    schema["title"] = "slimops pipeline"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def schema_text(registry: Registry | None = None) -> str:
    return json.dumps(pipeline_schema(registry), indent=2, sort_keys=True) + "\n"
