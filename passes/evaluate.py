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
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimops.errors import DataError, ModelError
from slimops.kinds import FEATURES
from slimops.passes import _metrics as M
from slimops.plugin import BASELINE_SUFFIX, Artifact, Pass, PassContext
from slimops.sizes import size_mb

DEFAULT_PROMPT = "The quick brown fox"


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
        return value

    @property
    def label(self) -> str:
        return self.name or self.metric.rsplit(":", 1)[1]


GoalRules = dict[Literal["min", "max", "max_drop", "max_increase", "min_increase", "max_drop_from_reference",
                          "max_increase_from_reference"], float | str]


class Evaluate(Pass):
    """Measures a model on a data split and against the pipeline's input model."""

    name = "evaluate"
    version = "2"
    consumes = ("hf-model", "hf-adapter", "onnx-model", "genai-model")
    produces = "metrics"
    baseline = True
    # goals are checked, not measured; `reference` reaches the key through its node's key, and the
    # input model's evaluation (`.before`) never reads it, so passes that differ only there share it
    unkeyed = ("goals", "on_miss", "reference")
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
                "latency_p90_ms, tokens_per_s), peak_mb, size_mb, or 'module:function'. Default: perplexity "
                "(accuracy and f1 for a classifier), latency and size_mb."
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

        @field_validator("metrics")
        @classmethod
        def _known(cls, value):
            if value is None:
                return value
            M.expand([item for item in value if isinstance(item, str) and ":" not in item])
            return value

        @field_validator("goals")
        @classmethod
        def _amounts(cls, value):
            for metric, rules in value.items():
                for rule, amount in rules.items():
                    try:
                        _, relative = M.parse_amount(amount)
                    except ValueError:
                        raise ValueError(f"goal {metric}.{rule}: '{amount}' is not a number or a percentage like '5%'") from None
                    if relative and rule in ("min", "max"):
                        raise ValueError(f"goal {metric}.{rule}: a percentage only makes sense for the rules that compare with another "
                                         "value (max_drop, max_increase, min_increase and their _from_reference forms), not min or max")
            return value

        @model_validator(mode="after")
        def _reference_goals(self):
            uses = [f"{m}.{r}" for m, rules in self.goals.items() for r in rules if r.endswith(M.REFERENCE_SUFFIX)]
            if uses and not self.reference:
                raise ValueError(f"goal {uses[0]} compares with a reference: set reference to another evaluate pass")
            return self

        @model_validator(mode="after")
        def _consistent(self):
            names = self.metric_names(None)
            if self.metrics is not None:
                needs_data = [n for n in names if n in M.GENERATED or n == "perplexity" or n not in M.METRICS]
                if needs_data and self.data is None:
                    raise ValueError(f"metrics {', '.join(needs_data)} need a data set: set data")
                for metric in self.goals:
                    if metric not in names:
                        raise ValueError(f"goal on '{metric}', which is not among the metrics measured ({', '.join(names)})")
            for metric in self.goals:
                if metric not in M.METRICS and not any(isinstance(m, CustomMetric) and m.label == metric for m in self.metrics or []):
                    raise ValueError(f"goal on unknown metric '{metric}'; known: {', '.join(M.METRICS)}")
            return self

        def custom(self) -> list[CustomMetric]:
            items = self.metrics or []
            return [m if isinstance(m, CustomMetric) else CustomMetric(metric=m) for m in items if isinstance(m, CustomMetric) or ":" in m]

        def metric_names(self, task: str | None) -> list[str]:
            """Built-in names measured (groups expanded), then custom names."""
            if self.metrics is None:
                if self.data is None or task == FEATURES:
                    quality = []
                else:
                    quality = ["accuracy", "f1"] if task == "text-classification" else ["perplexity"]
                return M.expand([*quality, "latency", "size_mb"])
            builtin = M.expand([m for m in self.metrics if isinstance(m, str) and ":" not in m])
            return [*builtin, *(c.label for c in self.custom())]

    extra_input_kind = "metrics"  # `reference` names another evaluation

    def extra_inputs(self, params: Any) -> list[str]:
        return [params.reference] if params.reference else []

    def goals(self, params: Any, artifact: Artifact) -> list[dict[str, Any]]:
        if not params.goals or artifact.meta.get("role") == "before":
            return []
        results = M.check_goals(params.goals, artifact.metrics.get("before", {}), artifact.metrics.get("after", {}),
                                artifact.metrics.get("reference"))
        return [{**result.as_dict(), "fatal": params.on_miss == "fail"} for result in results]

    def run(self, ctx: PassContext) -> Artifact:
        params = ctx.params
        base_name = ctx.node.split("@", 1)[0]
        is_before = base_name.endswith(BASELINE_SUFFIX)
        before_artifact = ctx.inputs.get(f"{base_name}{BASELINE_SUFFIX}")
        reference = {n: a for n, a in ctx.inputs.items() if params.reference and n.split("@", 1)[0] == params.reference}
        input_name, model = next((n, a) for n, a in ctx.inputs.items() if n != f"{base_name}{BASELINE_SUFFIX}" and n not in reference)
        after, details = measure(ctx, model)
        (ctx.output_dir / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in details.pop("rows")))
        if is_before:
            body = {"model": str(model.path), "kind": model.kind, "metrics": after, **details}
            (ctx.output_dir / "metrics.json").write_text(json.dumps(body, indent=2))
            return Artifact(path=ctx.output_dir, kind="metrics", meta={"role": "before", **details}, metrics=after)
        if before_artifact is not None:
            before = dict(before_artifact.metrics)
        elif input_name == "model" or input_name.startswith("model."):
            before = dict(after)  # this pass reads the input model itself (maybe converted)
        else:
            before = {}
        metrics = {"before": before, "after": after}
        for artifact in reference.values():
            metrics["reference"] = dict(artifact.metrics.get("after", {}))
            details["reference"] = params.reference
        body = {"model": str(model.path), "kind": model.kind, **metrics, **details}
        (ctx.output_dir / "metrics.json").write_text(json.dumps(body, indent=2))
        return Artifact(path=ctx.output_dir, kind="metrics", meta=details, metrics=metrics)


# -- measuring -------------------------------------------------------------------------------------


def measure(ctx: PassContext, model: Artifact) -> tuple[dict[str, float], dict[str, Any]]:
    """Every metric the params ask for, on `model`.

    Returns:
        (metrics, details): one number per metric name; details hold the task, the sample count
        and `rows`, one record per example (prompt, answer, label) for predictions.jsonl.

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
    try:
        names = params.metric_names(runner.task)
        if runner.task == FEATURES:
            names = _measurable_on_vectors(names, ctx, model)
        out: dict[str, float] = {}
        rows: list[dict[str, Any]] = []
        examples = _examples(ctx, runner.task) if params.data else []
        spec = ctx.data.get(params.data) if params.data else None
        prompts = [_prompt_of(e, spec, runner) for e in examples[: params.latency_runs]] or [DEFAULT_PROMPT]
        if "perplexity" in names:
            out["perplexity"] = _perplexity(runner, examples, spec, ctx)
        custom = params.custom()
        if any(n in M.GENERATED for n in names) or custom:
            answers, references, labels, asked = _answers(runner, examples, spec, params, ctx)
            rows = [{"prompt": p, "answer": a, "label": l} for p, a, l in zip(asked, answers, labels)]
            firsts = [M.answer_of(a) for a in answers]
            if "accuracy" in names:
                out["accuracy"] = M.accuracy(firsts, labels)
            if "exact_match" in names:
                out["exact_match"] = M.exact_match(firsts, labels)
            if "f1" in names:
                out["f1"] = M.macro_f1(firsts, labels)
            if "rouge_l" in names:
                out["rouge_l"] = M.rouge_l(answers, references)
            if "bleu" in names:
                out["bleu"] = M.bleu(answers, references)
            for item in custom:
                out[item.label] = _call_custom(item, answers, references, examples, ctx.config_dir)
        if any(n in M.TIMED for n in names):
            timed = _latency(runner, prompts, params, ctx)
            out.update({k: v for k, v in timed.items() if k in names})
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
    return ordered, {"task": runner.task, "samples": len(examples), "split": params.split, "data": params.data, "rows": rows}


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


def _perplexity(runner: Any, examples: list[dict], spec: Any, ctx: PassContext) -> float:
    from slimops.passes._data import render

    if runner.task != "text-generation":
        raise DataError("perplexity needs a causal language model; this one is a classifier (measure accuracy or f1)")
    sums, counts = [], []
    for index, example in enumerate(examples):
        prompt, response = render(example, spec, getattr(runner, "tokenizer", None))
        ids = runner.encode(prompt + response)
        if len(ids) >= 2:
            nll, count = runner.nll(ids)
            sums.append(nll)
            counts.append(count)
        ctx.progress.update(index + 1, len(examples), "perplexity")
    return M.perplexity(sums, counts)


def answer_template(spec: Any) -> tuple[str | None, str | None]:
    """(label field, stop text) of the part of an example the model should generate.

    The answer is the last `{field}` of `response` (or of `template`); the literal text after it
    (`<|im_end|>`, say) is where a generated answer stops.
    """
    from slimops.passes._data import template_fields

    text = spec.response if spec.prompt else spec.template
    if not text:
        return spec.label, None
    fields = template_fields(text)
    field = spec.label if spec.label and "{" + spec.label + "}" in text else (fields[-1] if fields else None)
    if field is None:
        return spec.label, None
    tail = text.rsplit("{" + field + "}", 1)[1].split("{", 1)[0].strip()
    return field, tail or None


def prompt_and_reference(example: dict[str, Any], spec: Any, tokenizer: Any = None) -> tuple[str, str, str]:
    """(prompt, reference, label) of one example for a generated answer.

    Raises:
        DataError: the formatting has no answer part to generate.
    """
    from slimops.passes._data import render

    field, stop = answer_template(spec)
    if spec.prompt or spec.messages:
        prompt, response = render(example, spec, tokenizer)
        reference = response.split(stop, 1)[0].strip() if stop else response.strip()
    elif spec.template and field:
        head = spec.template.rsplit("{" + field + "}", 1)[0]
        prompt, reference = head.format_map(example), str(example[field])
    else:
        raise DataError(
            "generated answers need a prompt and an answer: set 'template' ending in the label field, "
            "or 'prompt' and 'response' (or 'messages')"
        )
    label = str(example[spec.label]) if spec.label and spec.label in example else reference
    return prompt, reference, label


def _prompt_of(example: dict[str, Any], spec: Any, runner: Any) -> str:
    if runner.task in ("text-classification", FEATURES):
        from slimops.passes._data import classification_text

        return classification_text(example, spec)
    try:
        return prompt_and_reference(example, spec, getattr(runner, "tokenizer", None))[0] or DEFAULT_PROMPT
    except DataError:
        from slimops.passes._data import render

        prompt, response = render(example, spec, getattr(runner, "tokenizer", None))
        return prompt or response


def _answers(runner: Any, examples: list[dict], spec: Any, params: Any, ctx: PassContext):
    answers, references, labels, prompts = [], [], [], []
    if runner.task == "text-classification":
        from slimops.passes._data import classification_text

        for index, example in enumerate(examples):
            text = classification_text(example, spec)
            prompts.append(text)
            answers.append(runner.classify(text))
            labels.append(str(example[spec.label]))
            references.append(labels[-1])
            ctx.progress.update(index + 1, len(examples), "classifying")
        return answers, references, labels, prompts
    _, stop = answer_template(spec)
    for index, example in enumerate(examples):
        prompt, reference, label = prompt_and_reference(example, spec, getattr(runner, "tokenizer", None))
        text, _, _ = generate(runner, prompt, params.max_new_tokens, stop=stop)
        answers.append(text.split(stop, 1)[0].strip() if stop else text.strip())
        references.append(reference)
        labels.append(label)
        prompts.append(prompt)
        ctx.progress.update(index + 1, len(examples), "generating answers")
    return answers, references, labels, prompts


def generate(runner: Any, prompt: str, max_new_tokens: int, stop: str | None = None, ignore_eos: bool = False) -> tuple[str, float, list[float]]:
    """Greedy decoding, timed token by token.

    Returns:
        (text, seconds to the first token, [seconds of each later token]).
    """
    ids = runner.encode(prompt)
    t0 = time.perf_counter()
    logits = runner.start(ids)
    token = int(logits.argmax())
    first = time.perf_counter() - t0
    generated, steps = [token], []
    while len(generated) < max_new_tokens:
        if not ignore_eos and token in runner.eos_ids:
            break
        if stop and len(generated) % 4 == 0 and stop in runner.decode(generated):
            break
        t0 = time.perf_counter()
        token = int(runner.step(token).argmax())
        steps.append(time.perf_counter() - t0)
        generated.append(token)
    if not ignore_eos and generated and generated[-1] in runner.eos_ids:
        generated = generated[:-1]
    return runner.decode(generated), first, steps


def _latency(runner: Any, prompts: list[str], params: Any, ctx: PassContext) -> dict[str, float]:
    total = params.warmup + params.latency_runs
    if runner.task in ("text-classification", FEATURES):  # one forward pass per text
        times = []
        tokens = 0
        for run in range(total):
            text = prompts[run % len(prompts)]
            t0 = time.perf_counter()
            runner.classify(text)
            if run >= params.warmup:
                times.append(time.perf_counter() - t0)
                tokens += len(runner.encode(text))
            ctx.progress.update(run + 1, total, "latency")
        return {
            "ttft_ms": M.percentile(times, 50) * 1000,
            "latency_p50_ms": M.percentile(times, 50) * 1000,
            "latency_p90_ms": M.percentile(times, 90) * 1000,
            "tokens_per_s": tokens / sum(times),
        }
    runs = []
    for run in range(total):
        _, first, steps = generate(runner, prompts[run % len(prompts)], params.max_new_tokens, ignore_eos=True)
        if run >= params.warmup:
            runs.append((first, steps))
        ctx.progress.update(run + 1, total, "latency")
    return M.latency_summary(runs)


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
