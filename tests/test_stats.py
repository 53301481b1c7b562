"""Intervals, paired tests and goal decisions, against values worked out by hand or published."""

from __future__ import annotations

import math

import pytest

from slimops.passes import _goals as G
from slimops.passes import _metrics as M
from slimops.passes import _stats as S

Z = 1.959963984540054


def test_wilson_by_hand():
    # 0 of 10: the lower end is 0 and the upper z^2 / (n + z^2) = 3.8415 / 13.8415
    low, high = S.wilson(0, 10)
    assert low == 0 and high == pytest.approx(Z**2 / (10 + Z**2)) and high == pytest.approx(0.27753, abs=1e-5)
    # 57 of 60: centre (0.95 + z^2/120) / (1 + z^2/60) = 0.92293, half-width 0.05993
    low, high = S.wilson(57, 60)
    assert (low, high) == pytest.approx((0.86299, 0.98285), abs=1e-5)


def test_mcnemar_exact_by_hand():
    assert S.mcnemar(1, 5) == pytest.approx(2 * (1 + 6) / 2**6)  # 2 P(X <= 1), X ~ Bin(6, 1/2)
    assert S.mcnemar(0, 4) == pytest.approx(2 / 16)
    assert S.mcnemar(3, 3) == 1.0 and S.mcnemar(0, 0) == 1.0


def test_newcombe_unpaired_matches_the_published_example():
    # Newcombe (1998), independent proportions 56/70 and 48/80, method 10: 0.0524 to 0.3339
    low, high = S.newcombe([1] * 48 + [0] * 32, [1] * 56 + [0] * 14, paired=False)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_newcombe_paired_by_hand():
    # 36 right on both, 12 only by the new model, 2 only by the old: difference 0.96 - 0.76 = 0.2.
    # Wilson: 48/50 -> (0.86540, 0.98896), 38/50 -> (0.62587, 0.85703); phi = -24 / sqrt(48*2*38*12) = -0.11471
    # low = 0.2 - sqrt(0.09460^2 + 2*0.11471*0.09460*0.09703 + 0.09703^2) = 0.05693
    # high = 0.2 + sqrt(0.02896^2 + 2*0.11471*0.02896*0.13413 + 0.13413^2) = 0.34043
    old = [1] * 36 + [0] * 12 + [1] * 2
    new = [1] * 36 + [1] * 12 + [0] * 2
    assert S.counts(old, new) == (36, 2, 12, 0)
    assert S.newcombe(old, new) == pytest.approx((0.05693, 0.34043), abs=1e-5)
    # a positive association (a*d - b*c = 237 > n/2) is taken n/2 smaller: phi = 212 / sqrt(43*7*41*9)
    old = [1] * 43 + [0] * 7
    new = [1] * 40 + [0] * 3 + [1] + [0] * 6
    phi = 212 / math.sqrt(43 * 7 * 41 * 9)
    (l_old, u_old), (l_new, u_new) = S.wilson(43, 50), S.wilson(41, 50)
    low = -0.04 - math.sqrt((0.82 - l_new) ** 2 - 2 * phi * (0.82 - l_new) * (u_old - 0.86) + (u_old - 0.86) ** 2)
    assert S.newcombe(old, new)[0] == pytest.approx(low)
    # the same answers on every example: the interval is the Wilson half-width on each side
    same = [1] * 10
    assert S.newcombe(same, same) == pytest.approx((-(1 - S.wilson(10, 10)[0]), 1 - S.wilson(10, 10)[0]))


def test_bootstrap_is_seeded_and_close_to_wilson_for_a_share():
    items = [True] * 150 + [False] * 50
    first = S.bootstrap(items, M.STATISTICS["accuracy"])
    assert first == S.bootstrap(items, M.STATISTICS["accuracy"])
    assert first == pytest.approx(S.wilson(150, 200), abs=0.015)


def test_paired_bootstrap():
    same = [0.5, 0.2, 0.9, 0.4]
    assert S.paired_bootstrap(same, same, M.STATISTICS["rouge_l"]) == (0.0, 0.0, 1.0)
    old = [0.2] * 50 + [0.6] * 50
    new = [x + 0.1 for x in old]  # better by 0.1 on every example: paired, that is certain
    low, high, p = S.paired_bootstrap(old, new, M.STATISTICS["rouge_l"])
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1) and p == 0.0
    # unpaired, the spread between examples hides most of it
    low, high, p = S.paired_bootstrap(old, new, M.STATISTICS["rouge_l"], paired=False)
    assert low < 0.1 < high and high - low > 0.1


def test_bleu_from_counts_is_sacrebleus_corpus_bleu():
    import sacrebleu

    answers, references = ["the cat sat on the mat", "a dog ran home fast"], ["the cat sat on a mat", "the dog ran home"]
    assert M.bleu_of_stats(M.bleu_stats(answers, references)) == pytest.approx(sacrebleu.corpus_bleu(answers, [references]).score)


def test_decide_and_needed():
    assert S.decide(0.85, 0.95, 0.8, upper=False) == "met"
    assert S.decide(0.60, 0.75, 0.8, upper=False) == "missed"
    assert S.decide(0.75, 0.90, 0.8, upper=False) == "undecided"
    assert S.decide(-0.02, 0.02, 0.03, upper=True) == "met"
    assert S.decide(-0.04, 0.08, 0.03, upper=True) == "undecided"
    # the value 0.017 sits 0.013 under the limit 0.03 and its upper side is 0.063 wide: (0.063 / 0.013)^2 = 23.5 times the examples
    assert S.needed(60, 0.017, -0.038, 0.080, 0.03) == math.ceil(60 * (0.063 / 0.013) ** 2)
    assert S.needed(60, 0.03, 0.0, 0.06, 0.03) is None


def _evidence(old: list[bool], new: list[bool]) -> dict:
    def part(items):
        return {"data": "d", "split": "eval", "index": list(range(len(items))), "items": {"accuracy": items},
                "intervals": {"accuracy": list(S.wilson(sum(items), len(items)))}}

    return {"after": part(new), "reference": part(old)}


def _pair(n: int, wrong: int, changed: int) -> tuple[list[bool], list[bool]]:
    """A reference wrong on `wrong` of n examples, and a model that differs from it on `changed` on each side."""
    old = [True] * (n - wrong) + [False] * wrong
    new = list(old)
    for i in range(changed):
        new[i] = False  # right before, wrong now
        new[n - 1 - i] = True  # wrong before, right now
    return old, new


def test_a_goal_undecided_at_10_examples_is_decided_at_1000():
    goals = {"accuracy": {"max_drop_from_reference": 0.05}}
    for n, wrong, changed, status in [(10, 1, 1, "undecided"), (1000, 100, 10, "met")]:
        old, new = _pair(n, wrong, changed)
        (result,) = G.check_goals(goals, {}, {"accuracy": sum(new) / n}, {"accuracy": sum(old) / n}, _evidence(old, new))
        assert result.status == status and result.n == n and result.ok == (status == "met")
        assert "McNemar" in result.test and result.interval[0] < 0 < result.interval[1]
    assert result.interval[1] < 0.05
    # at 10 it says about how many examples would decide it
    old, new = _pair(10, 1, 1)
    (undecided,) = G.check_goals(goals, {}, {"accuracy": 0.9}, {"accuracy": 0.9}, _evidence(old, new))
    assert undecided.needed > 10 and "holds the limit" in undecided.why
    # a real drop of 0.2 on 1000 examples misses it, by the interval
    old = [True] * 900 + [False] * 100
    new = [False] * 200 + [True] * 700 + [False] * 100
    (missed,) = G.check_goals(goals, {}, {"accuracy": 0.7}, {"accuracy": 0.9}, _evidence(old, new))
    assert missed.status == "missed" and missed.interval[0] > 0.05 and not missed.ok


def test_absolute_goals_use_the_metrics_interval():
    goals = {"accuracy": {"min": 0.8}}
    for k, n, status in [(9, 10, "undecided"), (57, 60, "met"), (40, 60, "missed")]:
        items = [True] * k + [False] * (n - k)
        (result,) = G.check_goals(goals, {}, {"accuracy": k / n}, None, _evidence(items, items))
        assert result.status == status and result.test == "Wilson 95%"
        assert result.interval == pytest.approx(list(S.wilson(k, n)))


def test_different_examples_are_compared_unpaired():
    old, new = _pair(200, 20, 2)
    evidence = _evidence(old, new)
    evidence["reference"]["split"] = "test"
    (result,) = G.check_goals({"accuracy": {"max_drop_from_reference": 0.05}}, {}, {"accuracy": 0.9}, {"accuracy": 0.9}, evidence)
    assert result.test.startswith("unpaired")
    assert result.interval == pytest.approx([-x for x in reversed(S.newcombe(old, new, paired=False))])


def test_latency_goals_are_decided_by_the_value():
    evidence = {"after": {"items": {}, "intervals": {"latency_p50_ms": [9.0, 14.0]}}}
    (result,) = G.check_goals({"latency_p50_ms": {"max": 12}}, {}, {"latency_p50_ms": 11.0}, None, evidence)
    assert result.status == "met" and result.interval is None and result.n is None


def test_task_metrics_pair_on_each_documents_score():
    """lm_eval's TASK/METRIC: 0/1 scores are a share (McNemar, Newcombe); other scores a paired bootstrap of their mean."""
    old, new = _pair(200, 20, 2)
    part = lambda items: {"index": [], "items": {"t/acc": [float(x) for x in items]}, "stderr": {"t/acc": 0.02}}  # noqa: E731
    (result,) = G.check_goals({"t/acc": {"max_drop_from_reference": 0.05}}, {}, {"t/acc": 0.9}, {"t/acc": 0.9},
                              {"after": part(new), "reference": part(old)})
    assert result.test.startswith("paired: McNemar") and result.status == "met" and result.n == 200
    scores = [0.1 * (i % 10) for i in range(100)]
    (result,) = G.check_goals({"t/f1": {"max_drop_from_reference": 0.01}}, {}, {"t/f1": 0.45}, {"t/f1": 0.45},
                              {"after": {"index": [], "items": {"t/f1": scores}}, "reference": {"index": [], "items": {"t/f1": scores}}})
    assert result.test.startswith("paired bootstrap") and result.interval == [0.0, 0.0] and result.status == "met"
