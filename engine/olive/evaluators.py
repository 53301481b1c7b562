"""Olive's evaluators and metrics, as evaluate passes, goals and search objectives.

- `evaluate_passes(record, evaluator, source)`: an Olive evaluator (its metrics, each with a data
  config and sub-types) as evaluate-pass bodies, one per data config, and the objectives a
  search ranks trials by (sub-types with a priority, in its order).

Olive's sub-types map onto slimops metrics: accuracy_score -> accuracy, f1_score -> f1,
perplexity, exact_match; latency avg/p50 -> latency_p50_ms and p90 -> latency_p90_ms (slimops
times each generated token, Olive a whole forward pass); throughput -> tokens_per_s;
size_on_disk -> size_mb. An `LMEvaluator` becomes `lm_eval:TASK` metrics. A goal becomes a
goal rule, read the way Olive reads it (`higher_is_better` decides whether a threshold is a
floor or a ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slimops.metrics import lower_is_better
from slimops.config.source import Path_
from slimops.olive.record import Record


SUB_TYPES = {
    "accuracy": {"accuracy_score": "accuracy", "f1_score": "f1", "perplexity": "perplexity", "exact_match": "exact_match"},
    "latency": {"avg": "latency_p50_ms", "p50": "latency_p50_ms", "p90": "latency_p90_ms"},
    "throughput": {"avg": "tokens_per_s", "p50": "tokens_per_s"},
    "size_on_disk": {"bytes": "size_mb"},
}
NEAREST_SUB = {"accuracy": "accuracy_score or f1_score", "latency": "p50 or p90", "throughput": "avg", "size_on_disk": "bytes"}
SCALE = {"size_mb": 1 / 2**20}  # Olive's size is in bytes, slimops's in MiB
# evaluator types that run an evaluator's metrics (Olive picks one by the model's framework when none is given)
METRIC_EVALUATORS = {"oliveevaluator", "onnxevaluator", "pytorchevaluator", "onnx", "pytorch"}
# Olive goal type -> slimops rule, for a metric where higher is better and where lower is
GOALS = {"threshold": ("min", "max"), "max-degradation": ("max_drop", "max_increase"),
         "percent-max-degradation": ("max_drop", "max_increase"), "min-improvement": ("min_increase", None),
         "percent-min-improvement": ("min_increase", None)}


@dataclass
class Evaluation:
    """An evaluator's evaluate passes (bodies by data config), and what a search ranks by."""

    bodies: list[tuple[Any, dict[str, Any], Path_]] = field(default_factory=list)  # (data ref, body, Olive source)
    objectives: list[tuple[int, str, str]] = field(default_factory=list)  # (priority, metric, direction)


def evaluate_passes(rec: Record, evaluator: dict[str, Any], source: Path_) -> Evaluation:
    """The evaluate passes `evaluator` stands for; problems are recorded in `rec`."""
    out = Evaluation()
    kind = str(evaluator.get("type") or "OliveEvaluator")
    args = {**(evaluator.get("type_args") or {}), **{k: v for k, v in evaluator.items() if k not in ("type", "type_args", "metrics", "name")}}
    if kind == "LMEvaluator":
        tasks = args.pop("tasks", None) or []
        if not tasks:
            rec.error(source, "an LMEvaluator needs tasks: the lm-eval tasks to run")
        settings = {key: args.pop(key) for key in ("limit", "num_fewshot") if key in args}
        for key in args:
            rec.drop(("passes",), (*source, key), f"slimops runs lm-eval through its own model class ({key} has no equivalent)",
                     warn=key not in ("batch_size", "max_length", "model_class", "device", "execution_provider", "provider_options"))
        body: dict[str, Any] = {"type": "evaluate", "metrics": [f"lm_eval:{task}" for task in tasks]}
        if settings:
            body["lm_eval"] = settings
        out.bodies.append((None, body, source))
        return out
    if kind.lower() not in METRIC_EVALUATORS:
        rec.error((*source, "type"), f"the Olive evaluator type '{kind}' has no slimops equivalent; nearest: an evaluator's "
                  "metrics (no type, OnnxEvaluator or PyTorchEvaluator), or LMEvaluator's tasks (lm_eval:TASK metrics)")
        return out
    for key in ("user_script", "script_dir"):
        if key in args:
            rec.error((*source, key), "a user script of evaluation functions has no slimops equivalent; nearest: a custom "
                      "metric in the evaluate pass ({metric: module:function}, docs/evaluate.md)")
            args.pop(key)
    for key in args:
        rec.unknown((*source, key), ["type", "type_args", "metrics", "name", "user_script", "script_dir"], "an Olive evaluator")
    groups: dict[str, tuple[Any, dict[str, Any], Path_]] = {}
    for index, metric in enumerate(evaluator.get("metrics") or []):
        where = (*source, "metrics", index)
        if not isinstance(metric, dict):
            rec.error(where, "a metric is a mapping: {name, type, sub_types, data_config}")
            continue
        data = metric.get("data_config")
        group_key = repr(data)
        if group_key not in groups:
            groups[group_key] = (data, {"type": "evaluate", "metrics": [], "goals": {}}, where)
        _metric(rec, metric, where, groups[group_key][1], out)
    for data, body, where in groups.values():
        if not body["goals"]:
            del body["goals"]
        out.bodies.append((data, body, where))
    return out


def _metric(rec: Record, metric: dict[str, Any], where: Path_, body: dict[str, Any], out: Evaluation) -> None:
    kind = str(metric.get("type", "")).lower()
    known = ["name", "type", "sub_types", "data_config", "backend", "user_config", "sample_log_num", "sample_log_dir"]
    for key in metric:
        if key not in known:
            rec.unknown((*where, key), known, "an Olive metric")
        elif key == "backend" or key.startswith("sample_log"):
            rec.drop(("passes",), (*where, key), "slimops computes its metrics itself and keeps every example's answer in "
                     "predictions.jsonl", warn=False)
    if kind == "custom":
        rec.error((*where, "type"), "a custom Olive metric runs a user script; nearest: a custom metric in the evaluate pass "
                  "({metric: module:function}, docs/evaluate.md)")
        return
    if kind not in SUB_TYPES:
        rec.error((*where, "type"), f"Olive metric type '{kind}' has no slimops equivalent; give one of {', '.join(SUB_TYPES)}")
        return
    if metric.get("user_config"):
        rec.drop(("passes",), (*where, "user_config"), "slimops runs the model itself (batches, warmup and repeats are "
                 "the evaluate pass's latency_runs and warmup)", warn=False)
    for index, sub in enumerate(metric.get("sub_types") or [{"name": next(iter(SUB_TYPES[kind]))}]):
        at = (*where, "sub_types", index)
        name = str(sub.get("name", "")) if isinstance(sub, dict) else str(sub)
        slimops = SUB_TYPES[kind].get(name)
        if slimops is None:
            rec.error((*at, "name"), f"Olive's {kind} sub-type '{name}' has no slimops equivalent; nearest: {NEAREST_SUB[kind]}")
            continue
        if slimops not in body["metrics"]:
            body["metrics"].append(slimops)
        if not isinstance(sub, dict):
            continue
        higher = bool(sub.get("higher_is_better", not lower_is_better(slimops)))
        if higher == lower_is_better(slimops):
            rec.note(("passes",), (*at, "higher_is_better"), f"Olive reads {name} with higher_is_better: {str(higher).lower()}; "
                     f"slimops's {slimops} is {'lower' if lower_is_better(slimops) else 'higher'}-is-better, and the goal "
                     "below is written the way Olive reads it", warn=True)
        priority = sub.get("priority", -1)
        if isinstance(priority, int) and priority > 0:
            out.objectives.append((priority, slimops, "maximize" if higher else "minimize"))
        goal = sub.get("goal")
        if goal:
            _goal(rec, goal, (*at, "goal"), slimops, higher, body["goals"])


def _goal(rec: Record, goal: Any, at: Path_, metric: str, higher: bool, goals: dict[str, Any]) -> None:
    kind = str(goal.get("type", "")) if isinstance(goal, dict) else ""
    value = goal.get("value") if isinstance(goal, dict) else None
    if kind not in GOALS or not isinstance(value, (int, float)):
        rec.error(at, f"an Olive goal is {{type: {' | '.join(GOALS)}, value: NUMBER}}")
        return
    rule = GOALS[kind][0 if higher else 1]
    if rule is None:
        rec.error(at, f"'{kind}' on a lower-is-better metric (a decrease of at least {value}) has no slimops rule; "
                  f"nearest: goals.{metric}.max (an absolute ceiling)")
        return
    amount: Any = f"{value:g}%" if kind.startswith("percent") else value * SCALE.get(metric, 1)
    goals.setdefault(metric, {})[rule] = amount
