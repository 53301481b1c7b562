"""The run report's charts, saved as PNGs under `report/` in the output folder.

- `metric_chart(out_dir, node_id, rows)`: one small bar chart per metric of an evaluation (before vs after).
- `comparison_chart(out_dir, models)`: every evaluated model as a point, quality against latency,
  marker area by size, error bars from the 95% intervals; `report/comparison.png`.

A chart is drawn again only when its numbers change: a stamp (JSON) beside each PNG holds what it
shows (matplotlib costs seconds, and is imported only to draw, with the Agg backend).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from slimops.metrics import lower_is_better

CHART_DIR = "report"
COMPARISON_PNG = "comparison.png"
# the y axis: the first of these the most models have; an lm_eval metric ("task/acc") when none
QUALITY = ["accuracy", "exact_match", "f1", "rouge_l", "bleu", "perplexity"]
LATENCY = ["latency_p50_ms", "ttft_ms"]


def metric_chart(out_dir: Path, node_id: str, rows: list[tuple[str, float | None, float]]) -> str | None:
    """Bars of (metric, before, after) rows, one panel per metric; the PNG's path relative to out_dir."""
    if not rows:
        return None
    path = out_dir / CHART_DIR / f"{node_id.replace('@', '-at-').replace('/', '-')}-metrics.png"

    def draw(plt):
        columns = min(4, len(rows))
        lines = (len(rows) + columns - 1) // columns
        fig, axes = plt.subplots(lines, columns, figsize=(2.6 * columns, 2.4 * lines), squeeze=False)
        for ax in axes.flat[len(rows):]:
            ax.axis("off")
        for ax, (name, old, new) in zip(axes.flat, rows):
            labels, values, colors = [], [], []
            if old is not None:
                labels.append("before"), values.append(old), colors.append("#9aa5b1")
            labels.append("after"), values.append(new), colors.append("#2f6fdf")
            bars = ax.bar(labels, values, color=colors)
            ax.bar_label(bars, labels=[f"{v:.4g}" for v in values], fontsize=8)
            ax.set_title(f"{name}\n({_better(name)})", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.margins(y=0.2)
        fig.suptitle(node_id, fontsize=10)
        return fig

    return _cached(out_dir, path, [node_id, rows], draw)


def comparison_chart(out_dir: Path, models: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str | None:
    """Quality against latency of every evaluated model; None when fewer than two have both.

    Args:
        out_dir: the output folder.
        models: (label, metrics, intervals) per model: its own values and 95% intervals ({m: [lo, hi]}).
    """
    lm_eval = sorted({name for _, metrics, _ in models for name in metrics if "/" in name})
    y_name, x_name = _most_shared(models, QUALITY + lm_eval), _most_shared(models, LATENCY)
    if y_name is None or x_name is None:
        return None
    points = [(label, metrics[x_name], metrics[y_name], _number(metrics.get("size_mb")),
               _interval(intervals, x_name), _interval(intervals, y_name))
              for label, metrics, intervals in models if _number(metrics.get(x_name)) is not None
              and _number(metrics.get(y_name)) is not None]
    if len(points) < 2:
        return None

    def draw(plt):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        sizes = [size for *_, size, _, _ in points if size]
        for label, x, y, size, x_span, y_span in points:
            area = 40 + 360 * size / max(sizes) if size and sizes else 60
            ax.scatter([x], [y], s=area, alpha=0.6, color="#2f6fdf", edgecolors="#1f2933")
            if x_span or y_span:
                ax.errorbar([x], [y], xerr=_error(x, x_span), yerr=_error(y, y_span), fmt="none", ecolor="#52606d",
                            elinewidth=1, capsize=3)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
        xs = [x for _, x, *_ in points]
        if min(xs) > 0 and max(xs) > 10 * min(xs):
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.set_xscale("log")  # ticks at 1, 2, 5 x 10^k, written plainly: ms read better than powers
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{x_name} ({_better(x_name)})")
        ax.set_ylabel(f"{y_name} ({_better(y_name)})")
        ax.set_title("every evaluated model" + ("; marker area: size_mb" if sizes else ""), fontsize=10)
        ax.grid(alpha=0.3)
        ax.margins(0.15)
        return fig

    return _cached(out_dir, out_dir / CHART_DIR / COMPARISON_PNG, [x_name, y_name, points], draw)


def _most_shared(models: list[tuple[str, dict, dict]], names: list[str]) -> str | None:
    """The name most models have a number for (the first of `names` on a tie); None when none has one."""
    counts = {name: sum(_number(metrics.get(name)) is not None for _, metrics, _ in models) for name in names}
    best = max(names, key=lambda name: counts[name], default=None)
    return best if best is not None and counts[best] else None


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _interval(intervals: dict[str, Any], name: str) -> tuple[float, float] | None:
    span = (intervals or {}).get(name)
    if isinstance(span, (list, tuple)) and len(span) == 2 and all(_number(v) is not None for v in span):
        return span[0], span[1]
    return None


def _error(value: float, span: tuple[float, float] | None) -> list[list[float]] | None:
    """matplotlib's asymmetric error of `value` within `span` (below, above)."""
    return [[max(0.0, value - span[0])], [max(0.0, span[1] - value)]] if span else None


def _better(name: str) -> str:
    return "lower is better" if lower_is_better(name) else "higher is better"


def _cached(out_dir: Path, path: Path, shown: Any, draw: Callable) -> str:
    """Draw a figure into `path` unless its stamp says it shows `shown` already; the path relative to out_dir."""
    stamp = path.with_suffix(".json")
    drawn = json.dumps(shown, sort_keys=True)
    if path.exists() and stamp.exists() and stamp.read_text() == drawn:
        return os.path.relpath(path, out_dir)
    stamp.unlink(missing_ok=True)  # a draw killed half-way must not be kept by the next run
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    stamp.write_text(drawn)
    return os.path.relpath(path, out_dir)
