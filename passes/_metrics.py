"""Metric functions and goals: pure, small, and computed on plain Python values.

- `normalize(text)`: lower case, no punctuation, no articles, single spaces (SQuAD's rule).
- `answer_of(text, stop)`: the first line of a generated text, cut at a stop string.
- `accuracy`, `exact_match`, `macro_f1`: a predicted answer against a label.
- `perplexity(nll_sums, token_counts)`: exp of the mean negative log-likelihood per token.
- `rouge_l`, `bleu`: via rouge-score and sacrebleu (imported when called).
- `percentile(values, q)`, `latency_summary(runs)`: time to first token, per-token p50/p90, tokens/s.
- `METRICS`, `GROUPS`, `expand(names)`: from `slimops.metrics`, the engine's one table of them.
- `Goal`, `check_goals(goals, before, after)`: absolute and relative goals, one row per goal.

Nothing here imports torch, so every function is testable with numbers worked out by hand.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from slimops.metrics import GROUPS, METRICS, expand, higher_is_better  # noqa: F401  (the engine's table, used here and by evaluate)

GENERATED = {"accuracy", "exact_match", "f1", "rouge_l", "bleu"}  # need an answer per example
TIMED = set(GROUPS["latency"])


# -- answers ---------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lower case, drop punctuation and English articles, collapse spaces."""
    text = str(text).lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_of(text: str, stop: str | None = None) -> str:
    """The answer in a generated text: cut at `stop` (if given), then its first non-empty line."""
    if stop:
        text = text.split(stop, 1)[0]
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _head(prediction: str, label: str) -> str:
    """The first as many normalised words of `prediction` as `label` has."""
    words = normalize(label).split()
    return " ".join(normalize(prediction).split()[: max(1, len(words))])


def accuracy(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Share of predictions whose first words (as many as the label has) equal the label, normalised.

    `"Sad, very"` against `"sad"` counts; `"sadness"` does not.
    """
    _same_length(predictions, labels)
    return sum(_head(p, l) == normalize(l) for p, l in zip(predictions, labels)) / len(labels)


def exact_match(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Share of predictions equal to their label once both are normalised."""
    _same_length(predictions, labels)
    return sum(normalize(p) == normalize(l) for p, l in zip(predictions, labels)) / len(labels)


def macro_f1(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean over the label classes of each class's F1 (predictions read as in `accuracy`).

    A class that is never predicted nor present does not exist; one with no true positives scores 0.
    """
    _same_length(predictions, labels)
    gold = [normalize(l) for l in labels]
    guessed = [_head(p, l) for p, l in zip(predictions, labels)]
    scores = []
    for cls in sorted(set(gold)):
        tp = sum(g == cls and p == cls for g, p in zip(gold, guessed))
        fp = sum(g != cls and p == cls for g, p in zip(gold, guessed))
        fn = sum(g == cls and p != cls for g, p in zip(gold, guessed))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def _same_length(predictions: Sequence, labels: Sequence) -> None:
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"need as many predictions as labels, and at least one (got {len(predictions)} and {len(labels)})")


# -- likelihood and overlap ------------------------------------------------------------------------


def perplexity(nll_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """exp(total negative log-likelihood / total predicted tokens), over every text together.

    Args:
        nll_sums: per text, the sum of -log p(token) over its predicted tokens (natural log).
        token_counts: per text, how many tokens were predicted (its length minus one).
    """
    tokens = sum(token_counts)
    if tokens <= 0:
        raise ValueError("perplexity needs texts of at least two tokens")
    return math.exp(sum(nll_sums) / tokens)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score, with stemming) of each prediction against its reference."""
    _same_length(predictions, references)
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise RuntimeError("metric rouge_l needs the rouge-score package: pip install rouge-score") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(references)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu's default 13a tokenizer), 0-100, one reference per prediction."""
    _same_length(predictions, references)
    try:
        import sacrebleu
    except ImportError:
        raise RuntimeError("metric bleu needs the sacrebleu package: pip install sacrebleu") from None
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


# -- timing ----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(runs: Sequence[tuple[float, Sequence[float]]]) -> dict[str, float]:
    """Latency metrics from timed generations.

    Args:
        runs: per generation, (seconds to the first token, [seconds of each later token]).

    Returns:
        ttft_ms (median first-token time), latency_p50_ms / latency_p90_ms (over every later
        token of every run), tokens_per_s (all tokens over all time).
    """
    if not runs:
        raise ValueError("latency needs at least one timed generation")
    firsts = [first for first, _ in runs]
    steps = [step for _, rest in runs for step in rest]
    total_time = sum(firsts) + sum(steps)
    total_tokens = len(runs) + len(steps)
    out = {"ttft_ms": percentile(firsts, 50) * 1000}
    if steps:
        out["latency_p50_ms"] = percentile(steps, 50) * 1000
        out["latency_p90_ms"] = percentile(steps, 90) * 1000
    out["tokens_per_s"] = total_tokens / total_time if total_time > 0 else float("inf")
    return out


# -- goals -----------------------------------------------------------------------------------------


@dataclass
class GoalResult:
    """One goal checked: which metric, the rule as written, the values, and whether it held."""

    metric: str
    rule: str
    value: float | None
    before: float | None
    ok: bool
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_amount(value: Any) -> tuple[float, bool]:
    """Read a goal's amount: `"5%"` -> (0.05, True); `0.01` or `"0.01"` -> (0.01, False).

    Returns:
        (amount, relative): a percentage is a share of the before value; a plain number is in
        the metric's own unit.

    Raises:
        ValueError: neither a number nor a percentage.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            return float(text[:-1]) / 100, True
        return float(text), False
    return float(value), False


GOAL_RULES = ("min", "max", "max_drop", "max_increase", "min_increase", "max_drop_from_reference", "max_increase_from_reference")
REFERENCE_SUFFIX = "_from_reference"


def check_goals(goals: dict[str, dict[str, Any]], before: dict[str, float], after: dict[str, float],
                reference: dict[str, float] | None = None) -> list[GoalResult]:
    """Check each goal of each metric against the after (and before, or reference) values.

    Rules: `min` / `max` bound the after value; `max_drop` / `max_increase` bound the change
    from the before value and `min_increase` asks for at least that much gain, each as a number
    in the metric's unit (`0.01`) or a percent of the before value (`"5%"`). The same rules ending
    in `_from_reference` compare with the `reference:` evaluation instead of the input model.
    A metric that was not measured fails its goal.
    """
    results = []
    for metric, rules in goals.items():
        value = after.get(metric)
        for rule, raw in rules.items():
            text = f"{rule} {raw}"
            versus = reference if rule.endswith(REFERENCE_SUFFIX) else before
            old = (versus or {}).get(metric)
            if value is None:
                results.append(GoalResult(metric, text, None, old, False, "not measured; add it to metrics"))
                continue
            if rule == "min":
                ok, why = value >= float(raw), f"{_num(value)} < {_num(float(raw))}"
            elif rule == "max":
                ok, why = value <= float(raw), f"{_num(value)} > {_num(float(raw))}"
            else:
                if old is None:
                    where = "reference" if rule.endswith(REFERENCE_SUFFIX) else "before"
                    results.append(GoalResult(metric, text, value, None, False, f"no {where} value to compare with"))
                    continue
                amount, relative = parse_amount(raw)
                base_rule = rule.removesuffix(REFERENCE_SUFFIX)
                limit = amount * abs(old) if relative else amount
                if base_rule == "min_increase":
                    change = value - old
                    ok = change >= limit - 1e-12
                    why = f"rose by {_num(change)}{_pct(change, old)}, needs {_num(limit)}"
                else:
                    change = value - old if base_rule == "max_increase" else old - value
                    word = "rose" if base_rule == "max_increase" else "dropped"
                    ok = change <= limit + 1e-12
                    why = f"{word} by {_num(change)}{_pct(change, old)}, limit {_num(limit)}"
            results.append(GoalResult(metric, text, value, old, ok, "" if ok else why))
    return results


def _num(value: float) -> str:
    return f"{value:.4g}"


def _pct(change: float, old: float) -> str:
    return f" ({change / abs(old) * 100:.1f}%)" if old else ""
