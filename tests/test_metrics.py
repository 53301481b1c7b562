"""Metric functions and goals on tiny inputs whose values are worked out by hand in each test."""

from __future__ import annotations

import math

import pytest

from slimops.passes import _goals as G
from slimops.passes import _metrics as M


def test_normalize_and_answer_of():
    assert M.normalize("  The Cat, sat!  ") == "cat sat"
    assert M.answer_of("\n  sad<|im_end|>more\nnext line", stop="<|im_end|>") == "sad"
    assert M.answer_of("first\nsecond") == "first"
    assert M.answer_of("") == ""


PREDS = ["Sad, very", "happy", "sadness", "The calm"]
LABELS = ["sad", "sad", "sad", "calm"]


def test_accuracy_reads_as_many_words_as_the_label():
    # "sad very" -> "sad" ok; "happy" no; "sadness" no; "the calm" -> "calm" ok
    assert M.accuracy(PREDS, LABELS) == 0.5


def test_exact_match_needs_the_whole_answer():
    # only "The calm" normalises to its label
    assert M.exact_match(PREDS, LABELS) == 0.25


def test_macro_f1_by_hand():
    # sad: tp=1 fp=0 fn=2 -> 2/4 = 0.5; calm: tp=1 fp=0 fn=0 -> 1.0; mean 0.75
    assert M.macro_f1(PREDS, LABELS) == pytest.approx(0.75)


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="as many predictions as labels"):
        M.accuracy(["a"], ["a", "b"])


def test_perplexity_pools_tokens_over_texts():
    # total nll 3 over 3 tokens -> exp(1)
    assert M.perplexity([2.0, 1.0], [2, 1]) == pytest.approx(math.e)
    with pytest.raises(ValueError):
        M.perplexity([], [])


def test_rouge_l_by_hand():
    # LCS 3; precision 3/3, recall 3/4 -> F = 2*1*0.75/1.75
    assert M.rouge_l(["the cat sat"], ["the cat sat down"]) == pytest.approx(2 * 0.75 / 1.75)


def test_bleu_by_hand():
    # n-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths (no brevity penalty): geometric mean
    expected = 100 * (0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25
    assert M.bleu(["a b c d e"], ["a b c d f"]) == pytest.approx(expected, rel=1e-6)
    assert M.bleu(["one two three four"], ["one two three four"]) == pytest.approx(100.0)


def test_percentile_interpolates_like_numpy():
    assert M.percentile([4, 1, 3, 2], 50) == 2.5
    assert M.percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert M.percentile([7], 90) == 7


def test_latency_summary_by_hand():
    runs = [(0.1, [0.01, 0.02]), (0.3, [0.03])]
    out = M.latency_summary(runs)
    assert out["ttft_ms"] == pytest.approx(200)            # median of 0.1 and 0.3
    assert out["latency_p50_ms"] == pytest.approx(20)      # median of the three later tokens
    assert out["latency_p90_ms"] == pytest.approx(28)      # 0.02 + 0.8 * 0.01
    assert out["tokens_per_s"] == pytest.approx(5 / 0.46)  # 5 tokens in 0.46 s


def test_expand_groups_and_rejects_unknown_names():
    assert M.expand(["latency", "size", "tokens_per_s"]) == ["ttft_ms", "latency_p50_ms", "latency_p90_ms", "tokens_per_s", "size_mb"]
    assert M.expand(["macro_f1", "rouge"]) == ["f1", "rouge_l"]
    with pytest.raises(ValueError, match="unknown metric 'acuracy'"):
        M.expand(["acuracy"])


def _by_rule(results):
    return {(r.metric, r.rule): r for r in results}


def test_absolute_goals():
    results = _by_rule(G.check_goals({"accuracy": {"min": 0.8}, "latency_p50_ms": {"max": 30}}, {}, {"accuracy": 0.75, "latency_p50_ms": 12.0}))
    assert not results[("accuracy", "min 0.8")].ok
    assert "0.75 < 0.8" in results[("accuracy", "min 0.8")].why
    assert results[("latency_p50_ms", "max 30")].ok


def test_relative_goals_percent_and_absolute():
    before = {"perplexity": 10.0, "accuracy": 0.80}
    ok = _by_rule(G.check_goals({"perplexity": {"max_increase": "5%"}, "accuracy": {"max_drop": 0.01}}, before, {"perplexity": 10.4, "accuracy": 0.795}))
    assert all(r.ok for r in ok.values())
    bad = _by_rule(G.check_goals({"perplexity": {"max_increase": "5%"}, "accuracy": {"max_drop": 0.01}}, before, {"perplexity": 10.6, "accuracy": 0.78}))
    assert not bad[("perplexity", "max_increase 5%")].ok and "(6.0%)" in bad[("perplexity", "max_increase 5%")].why
    assert not bad[("accuracy", "max_drop 0.01")].ok


def test_a_goal_on_an_unmeasured_metric_fails():
    (result,) = G.check_goals({"bleu": {"min": 1}}, {}, {"accuracy": 1.0})
    assert not result.ok and "not measured" in result.why


def test_min_increase_and_goals_against_a_reference():
    before, reference = {"accuracy": 0.10}, {"accuracy": 0.90}
    goals = {"accuracy": {"min_increase": 0.40, "max_drop_from_reference": 0.03}}
    ok = _by_rule(G.check_goals(goals, before, {"accuracy": 0.88}, reference))
    assert all(r.ok for r in ok.values())
    assert ok[("accuracy", "max_drop_from_reference 0.03")].before == 0.90  # the row shows what it compared with
    bad = _by_rule(G.check_goals(goals, before, {"accuracy": 0.45}, reference))
    assert not bad[("accuracy", "min_increase 0.4")].ok and "needs 0.4" in bad[("accuracy", "min_increase 0.4")].why
    assert not bad[("accuracy", "max_drop_from_reference 0.03")].ok and "dropped by 0.45" in bad[("accuracy", "max_drop_from_reference 0.03")].why
    (missing,) = G.check_goals({"accuracy": {"max_drop_from_reference": 0.03}}, before, {"accuracy": 0.5}, None)
    assert not missing.ok and "no reference value" in missing.why


def test_directions_of_lm_eval_metrics_follow_the_harness():
    from slimops.metrics import higher_is_better

    assert higher_is_better("tone_choice/acc") and higher_is_better("tone_name/exact_match,strict-match")
    assert not higher_is_better("wikitext/word_perplexity") and not higher_is_better("wikitext/bits_per_byte")
    assert not higher_is_better("perplexity") and higher_is_better("my_metric")
