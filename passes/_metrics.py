"""Metric functions and goals: pure, small, and computed on plain Python values.

- `normalize(text)`: lower case, no punctuation, no articles, single spaces (SQuAD's rule).
- `answer_of(text, stop)`: the first line of a generated text, cut at a stop string.
- `accuracy`, `exact_match`, `macro_f1`: a predicted answer against a label.
- `perplexity(nll_sums, token_counts)`: exp of the mean negative log-likelihood per token.
- `rouge_l`, `bleu`: via rouge-score and sacrebleu (imported when called).
- `percentile(values, q)`, `latency_summary(runs)`: time to first token, per-token p50/p90, tokens/s.
- `METRICS`, `GROUPS`, `expand(names)`: from `slimops.metrics`, the engine's one table of them.
- `example_items(name, ...)`, `statistic(name)`: what each example contributes to a metric, and the
  metric recomputed from any resample of those (the intervals and paired tests of `_stats`).

Nothing here imports torch, so every function is testable with numbers worked out by hand.
"""

from __future__ import annotations

import math
import re
import string
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
    return mean(_right(predictions, labels))


def exact_match(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Share of predictions equal to their label once both are normalised."""
    _same_length(predictions, labels)
    return mean(_exact(predictions, labels))


def _right(predictions: Sequence[str], labels: Sequence[str]) -> list[bool]:
    return [_head(p, l) == normalize(l) for p, l in zip(predictions, labels)]


def _exact(predictions: Sequence[str], labels: Sequence[str]) -> list[bool]:
    return [normalize(p) == normalize(l) for p, l in zip(predictions, labels)]


def macro_f1(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean over the label classes of each class's F1 (predictions read as in `accuracy`).

    A class that is never predicted nor present does not exist; one with no true positives scores 0.
    """
    _same_length(predictions, labels)
    return f1_of_pairs([(_head(p, l), normalize(l)) for p, l in zip(predictions, labels)])


def f1_of_pairs(pairs: Sequence[Sequence[str]]) -> float:
    """Macro F1 of (guessed, gold) pairs, both normalised: what `macro_f1` computes, on any resample."""
    scores = []
    for cls in sorted({gold for _, gold in pairs}):
        tp = sum(g == cls and p == cls for p, g in pairs)
        fp = sum(g != cls and p == cls for p, g in pairs)
        fn = sum(g == cls and p != cls for p, g in pairs)
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
    scores = rouge_l_scores(predictions, references)
    return sum(scores) / len(scores)


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """The ROUGE-L F-measure of each prediction against its reference."""
    _same_length(predictions, references)
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise RuntimeError("metric rouge_l needs the rouge-score package: pip install rouge-score") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu's default 13a tokenizer), 0-100, one reference per prediction."""
    _same_length(predictions, references)
    return bleu_of_stats(bleu_stats(predictions, references))


def bleu_stats(predictions: Sequence[str], references: Sequence[str]) -> list[list[int]]:
    """Each sentence's BLEU counts (hypothesis and reference lengths, n-gram matches and totals).

    Corpus BLEU is a function of their sums, so a resample of sentences sums its rows: the
    bootstrap never re-tokenises.
    """
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        raise RuntimeError("metric bleu needs the sacrebleu package: pip install sacrebleu") from None
    return [[int(x) for x in row] for row in BLEU()._extract_corpus_statistics(list(predictions), [list(references)])]


def bleu_of_stats(stats: Sequence[Sequence[int]]) -> float:
    """Corpus BLEU from per-sentence counts (`bleu_stats`)."""
    from sacrebleu.metrics import BLEU

    totals = [sum(column) for column in zip(*stats)]
    return float(BLEU()._compute_score_from_stats(totals).score)


# -- per example -----------------------------------------------------------------------------------


def example_items(name: str, answers: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> list[Any]:
    """What each example contributes to metric `name`, JSON-friendly, for `statistic(name)`.

    accuracy and exact_match: a bool each; f1: (guessed, gold); rouge_l: its score; bleu: its counts.
    """
    firsts = [answer_of(a) for a in answers]
    if name == "accuracy":
        return _right(firsts, labels)
    if name == "exact_match":
        return _exact(firsts, labels)
    if name == "f1":
        return [[_head(p, l), normalize(l)] for p, l in zip(firsts, labels)]
    if name == "rouge_l":
        return rouge_l_scores(answers, references)
    if name == "bleu":
        return bleu_stats(answers, references)
    raise ValueError(f"metric {name} has no per-example items")


def mean(items: Sequence[Any]) -> float:
    return sum(float(x) for x in items) / len(items)


def _perplexity_of(items: Sequence[Sequence[float]]) -> float:
    return perplexity([nll for nll, _ in items], [count for _, count in items])


# the metric recomputed from a list of its per-example items; perplexity's are (nll sum, tokens)
STATISTICS = {"accuracy": mean, "exact_match": mean, "f1": f1_of_pairs, "rouge_l": mean, "bleu": bleu_of_stats,
              "perplexity": _perplexity_of}


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
