"""The shape of an Olive workflow config: which sections are mappings, lists or text.

`shape_issues(data, lines)` checks every section the converter reads against `SHAPES` (key paths,
`*` for any key or index) before it reads them, so a list where Olive's schema has a mapping is
a located error, not a crash halfway through a conversion.
"""

from __future__ import annotations

from typing import Any

from slimops.config.source import Lines
from slimops.errors import Issue

M, L, S, N = dict, list, str, (int, float)
_PASS = {"config": M, "training_args": M, "search_space": M, "train_data_config": (S, M), "eval_data_config": (S, M),
         "data_config": (S, M), "type": S}
_TRAINING = {"extra_args": M}
_METRIC = {"sub_types": L, "data_config": (S, M), "type": S, "user_config": M}
_SUB = {"goal": M, "name": S, "priority": N, "higher_is_better": bool}
_DATA = {"name": S, "type": S, "load_dataset_config": M, "pre_process_data_config": M, "params_config": M, "components": M,
         "dataloader_config": M, "post_process_data_config": M}
_SEARCH = {"sampler_config": M, "search_algorithm_config": M, "sampler": S, "search_algorithm": S, "execution_order": S}

SHAPES: dict[tuple, Any] = {
    ("input_model",): M, ("model",): M, ("input_model", "config"): M, ("model", "config"): M,
    ("input_model", "hf_config"): M, ("input_model", "config", "hf_config"): M, ("input_model", "model_path"): S,
    ("input_model", "config", "model_path"): S, ("input_model", "task"): S, ("input_model", "config", "task"): S,
    ("systems",): M, ("systems", "*"): M, ("systems", "*", "config"): M, ("systems", "*", "accelerators"): L,
    ("systems", "*", "config", "accelerators"): L, ("systems", "*", "accelerators", "*"): (M, S),
    ("systems", "*", "config", "accelerators", "*"): (M, S),
    ("data_configs",): L, ("data_configs", "*"): M, **{("data_configs", "*", key): kind for key, kind in _DATA.items()},
    ("data_configs", "*", "components", "*"): M, ("data_configs", "*", "components", "*", "params"): M,
    ("evaluators",): M, ("evaluators", "*"): M, ("evaluators", "*", "metrics"): L, ("evaluators", "*", "type_args"): M,
    ("evaluators", "*", "metrics", "*"): M, **{("evaluators", "*", "metrics", "*", key): kind for key, kind in _METRIC.items()},
    ("evaluators", "*", "metrics", "*", "sub_types", "*"): (M, S),
    **{("evaluators", "*", "metrics", "*", "sub_types", "*", key): kind for key, kind in _SUB.items()},
    ("passes",): M, ("passes", "*"): M, **{("passes", "*", key): kind for key, kind in _PASS.items()},
    **{("passes", "*", "config", key): kind for key, kind in _PASS.items() if key != "config"},
    **{("passes", "*", *where, "training_args", key): kind for key, kind in _TRAINING.items() for where in ((), ("config",))},
    ("pass_flows",): L, ("pass_flows", "*"): L, ("pass_flows", "*", "*"): S,
    ("engine",): M, ("search_space",): M, ("workflow_id",): S, ("output_dir",): S, ("engine", "output_dir"): S,
    ("host",): S, ("target",): S, ("engine", "host"): S, ("engine", "target"): S,
    ("evaluator",): (S, M), ("engine", "evaluator"): (S, M),
    ("search_strategy",): (M, bool), ("engine", "search_strategy"): (M, bool),
    **{(*where, "search_strategy", key): kind for key, kind in _SEARCH.items() for where in ((), ("engine",))},
}
WORDS = {dict: "a mapping", list: "a list", str: "text", int: "a number", float: "a number", bool: "true or false"}


def shape_issues(data: dict[str, Any], lines: Lines) -> list[Issue]:
    issues: list[Issue] = []
    _walk(data, (), (), lines, issues)
    return issues


def _walk(value: Any, path: tuple, pattern: tuple, lines: Lines, issues: list[Issue]) -> None:
    kind = SHAPES.get(pattern)
    if kind is not None and value is not None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool) and int in kinds):
            words = " or ".join(dict.fromkeys(WORDS[k] for k in kinds))
            issues.append(lines.issue(path, f"must be {words}, as in Olive's schema (got {type(value).__name__})"))
            return
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        for step in (key, "*"):
            if any(p[: len(pattern) + 1] == (*pattern, step) for p in SHAPES):
                _walk(item, (*path, key), (*pattern, step), lines, issues)
                break
