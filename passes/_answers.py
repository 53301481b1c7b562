"""Answers and timings: how the evaluate pass asks a model for an answer and times its generation.

- `answer_template(spec)`, `prompt_and_reference(example, spec)`: which part of an example the
  model must generate, and the text it is asked.
- `prompt_of(example, spec, runner)`: the text a latency run feeds the model.
- `answers(runner, examples, spec, max_new_tokens, progress)`: each example's answer, reference and label.
- `generate(runner, prompt, max_new_tokens)`: greedy decoding, timed token by token.
- `latency(runner, prompts, warmup, runs, progress)`: the latency metrics and each run's own values.
"""

from __future__ import annotations

import time
from typing import Any

from slimops.errors import DataError
from slimops.kinds import FEATURES
from slimops.passes import _metrics as M

DEFAULT_PROMPT = "The quick brown fox"


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
    if spec.label and spec.label not in fields:
        return spec.label, None  # the whole template is the question; the label column holds the answer
    field = spec.label if spec.label else (fields[-1] if fields else None)
    if field is None:
        return spec.label, None
    tail = _split_at(text, field)[1].strip()
    return field, tail or None


def _split_at(template: str, field: str) -> tuple[str, str]:
    """(the template before its last `{field}`, still a template; the literal text after it, up to
    the next placeholder); (the template, "") when it has no `{field}`. Parsed, not searched:
    `{{field}}` is literal text, and `{{` a brace."""
    import string

    parts = list(string.Formatter().parse(template))  # (literal, field or None, spec, conversion); validated plain
    places = [i for i, (_, name, _, _) in enumerate(parts) if name == field]
    if not places:
        return template, ""
    last = places[-1]

    def source(literal: str, name: str | None) -> str:
        return literal.replace("{", "{{").replace("}", "}}") + ("" if name is None else "{" + name + "}")

    head = "".join(source(literal, name) for literal, name, _, _ in parts[:last]) + source(parts[last][0], None)
    tail = ""
    for literal, name, _, _ in parts[last + 1:]:  # a literal brace ends a part, so the text may come in several
        tail += literal
        if name is not None:
            break
    return head, tail


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
        prompt, reference = _split_at(spec.template, field)[0].format_map(example), str(example[field])
    else:
        raise DataError(
            "generated answers need a prompt and an answer: set 'template' ending in the label field, "
            "or 'prompt' and 'response' (or 'messages')"
        )
    label = str(example[spec.label]) if spec.label and spec.label in example else reference
    return prompt, reference, label


def prompt_of(example: dict[str, Any], spec: Any, runner: Any) -> str:
    if runner.task in ("text-classification", FEATURES):
        from slimops.passes._data import classification_text

        return classification_text(example, spec)
    try:
        return prompt_and_reference(example, spec, getattr(runner, "tokenizer", None))[0] or DEFAULT_PROMPT
    except DataError:
        from slimops.passes._data import render

        prompt, response = render(example, spec, getattr(runner, "tokenizer", None))
        return prompt or response


def answers(runner: Any, examples: list[dict], spec: Any, max_new_tokens: int, progress: Any):
    """Each example's (answers, references, labels, prompts), from a classifier or greedy generation."""
    answers, references, labels, prompts = [], [], [], []
    if runner.task == "text-classification":
        from slimops.passes._data import classification_text

        for index, example in enumerate(examples):
            text = classification_text(example, spec)
            prompts.append(text)
            answers.append(runner.classify(text))
            labels.append(str(example[spec.label]))
            references.append(labels[-1])
            progress.update(index + 1, len(examples), "classifying")
        return answers, references, labels, prompts
    _, stop = answer_template(spec)
    for index, example in enumerate(examples):
        prompt, reference, label = prompt_and_reference(example, spec, getattr(runner, "tokenizer", None))
        if not prompt.strip():
            raise DataError(f"example {index}: its prompt is empty, so there is nothing to answer; put text before the "
                            "answer's field in the template (or set 'prompt' and 'response')")
        text, _, _ = generate(runner, prompt, max_new_tokens, stop=stop)
        answers.append(text.split(stop, 1)[0].strip() if stop else text.strip())
        references.append(reference)
        labels.append(label)
        prompts.append(prompt)
        progress.update(index + 1, len(examples), "generating answers")
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


def latency(runner: Any, prompts: list[str], warmup: int, runs: int, max_new_tokens: int, progress: Any
            ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The latency metrics over `runs` timed generations (after `warmup` untimed ones).

    Returns:
        (metrics, per_run): the metrics over every run together, and each metric measured on each
        run alone (for the spread over runs).
    """
    total = warmup + runs
    if runner.task in ("text-classification", FEATURES):  # one forward pass per text
        times, sizes = [], []
        for run in range(total):
            text = prompts[run % len(prompts)]
            t0 = time.perf_counter()
            runner.classify(text)
            if run >= warmup:
                times.append(time.perf_counter() - t0)
                sizes.append(len(runner.encode(text)))
            progress.update(run + 1, total, "latency")
        per_run = {"ttft_ms": [t * 1000 for t in times], "tokens_per_s": [n / t for n, t in zip(sizes, times)]}
        per_run["latency_p50_ms"] = per_run["latency_p90_ms"] = per_run["ttft_ms"]
        return {
            "ttft_ms": M.percentile(times, 50) * 1000,
            "latency_p50_ms": M.percentile(times, 50) * 1000,
            "latency_p90_ms": M.percentile(times, 90) * 1000,
            "tokens_per_s": sum(sizes) / sum(times),
        }, per_run
    timed = []
    for run in range(total):
        _, first, steps = generate(runner, prompts[run % len(prompts)], max_new_tokens, ignore_eos=True)
        if run >= warmup:
            timed.append((first, steps))
        progress.update(run + 1, total, "latency")
    per_run: dict[str, list[float]] = {}
    for one in timed:
        for name, value in M.latency_summary([one]).items():
            per_run.setdefault(name, []).append(value)
    return M.latency_summary(timed), per_run
