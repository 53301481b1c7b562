"""Olive workflow configs, read as slimops pipelines.

- `is_olive(data)`: whether a parsed config file is an Olive workflow config rather than a pipeline.
- `convert(data, lines)`: its pipeline, as a `Record` (the pipeline, each key's Olive origin, the
  notes for `slimops convert-olive` to write as comments, the warnings to show before a run).

`slimops run|validate|plan --config olive.yaml` convert on the way in; `slimops convert-olive`
writes the pipeline out. docs/olive.md has the table of what each Olive key becomes.
"""

from __future__ import annotations

import copy
from typing import Any

from slimops.config.source import Lines
from slimops.errors import ConfigError
from slimops.olive.passes import NEAREST, PASSES, TIDY
from slimops.olive.record import Note, OliveLines, Record

__all__ = ["Note", "OliveLines", "Record", "convert", "is_olive"]

# top-level keys only an Olive config has (a pipeline file forbids them)
OLIVE_KEYS = {"input_model", "systems", "data_configs", "evaluators", "pass_flows", "search_strategy", "workflow_id",
              "azureml_client", "workflow_host", "evaluate_input_model", "auto_optimizer_config", "data_root"}
OLIVE_ENGINE_KEYS = {"search_strategy", "evaluator", "host", "target", "log_severity_level", "packaging_config",
                     "evaluate_input_model", "clean_cache", "plot_pareto_frontier"}
OLIVE_TYPES = {*PASSES, *NEAREST, *TIDY}


def is_olive(data: dict[str, Any]) -> bool:
    """Whether `data` (a parsed config file) is an Olive workflow config.

    It is when it has a key only Olive configs have (input_model, systems, data_configs, ...), a
    `model:` with an Olive `type:`, Olive engine settings, or a pass of an Olive type (`LoRA`,
    `ModelBuilder`: slimops's own types are lower case) or in Olive's `config:`-nested form.
    """
    if OLIVE_KEYS & set(data):
        return True
    model, engine, passes = data.get("model"), data.get("engine"), data.get("passes")
    if isinstance(model, dict) and "type" in model:
        return True
    if isinstance(engine, dict) and OLIVE_ENGINE_KEYS & set(engine):
        return True
    bodies = passes.values() if isinstance(passes, dict) else []
    return any(isinstance(body, dict) and ((isinstance(body.get("type"), str) and body["type"] in OLIVE_TYPES)
                                           or isinstance(body.get("config"), dict)) for body in bodies)


def convert(data: dict[str, Any], lines: Lines) -> Record:
    """The pipeline the Olive config `data` stands for.

    Raises:
        ConfigError: every Olive setting that cannot convert, located in the Olive file, with the
            nearest slimops key or pass.
    """
    from slimops.olive.shape import shape_issues
    from slimops.olive.workflow import convert as convert_workflow

    issues = shape_issues(data, lines)
    if issues:
        raise ConfigError(issues)
    record = convert_workflow(copy.deepcopy(data), lines)
    if record.issues:
        raise ConfigError(sorted(record.issues, key=lambda issue: issue.line or 0))
    return record
