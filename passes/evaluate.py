"""The `evaluate` pass: quality, speed, memory and size of a model, before and after the pipeline.

One pass reads every model kind (`hf-model`, `hf-adapter`, `onnx-model`, `genai-model`) through
`slimops.passes._runtime.runners`, measures the metrics asked for, and writes `metrics.json`. Its artifact's
metrics are `{"before": {...}, "after": {...}}`: "after" is its input, "before" the pipeline's
input model. The planner evaluates the input model once, as the node `<name>.before` with the
same settings (`Pass.baseline`), so that number is cached like any node and shared by every
target and every search trial.

Goals (`goals:`) are checked on the finished artifact, fresh or cached, and left out of the key:
changing a goal re-checks, it does not re-evaluate. A missed goal fails the run after every node
is cached, unless `on_miss: warn`.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimops.errors import DataError, ModelError
from slimops.kinds import FEATURES
from slimops.passes import _answers as A
from slimops.passes import _goals as G
from slimops.passes import _lm_eval as L
from slimops.passes import _metrics as M
from slimops.passes import _stats as S
from slimops.plugin import BASELINE_SUFFIX, Artifact, Pass, PassContext
from slimops.sizes import size_mb

SCORES = "scores.json"  # what each example gave each metric, for the paired tests of the goals
TASK_SAMPLES = "lm_eval_samples.jsonl"  # a few of each lm_eval task's examples, with the model's answers


class CustomMetric(BaseModel):
    """Your own metric: `fn(predictions, references, examples) -> float`, found by import path."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="module:function, importable from the pipeline's folder.")
    name: str | None = Field(None, description="The name it reports under; default: the function's name.")

    @field_validator("metric")
    @classmethod
    def _has_colon(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError("write a custom metric as 'module:function'")
        if value.startswith(L.TASK_PREFIX):
            raise ValueError(f"'{value}' is an lm-evaluation-harness task: list it under metrics as a plain string")
        return value

    @property
    def label(self) -> str:
        return self.name or self.metric.rsplit(":", 1)[1]


GoalRules = dict[Literal["min", "max", "max_drop", "max_increase", "min_increase", "max_drop_from_reference",
                          "max_increase_from_reference"], float | str]


class Evaluate(Pass):
    """Measures a model on a data split and against the pipeline's input model."""

    name = "evaluate"
    version = "6"  # 3: intervals, per-example scores (scores.json), predictions with their references; 4: lm_eval per-document scores;
    # 5: a template without the label field is the whole question; 6: a template's literal {{ }} braces are not its answer
    consumes = ("hf-model", "hf-adapter", "onnx-model", "genai-model")
    produces = "metrics"
    baseline = True
    # goals are checked, not measured; `reference` reaches the key through its node's key, and the
    # input model's evaluation (`.before`) never reads it, so passes that differ only there share it
    unkeyed = ("goals", "on_miss", "on_undecided", "reference")
    # per target (when its input is), it runs the model on the target's execution providers:
    # a target this machine cannot run is a plan error, not a silent CPU measurement
    executes_on_target = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        data: str | None = Field(None, description="The data set to evaluate on (a name under data:).")
        split: str = Field("eval", description="Which split of it.")
        metrics: list[str | CustomMetric] | None = Field(
            None,
            description=(
                "accuracy, exact_match, f1, perplexity, rouge_l, bleu, latency (ttft_ms, latency_p50_ms, "
                "latency_p90_ms, tokens_per_s), peak_mb, size_mb, 'lm_eval:TASK' (an lm-evaluation-harness task; its "
                "metrics report as TASK/METRIC), or 'module:function'. Default: perplexity (accuracy and f1 for a "
                "classifier), latency and size_mb."
            ),
        )
        max_samples: int | None = Field(100, ge=1, description="Examples to read from the split; null reads all.")
        max_new_tokens: int = Field(16, ge=1, description="Tokens generated per answer and per latency run.")
        latency_runs: int = Field(5, ge=1, description="Timed generations for latency; more gives steadier numbers.")
        warmup: int = Field(2, ge=0, description="Untimed generations before the timed ones (caches, allocator).")
        goals: dict[str, GoalRules] = Field(
            default_factory=dict,
            description="Per metric: min, max (absolute); max_drop, max_increase, min_increase (from the input model; "
            "a number or '5%'); max_drop_from_reference, max_increase_from_reference (from the `reference` evaluation).",
        )
        reference: str | None = Field(
            None,
            description="Another evaluate pass whose results sit beside these (say, the fine-tuned PyTorch model's, "
            "beside its int4 export's), for the *_from_reference goals. It runs first.",
        )
        on_miss: Literal["fail", "warn"] = Field("fail", description="What a missed goal does to the run.")
        on_undecided: Literal["warn", "fail"] = Field(
            "warn",
            description="What a goal does to the run when its 95% interval holds the limit, so the examples cannot decide it "
            "(the report says about how many would).",
        )
        lm_eval: L.LmEvalSettings | None = Field(None, description="Settings of the lm_eval:TASK metrics (few-shot, limit, task folder).")

        @field_validator("metrics")
        @classmethod
        def _known(cls, value):
            if value is None:
                return value
            M.expand([item for item in value if isinstance(item, str) and ":" not in item])
            for item in value:
                if isinstance(item, str) and item.startswith(L.TASK_PREFIX) and not item.removeprefix(L.TASK_PREFIX).strip():
                    raise ValueError(f"'{item}' names no task: write lm_eval:TASK")
            return value

        @field_validator("goals")
        @classmethod
        def _amounts(cls, value):
            for metric, rules in value.items():
                for rule, amount in rules.items():
                    try:
                        _, relative = G.parse_amount(amount)
                    except ValueError:
                        raise ValueError(f"goal {metric}.{rule}: '{amount}' is not a number or a percentage like '5%'") from None
                    if relative and rule in ("min", "max"):
                        raise ValueError(f"goal {metric}.{rule}: a percentage only makes sense for the rules that compare with another "
                                         "value (max_drop, max_increase, min_increase and their _from_reference forms), not min or max")
            return value

        @model_validator(mode="after")
        def _reference_goals(self):
            uses = [f"{m}.{r}" for m, rules in self.goals.items() for r in rules if r.endswith(G.REFERENCE_SUFFIX)]
            if uses and not self.reference:
                raise ValueError(f"goal {uses[0]} compares with a reference: set reference to another evaluate pass")
            return self

        @model_validator(mode="after")
        def _consistent(self):
            names = self.metric_names(None)
            if self.metrics is not None:
                needs_data = [n for n in names if n in M.GENERATED or n == "perplexity" or (n not in M.METRICS and "/" not in n)]
                if needs_data and self.data is None:
                    raise ValueError(f"metrics {', '.join(needs_data)} need a data set: set data")
                for metric in self.goals:
                    if metric not in names and not self._from_task(metric):
                        raise ValueError(f"goal on '{metric}', which is not among the metrics measured ({', '.join(names)})")
            for metric in self.goals:
                if metric in M.METRICS or self._from_task(metric):
                    continue
                if not any(isinstance(m, CustomMetric) and m.label == metric for m in self.metrics or []):
                    raise ValueError(f"goal on unknown metric '{metric}'; known: {', '.join(M.METRICS)}")
            return self

        def _from_task(self, metric: str) -> bool:
            """Whether `metric` (TASK/METRIC) comes from one of the lm_eval:TASK metrics asked for."""
            return metric.split("/", 1)[0] in L.task_names(self.metrics or []) and "/" in metric

        def custom(self) -> list[CustomMetric]:
            items = [m for m in self.metrics or [] if isinstance(m, CustomMetric) or (":" in m and not m.startswith(L.TASK_PREFIX))]
            return [m if isinstance(m, CustomMetric) else CustomMetric(metric=m) for m in items]

        def metric_names(self, task: str | None) -> list[str]:
            """Built-in names measured (groups expanded), then custom names."""
            if self.metrics is None:
                if self.data is None or task == FEATURES:
                    quality = []
                else:
                    quality = ["accuracy", "f1"] if task == "text-classification" else ["perplexity"]
                return M.expand([*quality, "latency", "size_mb"])
            builtin = M.expand([m for m in self.metrics if isinstance(m, str) and ":" not in m])
            return [*builtin, *(c.label for c in self.custom())]  # lm_eval's TASK/METRIC names are known once run

    extra_input_kind = "metrics"  # `reference` names another evaluation

    def extra_inputs(self, params: Any) -> list[str]:
        return [params.reference] if params.reference else []

    def imports(self, params: Any) -> dict[tuple[str | int, ...], str]:
        found = {}
        for index, item in enumerate(params.metrics or []):
            if isinstance(item, CustomMetric):
                found[("metrics", index, "metric")] = item.metric
            elif ":" in item and not item.startswith(L.TASK_PREFIX):
                found[("metrics", index)] = item
        return found

    def requirements(self, params: Any) -> tuple[str, ...]:
        return (*self.requires, *L.REQUIRES) if L.task_names(params.metrics or []) else self.requires

    def goals(self, params: Any, artifact: Artifact) -> list[dict[str, Any]]:
        if not params.goals or artifact.meta.get("role") == "before":
            return []
        results = G.check_goals(params.goals, artifact.metrics.get("before", {}), artifact.metrics.get("after", {}),
                                artifact.metrics.get("reference"), _read_scores(Path(artifact.path)))
        fatal = {"missed": params.on_miss == "fail", "undecided": params.on_undecided == "fail", "met": False}
        return [{**result.as_dict(), "fatal": fatal[result.status]} for result in results]

    def run(self, ctx: PassContext) -> Artifact:
        params = ctx.params
        base_name = ctx.node.split("@", 1)[0]
        is_before = base_name.endswith(BASELINE_SUFFIX)
        before_artifact = ctx.inputs.get(f"{base_name}{BASELINE_SUFFIX}")
        reference = {n: a for n, a in ctx.inputs.items() if params.reference and n.split("@", 1)[0] == params.reference}
        input_name, model = next((n, a) for n, a in ctx.inputs.items() if n != f"{base_name}{BASELINE_SUFFIX}" and n not in reference)
        after, details, evidence = measure(ctx, model)
        for name, rows in (("predictions.jsonl", details.pop("rows")), (TASK_SAMPLES, details.pop("task_rows"))):
            if rows or name == "predictions.jsonl":
                (ctx.output_dir / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
        scores = {"after": evidence}
        if is_before:
            (ctx.output_dir / SCORES).write_text(json.dumps(scores))
            body = {"model": str(model.path), "kind": model.kind, "metrics": after, **details}
            (ctx.output_dir / "metrics.json").write_text(json.dumps(body, indent=2))
            return Artifact(path=ctx.output_dir, kind="metrics", meta={"role": "before", **details}, metrics=after)
        if before_artifact is not None:
            before = dict(before_artifact.metrics)
            scores["before"] = _read_scores(Path(before_artifact.path)).get("after")
            details["intervals"]["before"] = before_artifact.meta.get("intervals", {}).get("after", {})
        elif input_name == "model" or input_name.startswith("model."):
            before = dict(after)  # this pass reads the input model itself (maybe converted)
            scores["before"], details["intervals"]["before"] = evidence, dict(details["intervals"]["after"])
        else:
            before = {}
        metrics = {"before": before, "after": after}
        for artifact in reference.values():
            metrics["reference"] = dict(artifact.metrics.get("after", {}))
            details["reference"] = params.reference
            scores["reference"] = _read_scores(Path(artifact.path)).get("after")
            details["intervals"]["reference"] = artifact.meta.get("intervals", {}).get("after", {})
        (ctx.output_dir / SCORES).write_text(json.dumps({k: v for k, v in scores.items() if v}))
        body = {"model": str(model.path), "kind": model.kind, **metrics, **details}
        (ctx.output_dir / "metrics.json").write_text(json.dumps(body, indent=2))
        return Artifact(path=ctx.output_dir, kind="metrics", meta=details, metrics=metrics)


def _read_scores(folder: Path) -> dict[str, Any]:
    """An evaluation's scores.json; empty when it has none (written before there was one) or it is unreadable."""
    try:
        body = json.loads((folder / SCORES).read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


# -- measuring -------------------------------------------------------------------------------------


def measure(ctx: PassContext, model: Artifact) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """Every metric the params ask for, on `model`, with a 95% interval for each one measured over examples.

    Returns:
        (metrics, details, evidence): one number per metric name; details hold the task, the
        sample count, the intervals and their methods, and `rows`, one record per example (index,
        prompt, reference, label, answer, correct) for predictions.jsonl; evidence is what each
        example contributed to each metric (scores.json), for the paired tests of the goals.

    Raises:
        DataError: the data set cannot give what a metric needs.
        ModelError: the model cannot be loaded for its kind.
    """
    from slimops.passes._runtime.runners import open_runner, probe_memory

    params = ctx.params
    target = ctx.target
    providers = list(target.execution_providers) if target is not None else ["CPUExecutionProvider"]
    device = getattr(target, "device", "cpu")
    ctx.progress.update(0, None, f"loading {model.kind}")
    base = upstream_model(ctx)
    runner = open_runner(model, base, providers, device, params.max_new_tokens)
    out: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    task_rows: list[dict[str, Any]] = []  # lm_eval's examples, a few per task
    items: dict[str, list] = {}  # metric -> what each example gave it
    per_run: dict[str, list[float]] = {}
    stderr: dict[str, float] = {}
    try:
        names = params.metric_names(runner.task)
        if runner.task == FEATURES:
            names = _measurable_on_vectors(names, ctx, model)
        examples = _examples(ctx, runner.task) if params.data else []
        spec = ctx.data.get(params.data) if params.data else None
        prompts = [A.prompt_of(e, spec, runner) for e in examples[: params.latency_runs]] or [A.DEFAULT_PROMPT]
        if "perplexity" in names:
            items["perplexity"] = _perplexity_items(runner, examples, spec, ctx)
            out["perplexity"] = M.STATISTICS["perplexity"](items["perplexity"])
        custom = params.custom()
        if any(n in M.GENERATED for n in names) or custom:
            answers, references, labels, asked = A.answers(runner, examples, spec, params.max_new_tokens, ctx.progress)
            correct = M.example_items("accuracy", answers, references, labels)
            rows = [{"index": i, "prompt": p, "reference": r, "label": l, "answer": a, "correct": c}
                    for i, (p, r, l, a, c) in enumerate(zip(asked, references, labels, answers, correct))]
            for name in (n for n in names if n in M.GENERATED):
                items[name] = correct if name == "accuracy" else M.example_items(name, answers, references, labels)
                out[name] = M.STATISTICS[name](items[name])
            for item in custom:
                out[item.label] = _call_custom(item, answers, references, examples, ctx.config_dir)
        if any(n in M.TIMED for n in names):
            timed, per_run = A.latency(runner, prompts, params.warmup, params.latency_runs, params.max_new_tokens, ctx.progress)
            out.update({k: v for k, v in timed.items() if k in names})
        tasks = L.task_names(params.metrics or [])
        if tasks:
            values, stderr, task_items, task_rows = L.run_tasks(runner, tasks, params.lm_eval or L.LmEvalSettings(), ctx.config_dir,
                                                                ctx.progress)
            items.update(task_items)
            out.update(values)
            names = [*names, *values]
    finally:
        runner.close()
    if "peak_mb" in names:
        # a fresh process: this one's allocator still holds what earlier models (the before
        # evaluation, a fine-tune) freed, which would hide most of this model's cost
        ctx.progress.update(None, None, "peak memory, in a fresh process")
        out["peak_mb"] = probe_memory(model, base, providers, device, params.max_new_tokens, prompts[0])
    if "size_mb" in names:
        out["size_mb"] = size_mb(Path(model.path))
    ordered = {name: float(out[name]) for name in names if name in out}
    intervals, methods = _intervals(ordered, items, per_run, stderr)
    details = {"task": runner.task, "samples": len(examples), "split": params.split, "data": params.data, "rows": rows, "task_rows": task_rows,
               "intervals": {"after": intervals}, "interval_methods": methods}
    evidence = {"data": params.data, "split": params.split, "n": len(examples), "index": list(range(len(examples))),
                "items": items, "stderr": {k: v for k, v in stderr.items() if k in ordered}, "values": ordered, "intervals": intervals}
    return ordered, details, evidence


def _intervals(values: dict[str, float], items: dict[str, list], per_run: dict[str, list[float]], stderr: dict[str, float]):
    """(metric -> [low, high], metric -> method): lm-eval's standard error for its tasks (within 0..1
    for a share), Wilson for the other shares, bootstrap over examples for the rest, the spread of
    the runs for latency."""
    intervals, methods = {}, {}
    for name in values:
        if name in stderr and stderr[name] is not None and math.isfinite(stderr[name]):
            low, high = values[name] - S.Z95 * stderr[name], values[name] + S.Z95 * stderr[name]
            if G.is_share(items.get(name)):
                low, high = max(low, 0.0), min(high, 1.0)
            intervals[name], methods[name] = [low, high], "stderr"
        elif name in items and items[name]:
            if G.is_share(items[name]):
                intervals[name], methods[name] = list(S.wilson(sum(map(bool, items[name])), len(items[name]))), "wilson"
            else:
                intervals[name], methods[name] = list(S.bootstrap(items[name], M.STATISTICS[name])), "bootstrap"
        elif name in per_run and per_run[name]:
            intervals[name], methods[name] = list(S.spread(per_run[name])), "runs"
    return intervals, methods


def upstream_model(ctx: PassContext) -> Artifact | None:
    """The hf-model an adapter sits on or an ONNX model came from: the nearest one on the
    pipeline's own path, before the input model (which `<name>.before` also reaches)."""
    source_path = Path(ctx.source.path) if ctx.source is not None else None
    found = [a for n, a in ctx.ancestors.items() if a.kind == "hf-model"]
    own = [a for n, a in ctx.ancestors.items() if a.kind == "hf-model" and n != "model" and not n.startswith("model.") and Path(a.path) != source_path]
    return (own or found or [None])[0]


def _examples(ctx: PassContext, task: str) -> list[dict[str, Any]]:
    from slimops.passes._data import check_fields, load_split

    params = ctx.params
    spec = ctx.data[params.data]
    examples = load_split(spec, params.split, params.data)
    if params.max_samples is not None:
        examples = examples[: params.max_samples]
    if task == FEATURES:  # only their text is read, for latency
        return examples if spec.text or spec.template else []
    check_fields(examples, spec, params.data, params.split, task)
    return examples


def _measurable_on_vectors(names: list[str], ctx: PassContext, model: Artifact) -> list[str]:
    """An encoder without a head gives vectors: no label, no next token, so only latency and size.

    The baseline of a classifier's evaluation (the pipeline's input model, before a head was
    trained) drops the rest with a note in the log; any other node asking for them is an error.

    Raises:
        ModelError: a quality metric was asked of a model that cannot give one.
    """
    quality = [n for n in names if n not in M.TIMED and n not in ("size_mb", "peak_mb")]
    if not quality:
        return names
    if ctx.node.split("@", 1)[0].endswith(BASELINE_SUFFIX):
        ctx.log.info("the input model %s is an encoder without a head: %s not measured before", model.path, ", ".join(quality))
        return [n for n in names if n not in quality]
    raise ModelError(f"{model.path} is an encoder without a classification head: it gives vectors, so {', '.join(quality)} "
                     "cannot be measured; evaluate a fine-tuned classifier, or ask only for latency and size_mb")


def _perplexity_items(runner: Any, examples: list[dict], spec: Any, ctx: PassContext) -> list[list[float]]:
    """(negative log-likelihood sum, predicted tokens) per example; a text under two tokens gives (0, 0)."""
    from slimops.passes._data import render

    if runner.task != "text-generation":
        raise DataError("perplexity needs a causal language model; this one is a classifier (measure accuracy or f1)")
    items = []
    for index, example in enumerate(examples):
        prompt, response = render(example, spec, getattr(runner, "tokenizer", None))
        ids = runner.encode(prompt + response)
        items.append(list(runner.nll(ids)) if len(ids) >= 2 else [0.0, 0])
        ctx.progress.update(index + 1, len(examples), "perplexity")
    return items


def _call_custom(item: CustomMetric, predictions: list[str], references: list[str], examples: list[dict], search_dir: Path) -> float:
    module_name, _, attr = item.metric.partition(":")
    added = str(search_dir) not in sys.path
    if added:
        sys.path.insert(0, str(search_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(f"custom metric '{item.metric}': cannot import '{module_name}' ({err})") from None
    finally:
        if added:
            sys.path.remove(str(search_dir))
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ModelError(f"custom metric '{item.metric}': '{module_name}' has no function '{attr}'")
    value = fn(predictions, references, examples)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ModelError(f"custom metric '{item.metric}' returned {type(value).__name__}, not a number") from None
