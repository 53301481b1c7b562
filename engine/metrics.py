"""The facts about each built-in metric, in one table: which way is better, its unit, what it measures.

- `METRICS`: name -> `Metric(higher_is_better, unit, description)`, for every metric the
  `evaluate` pass computes.
- `LOWER_IS_BETTER`: the names whose smaller value is better.
- `higher_is_better(name)`, `lower_is_better(name)`: the direction of one metric; a custom metric
  counts as higher-is-better.
- `GROUPS`, `expand(names)`: the names users may write that stand for several metrics (or one
  under another name), and the built-in names a list of them means.

The evaluate pass computes the values (`slimops.passes._metrics`); reports, search and goals read
the directions here. Nothing here imports torch: config validation reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Metric:
    higher_is_better: bool
    unit: str  # "" for a plain number
    description: str


METRICS: dict[str, Metric] = {
    "accuracy": Metric(True, "share", "share of examples whose answer starts with the label (first words, normalised)"),
    "exact_match": Metric(True, "share", "share of examples whose whole first answer line equals the label (normalised)"),
    "f1": Metric(True, "share", "macro F1 over the label classes, from the same answers as accuracy"),
    "perplexity": Metric(False, "", "exp(mean negative log-likelihood per token) of the split's text"),
    "rouge_l": Metric(True, "share", "mean ROUGE-L F-measure of the answer against the reference"),
    "bleu": Metric(True, "0-100", "corpus BLEU (sacrebleu, 0-100) of the answers against the references"),
    "ttft_ms": Metric(False, "ms", "time to first token, median over the latency runs"),
    "latency_p50_ms": Metric(False, "ms", "median time per generated token after the first"),
    "latency_p90_ms": Metric(False, "ms", "90th percentile time per generated token after the first"),
    "tokens_per_s": Metric(True, "tokens/s", "generated tokens per second, first token included"),
    "peak_mb": Metric(False, "MiB", "resident memory a fresh process adds to load the model and generate"),
    "size_mb": Metric(False, "MiB", "size on disk of the evaluated artifact"),
}

# names users may write that stand for several metrics, or for one under another name
GROUPS: dict[str, list[str]] = {
    "latency": ["ttft_ms", "latency_p50_ms", "latency_p90_ms", "tokens_per_s"],
    "throughput": ["tokens_per_s"],
    "memory": ["peak_mb"],
    "size": ["size_mb"],
    "macro_f1": ["f1"],
    "em": ["exact_match"],
    "rouge": ["rouge_l"],
    "rougeL": ["rouge_l"],
}

LOWER_IS_BETTER: frozenset[str] = frozenset(name for name, metric in METRICS.items() if not metric.higher_is_better)


# lm-evaluation-harness metrics (reported as TASK/METRIC) whose smaller value is better
TASK_LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter"})


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric `name` is better (custom metrics: yes; `TASK/METRIC`: as the harness's metric)."""
    metric = METRICS.get(name)
    if metric is None and "/" in name:
        return name.split("/", 1)[1].split(",", 1)[0] not in TASK_LOWER_IS_BETTER
    return metric.higher_is_better if metric is not None else True


def lower_is_better(name: str) -> bool:
    """Whether a smaller value of metric `name` is better (custom metrics: no)."""
    return not higher_is_better(name)


def expand(names: Iterable[str]) -> list[str]:
    """Built-in metric names in the order given, groups expanded, duplicates dropped.

    Raises:
        ValueError: a name is neither a metric nor a group.
    """
    out: list[str] = []
    for name in names:
        members = GROUPS.get(name, [name])
        for member in members:
            if member not in METRICS:
                known = ", ".join([*METRICS, *GROUPS])
                raise ValueError(f"unknown metric '{name}'; known: {known}, or 'module:function' for your own")
            if member not in out:
                out.append(member)
    return out
