"""Goals on an evaluation: met, missed, or undecided by the examples it had.

- `parse_amount(value)`: a goal's amount, a number or a percentage of the compared value.
- `check_goals(goals, before, after, reference, evidence)`: one `GoalResult` per goal and rule.

A goal is decided by a 95% interval, not by the point value alone. For `min`/`max` it is the
metric's interval; for the rules that compare with the input model or a `reference`, it is the
interval of the change, from a paired test when both evaluations read the same examples (Newcombe's
interval and McNemar's exact test for accuracy and exact match, a paired bootstrap for the rest),
else from the two samples apart. The interval wholly on the goal's side: met; wholly off it:
missed; across the limit: undecided, with about how many examples would decide it. A metric with
no per-example values (latency, size, a custom metric) is decided by its value, as before.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from slimops.passes import _stats as S
from slimops.passes._metrics import STATISTICS, mean

GOAL_RULES = ("min", "max", "max_drop", "max_increase", "min_increase", "max_drop_from_reference", "max_increase_from_reference")
REFERENCE_SUFFIX = "_from_reference"


@dataclass
class GoalResult:
    """One goal checked: which metric, the rule as written, the values, and what the data decide."""

    metric: str
    rule: str
    value: float | None
    before: float | None
    ok: bool
    why: str = ""
    status: str = "missed"  # met, missed or undecided
    n: int | None = None  # examples behind the decision
    interval: list[float] | None = None  # 95% interval of the compared quantity, signed as the rule reads
    limit: float | None = None
    test: str = ""
    needed: int | None = None  # about how many examples would decide an undecided goal

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


def check_goals(goals: dict[str, dict[str, Any]], before: dict[str, float], after: dict[str, float],
                reference: dict[str, float] | None = None, evidence: dict[str, dict] | None = None) -> list[GoalResult]:
    """Check each goal of each metric against the after (and before, or reference) values.

    Args:
        goals: metric -> {rule: amount}. `min` / `max` bound the after value; `max_drop` /
            `max_increase` bound the change from the before value and `min_increase` asks for at
            least that much gain, each in the metric's unit (`0.01`) or a percent of the before value
            (`"5%"`). The same rules ending in `_from_reference` compare with the reference instead.
        evidence: per part ("after", "before", "reference"), what each evaluation kept of its
            examples: {"data", "split", "index": [...], "items": {metric: [...]}, "stderr": {...},
            "intervals": {metric: [lo, hi]}}. Without it every goal is decided by its values.

    A metric that was not measured misses its goal.
    """
    evidence = evidence or {}
    results = []
    for metric, rules in goals.items():
        value = after.get(metric)
        for rule, raw in rules.items():
            text = f"{rule} {raw}"
            part = "reference" if rule.endswith(REFERENCE_SUFFIX) else "before"
            old = ((reference if part == "reference" else before) or {}).get(metric)
            if value is None:
                results.append(GoalResult(metric, text, None, old, False, "not measured; add it to metrics"))
                continue
            base_rule = rule.removesuffix(REFERENCE_SUFFIX)
            if base_rule in ("min", "max"):
                result = _absolute(metric, text, base_rule, float(raw), value, evidence.get("after"))
            elif old is None:
                result = GoalResult(metric, text, value, None, False, f"no {part} value to compare with")
            else:
                amount, relative = parse_amount(raw)
                limit = amount * abs(old) if relative else amount
                result = _relative(metric, text, base_rule, limit, value, old, evidence.get("after"), evidence.get(part))
            results.append(result)
    return results


def _absolute(metric: str, text: str, rule: str, limit: float, value: float, mine: dict | None) -> GoalResult:
    upper = rule == "max"
    point = value <= limit if upper else value >= limit
    why = f"{_num(value)} {'>' if upper else '<'} {_num(limit)}"
    interval, n, test = _own_interval(metric, value, mine)
    result = GoalResult(metric, text, value, None, point, "", limit=limit)
    return _decided(result, interval, n, test, value, upper, why)


def _relative(metric: str, text: str, rule: str, limit: float, value: float, old: float, mine: dict | None, theirs: dict | None) -> GoalResult:
    rises = rule in ("max_increase", "min_increase")
    change = value - old if rises else old - value
    upper = rule != "min_increase"
    point = change <= limit + 1e-12 if upper else change >= limit - 1e-12
    if rule == "min_increase":
        why = f"rose by {_num(change)}{_pct(change, old)}, needs {_num(limit)}"
    else:
        why = f"{'rose' if rises else 'dropped'} by {_num(change)}{_pct(change, old)}, limit {_num(limit)}"
    (low, high), n, test = _change_interval(metric, mine, theirs) or ((None, None), None, "")  # of value - old
    interval = None if low is None else (low, high) if rises else (-high, -low)
    result = GoalResult(metric, text, value, old, point, "", limit=limit)
    return _decided(result, interval, n, test, change, upper, why)


def _decided(result: GoalResult, interval: tuple[float, float] | None, n: int | None, test: str, quantity: float, upper: bool,
             why: str) -> GoalResult:
    """Fill status, interval and why: from the interval when there is one, else from the point value."""
    result.n, result.test = n, test
    if interval is None:
        result.status = "met" if result.ok else "missed"
        result.why = "" if result.ok else why
        return result
    low, high = interval
    result.interval = [low, high]
    result.status = S.decide(low, high, result.limit, upper)
    result.ok = result.status == "met"
    shown = f"95% interval {_num(low)} to {_num(high)}"
    if result.status == "missed":
        result.why = f"{why}; {shown}"
    elif result.status == "undecided":
        result.needed = S.needed(n, quantity, low, high, result.limit) if n else None
        # the readers add n and `needed` ("about 400 examples would decide it")
        result.why = f"{why}, but the {shown} holds the limit" + ("" if result.needed else "; the value sits on it")
    return result


def _own_interval(metric: str, value: float, mine: dict | None) -> tuple[tuple[float, float] | None, int | None, str]:
    """The metric's interval, as the evaluation wrote it (meta.intervals), with its example count."""
    if not mine:
        return None, None, ""
    interval = (mine.get("intervals") or {}).get(metric)
    items = (mine.get("items") or {}).get(metric)
    if interval is None:
        return None, None, ""
    if metric in (mine.get("stderr") or {}):
        return tuple(interval), len(items) if items else None, "lm-eval stderr, 95%"
    if items is not None:
        return tuple(interval), len(items), "Wilson 95%" if is_share(items) else "bootstrap 95%"
    return None, None, ""  # latency runs: a spread, not evidence about examples


def is_share(items: list | None) -> bool:
    """Whether each example scored right or wrong (1 or 0, as accuracy and exact match do): a share, with
    Wilson's, Newcombe's and McNemar's tools."""
    return bool(items) and all(x in (0, 1) for x in items)


def _change_interval(metric: str, mine: dict | None, theirs: dict | None):
    """(interval of new - old, n, test text), or None when either side kept nothing to test with."""
    if not mine or not theirs:
        return None
    new, old = (mine.get("items") or {}).get(metric), (theirs.get("items") or {}).get(metric)
    if new is not None and old is not None and new and old:
        paired = _same_examples(mine, theirs) and len(new) == len(old)
        if is_share(new) and is_share(old):
            interval = S.newcombe(old, new, paired=paired)
            if paired:
                _, b, c, _ = S.counts(old, new)
                return interval, len(new), f"paired: McNemar exact p={S.mcnemar(b, c):.2g}, Newcombe 95%"
            return interval, min(len(new), len(old)), "unpaired (different examples): Newcombe 95%"
        low, high, p = S.paired_bootstrap(old, new, STATISTICS.get(metric, mean), paired=paired)
        how = "paired bootstrap 95%" if paired else "unpaired (different examples): bootstrap 95%"
        return (low, high), len(new) if paired else min(len(new), len(old)), f"{how}, p={p:.2g}"
    se_new, se_old = (mine.get("stderr") or {}).get(metric), (theirs.get("stderr") or {}).get(metric)
    values_new, values_old = mine.get("values", {}).get(metric), theirs.get("values", {}).get(metric)
    if None in (se_new, se_old, values_new, values_old):
        return None
    half = S.Z95 * math.sqrt(se_new**2 + se_old**2)
    difference = values_new - values_old
    return (difference - half, difference + half), None, "lm-eval stderr, unpaired 95%"


def _same_examples(a: dict, b: dict) -> bool:
    return (a.get("data"), a.get("split"), a.get("index")) == (b.get("data"), b.get("split"), b.get("index"))


def _num(value: float) -> str:
    return f"{value:.4g}"


def _pct(change: float, old: float) -> str:
    return f" ({change / abs(old) * 100:.1f}%)" if old else ""
