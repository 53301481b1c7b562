"""How sure a metric is: 95% intervals, paired tests between two models, and goals decided by them.

- `wilson(k, n)`: the Wilson score interval of a share (accuracy, exact match).
- `bootstrap(items, statistic)`: the percentile bootstrap interval of any statistic over examples.
- `spread(values)`: the 2.5th..97.5th percentile of repeated runs (latency).
- `mcnemar(b, c)`: the exact two-sided McNemar p-value from the two discordant counts.
- `newcombe(pairs)`: the interval of the difference of two shares on the same examples (Newcombe's
  method 10; with `paired=False`, his hybrid score interval for independent samples).
- `paired_bootstrap(old, new, statistic)`: the interval and p-value of `statistic(new) - statistic(old)`
  with both resampled on the same examples.
- `decide(low, high, limit, upper)`: met, missed or undecided, from where the interval lies.
- `needed(n, value, low, high, limit)`: about how many examples would make the interval clear the limit.

Nothing here imports torch; numpy does the resampling, seeded, so a rerun gives the same interval.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

Z95 = 1.959963984540054  # the two-sided 95% normal quantile
RESAMPLES = 1000
SEED = 0


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of `successes / n`."""
    if n <= 0:
        raise ValueError("an interval needs at least one example")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _indices(n: int, resamples: int, seed: int):
    import numpy as np

    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap(items: Sequence[Any], statistic: Callable[[list], float], resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of `statistic` over resamples (with replacement) of `items`."""
    if not items:
        raise ValueError("an interval needs at least one example")
    values = [statistic([items[i] for i in row]) for row in _indices(len(items), resamples, seed)]
    return _percentiles(values)


def _percentiles(values: Sequence[float]) -> tuple[float, float]:
    import numpy as np

    low, high = np.percentile(np.asarray(values, dtype=float), [2.5, 97.5])
    return float(low), float(high)


def spread(values: Sequence[float]) -> tuple[float, float]:
    """The 2.5th..97.5th percentiles of repeated measurements (linear interpolation)."""
    if not values:
        raise ValueError("a spread needs at least one run")
    return _percentiles(values)


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: under no difference, b of the b + c discordant pairs is Binomial(b + c, 1/2)."""
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(b, c) + 1)) / 2**m
    return min(1.0, 2 * tail)


def counts(old: Sequence[bool], new: Sequence[bool]) -> tuple[int, int, int, int]:
    """(both right, only old right, only new right, both wrong) over paired examples."""
    if len(old) != len(new):
        raise ValueError("paired counts need the same examples on both sides")
    a = sum(1 for o, n in zip(old, new) if o and n)
    b = sum(1 for o, n in zip(old, new) if o and not n)
    c = sum(1 for o, n in zip(old, new) if n and not o)
    return a, b, c, len(old) - a - b - c


def newcombe(old: Sequence[bool], new: Sequence[bool], paired: bool = True) -> tuple[float, float]:
    """The 95% interval of share(new) - share(old).

    Paired (the same examples in the same order): Newcombe's method 10 for paired data, which
    combines the two Wilson intervals with the phi correlation of the 2x2 table. Unpaired: his
    hybrid score interval, the same with phi = 0.
    """
    n_old, n_new = len(old), len(new)
    k_old, k_new = sum(map(bool, old)), sum(map(bool, new))
    p_old, p_new = k_old / n_old, k_new / n_new
    lo_old, hi_old = wilson(k_old, n_old)
    lo_new, hi_new = wilson(k_new, n_new)
    phi = 0.0
    if paired:
        a, b, c, d = counts(old, new)
        denominator = (a + b) * (c + d) * (a + c) * (b + d)
        # Newcombe's corrected phi: a positive association is taken n/2 smaller, and one under n/2 as none
        product = a * d - b * c
        product = product - n_new / 2 if product > n_new / 2 else min(product, 0)
        phi = product / math.sqrt(denominator) if denominator else 0.0
    below = (p_new - lo_new) ** 2 - 2 * phi * (p_new - lo_new) * (hi_old - p_old) + (hi_old - p_old) ** 2
    above = (hi_new - p_new) ** 2 - 2 * phi * (hi_new - p_new) * (p_old - lo_old) + (p_old - lo_old) ** 2
    difference = p_new - p_old
    return difference - math.sqrt(max(below, 0.0)), difference + math.sqrt(max(above, 0.0))


def paired_bootstrap(old: Sequence[Any], new: Sequence[Any], statistic: Callable[[list], float], paired: bool = True,
                     resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float, float]:
    """(low, high, p) of statistic(new) - statistic(old).

    Paired, each resample draws the same examples for both; unpaired, each side is drawn on its
    own. p is the two-sided share of resamples whose difference has the other sign than the
    observed one (how often noise alone would reverse it).
    """
    if paired and len(old) != len(new):
        raise ValueError("a paired bootstrap needs the same examples on both sides")
    rows_new = _indices(len(new), resamples, seed)
    rows_old = rows_new if paired else _indices(len(old), resamples, seed + 1)
    differences = [statistic([new[i] for i in rn]) - statistic([old[i] for i in ro]) for rn, ro in zip(rows_new, rows_old)]
    observed = statistic(list(new)) - statistic(list(old))
    if observed == 0:
        p = 1.0
    else:
        reversed_share = sum(1 for d in differences if (d <= 0 if observed > 0 else d >= 0)) / resamples
        p = min(1.0, 2 * reversed_share)
    low, high = _percentiles(differences)
    return low, high, p


def decide(low: float, high: float, limit: float, upper: bool) -> str:
    """'met', 'missed' or 'undecided' for a quantity whose 95% interval is [low, high].

    upper: the goal bounds the quantity from above (max, max_drop, max_increase); else from below
    (min, min_increase).
    """
    eps = 1e-12
    if upper:
        return "met" if high <= limit + eps else ("missed" if low > limit + eps else "undecided")
    return "met" if low >= limit - eps else ("missed" if high < limit - eps else "undecided")


def needed(n: int, value: float, low: float, high: float, limit: float) -> int | None:
    """About how many examples would shrink the interval off the limit, at the same observed value.

    The interval's half-width shrinks as 1/sqrt(n): the side that faces the limit must come down
    to the distance between the value and the limit. None when the value sits on the limit.
    """
    gap = abs(value - limit)
    if gap < 1e-12:
        return None
    half = (high - value) if value < limit else (value - low)
    if half <= gap:
        return n
    return math.ceil(n * (half / gap) ** 2)
