"""The run report: `report.md` and `report.html` in the output folder, rendered from `run.json`.

- `comparison(metrics)`: rows of (metric, before, after, change) from a node's before/after metrics.
- `with_interval(value, interval)`, `interval_text(interval)`, `interval_legend(methods)`: a value
  with its 95% interval, the interval alone, and the line that names how the intervals were
  computed (the terminal's tables show them too).
- `goal_status(goal)`, `goal_note(goal)`: met / missed / undecided, and what to read beside it.
- `write_report(out_dir, samples)`: the config summary, the plan with hits and misses, per-node
  timings, before/after tables with intervals and bar charts, goals with their tests, a chart of
  every model's quality against latency, sample answers side by side, and any PNG a pass left.

`slimops run` writes it after every run; `slimops report DIR` renders it again from `run.json`.
matplotlib is imported only when there is something to draw.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from slimops.errors import SlimopsError
from slimops.metrics import lower_is_better
from slimops.report_chart import comparison_chart, metric_chart
from slimops.report_samples import SAMPLES, SampleTable, model_label, node_folder, repeated_baselines, sample_tables

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
TRIALS_JSON = "trials.json"  # a search writes it beside the best trial's outputs
# the order tables show metrics in (the cache stores them sorted); others follow by name
ORDER = ["accuracy", "exact_match", "f1", "perplexity", "rouge_l", "bleu", "ttft_ms", "latency_p50_ms",
         "latency_p90_ms", "tokens_per_s", "peak_mb", "size_mb"]


def is_comparison(metrics: dict[str, Any]) -> bool:
    """Whether a node's metrics have the evaluate shape `{"before": {...}, "after": {...}}`."""
    return isinstance(metrics.get("after"), dict) and isinstance(metrics.get("before", {}), dict)


def comparison(metrics: dict[str, Any]) -> list[tuple[str, float | None, float | None, str]]:
    """(metric, before, after, change) per metric; change reads `+0.05 (+6.2%) better`."""
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    rows = []
    names = sorted({*after, *before}, key=_order)
    for name in names:
        old, new = before.get(name), after.get(name)
        rows.append((name, old, new, change_text(name, old, new)))
    return rows


def change_text(name: str, old: float | None, new: float | None) -> str:
    if old is None or new is None:
        return ""
    delta = new - old
    if delta == 0:
        return "same"
    pct = f" ({delta / abs(old) * 100:+.1f}%)" if old else ""
    better = (delta < 0) if lower_is_better(name) else (delta > 0)
    return f"{delta:+.4g}{pct} {'better' if better else 'worse'}"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def load_run(out_dir: Path) -> dict[str, Any]:
    """run.json of an output folder.

    Raises:
        SlimopsError: there is no readable run.json there, or it is not shaped as a run writes it
            (each message names the first wrong key).
    """
    path = Path(out_dir) / "run.json"
    try:
        body = json.loads(path.read_text())
    except OSError:
        raise SlimopsError(f"no run.json in {out_dir}; run 'slimops run --config FILE' first, or give the output folder") from None
    except ValueError as err:
        raise SlimopsError(f"{path} is not valid JSON ({err}); rerun the pipeline to rewrite it") from None
    if not isinstance(body, dict):
        raise SlimopsError(f"{path} holds {_JSON_TYPES.get(type(body), type(body).__name__)}, not the object a run writes; "
                           "rerun the pipeline to rewrite it")
    try:
        return RunRecord.model_validate(body).model_dump()
    except ValidationError as err:
        errors = err.errors()
        missing = [".".join(str(part) for part in e["loc"]) for e in errors if e["type"] == "missing"]
        first = errors[0]
        what = "should be an object" if first["type"] in ("model_type", "dict_type") else first["msg"].removeprefix("Value error, ").lower()
        problem = f"missing {', '.join(missing)}" if missing else f"{'.'.join(str(part) for part in first['loc'])}: {what}"
        others = len(errors) - (len(missing) or 1)
        more = f" (and {others} more)" if others else ""
        raise SlimopsError(f"{path} is not a run record: {problem}{more}; rerun the pipeline to rewrite it") from None


_JSON_TYPES = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true or false", type(None): "null"}


def _numbers_in(values: dict[str, Any]) -> bool:
    """Each value a number (or None), or a mapping of the same: a baseline's own before/after nests."""
    return all(v is None or isinstance(v, (int, float)) or (isinstance(v, dict) and _numbers_in(v)) for v in values.values())


class RunNode(BaseModel):
    """What the report reads of one node in run.json (the scheduler writes more; it passes through)."""

    model_config = ConfigDict(extra="allow")

    pass_name: str = ""
    target: str | None = None
    key: str = ""
    cached: bool = False
    path: str = ""
    seconds: float = 0
    inputs: list[str] = []
    metrics: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    goals: list[dict[str, Any]] = []

    @field_validator("metrics")
    @classmethod
    def _numbers(cls, metrics: dict[str, Any]) -> dict[str, Any]:
        for part in ("before", "after", "reference"):
            values = metrics.get(part)
            if isinstance(values, dict) and not _numbers_in(values):
                raise ValueError(f"metrics.{part} should map each metric to a number")
        return metrics

    @field_validator("meta")
    @classmethod
    def _read_parts(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """The parts of meta the report reads, in the shapes it reads them (the rest passes through)."""
        intervals = meta.get("intervals")
        if intervals is not None and not (isinstance(intervals, dict) and all(isinstance(v, dict) for v in intervals.values())):
            raise ValueError("meta.intervals should map before/after/reference to each metric's interval")
        for key, shape, what in (("interval_methods", dict, "an object"), ("role", str, "text"), ("data", str, "text"),
                                 ("split", str, "text")):
            if meta.get(key) is not None and not isinstance(meta[key], shape):
                raise ValueError(f"meta.{key} should be {what}")
        return meta

    @field_validator("goals")
    @classmethod
    def _goals(cls, goals: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not all(isinstance(g.get("metric"), str) and isinstance(g.get("rule"), str) for g in goals):
            raise ValueError("each goal should have a metric and a rule")
        return goals


class RunRecord(BaseModel):
    """What the report reads of run.json."""

    model_config = ConfigDict(extra="allow")

    name: str
    status: str
    nodes: dict[str, RunNode]
    seconds: float = 0
    config: str | None = None
    overrides: dict[str, Any] | None = None
    error: str | None = None


def write_report(out_dir: Path, samples: int = SAMPLES) -> tuple[Path, Path]:
    """Render report.md, report.html and their charts from `out_dir/run.json`.

    Args:
        out_dir: the output folder that holds run.json.
        samples: examples the sample table shows per data set and split; 0 leaves it out.

    Returns:
        the paths of report.md and report.html.
    """
    out_dir = Path(out_dir)
    run = load_run(out_dir)
    nodes: dict[str, dict[str, Any]] = run.get("nodes", {})
    evaluations = {nid: n for nid, n in nodes.items() if n.get("metrics") and is_comparison(n["metrics"])}
    charts = {nid: metric_chart(out_dir, nid, [(m, b, a) for m, b, a, _ in comparison(n["metrics"]) if a is not None])
              for nid, n in evaluations.items()}
    overview = comparison_chart(out_dir, _models(nodes, evaluations))
    tables = sample_tables(out_dir, nodes, samples)
    images = _pass_images(out_dir, nodes)
    config_text, config_hash = _config(run.get("config"))

    md = _markdown(run, nodes, evaluations, charts, overview, tables, images, config_text, config_hash, out_dir)
    page = _html(run, nodes, evaluations, charts, overview, tables, images, config_text, config_hash, out_dir)
    md_path, html_path = out_dir / REPORT_MD, out_dir / REPORT_HTML
    for path, text in ((md_path, md), (html_path, page)):  # whole or not at all: a kill leaves the last report
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return md_path, html_path


def _models(nodes: dict[str, dict], evaluations: dict[str, dict]) -> list[tuple[str, dict, dict]]:
    """(label, metrics, intervals) of every evaluated model: the input model's and each evaluation's "after"."""
    models = []
    repeated = repeated_baselines(nodes)
    for node_id, node in nodes.items():
        intervals = (node.get("meta") or {}).get("intervals") or {}
        if node_id in repeated:
            continue
        if node.get("meta", {}).get("role") == "before":
            models.append((model_label(node_id, node), node.get("metrics") or {}, intervals.get("after") or {}))
        elif node_id in evaluations:
            models.append((node_id, node["metrics"]["after"], intervals.get("after") or {}))
    return models


def _trials(out_dir: Path) -> tuple[list[str], list[list[str]]] | None:
    """The trials table when this folder holds a search's trials.json."""
    try:
        body = json.loads((out_dir / TRIALS_JSON).read_text())
    except (OSError, ValueError):
        return None
    return trials_rows(body)


def _config(path_text: str | None) -> tuple[str | None, str | None]:
    """The config's text and a label: its sha256, and the git commit of its folder when it has one."""
    if not path_text:
        return None, None
    try:
        text = Path(path_text).read_text()
    except OSError:
        return None, None
    label = f"sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]}"
    commit = _commit(Path(path_text).parent)
    return text, f"{label}, commit {commit}" if commit else label


def _commit(folder: Path) -> str | None:
    import subprocess

    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _pass_images(out_dir: Path, nodes: dict[str, dict]) -> dict[str, list[str]]:
    """PNG files inside each node's output (loss curves from fine-tuning), relative to out_dir."""
    found: dict[str, list[str]] = {}
    for node_id, node in nodes.items():
        folder = node_folder(out_dir, node)  # never list files outside the output folder
        if node.get("pass_name") == "model" or folder is None:
            continue
        pngs = sorted(folder.rglob("*.png"))[:8]
        if pngs:
            found[node_id] = [os.path.relpath(p, out_dir) for p in pngs]
    return found


def _plan_rows(nodes: dict[str, dict]) -> list[list[str]]:
    rows = []
    for node_id, node in nodes.items():
        status = "input" if node.get("pass_name") == "model" else ("hit" if node.get("cached") else "ran")
        rows.append([node_id, node.get("pass_name", ""), node.get("target") or "-", ", ".join(node.get("inputs", [])) or "-",
                     status, f"{node.get('seconds', 0):.2f}", node.get("key", "")[:12]])
    return rows


PLAN_HEAD = ["node", "pass", "target", "inputs", "cache", "seconds", "key"]
METRIC_HEAD = ["metric", "before", "after", "change"]
GOAL_HEAD = ["metric", "goal", "status", "n", "before", "after", "interval", "limit", "test", "note"]
# how meta.interval_methods names the way each 95% interval was computed
METHODS = {"wilson": "Wilson score", "bootstrap": "percentile bootstrap over examples",
           "runs": "2.5th to 97.5th percentile over the latency runs", "stderr": "value ± 1.96 × lm-eval's standard error"}


def with_interval(value: Any, interval: Any = None) -> str:
    """`0.917 [0.819, 0.964]`: a value and its 95% interval, or the value alone when there is none."""
    span = interval_text(interval)
    return f"{fmt(value)} {span}" if value is not None and span else fmt(value)


def interval_text(interval: Any) -> str | None:
    """`[lo, hi]` of a two-number list (as run.json holds intervals), else None."""
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(isinstance(v, (int, float)) for v in interval):
        return f"[{fmt(interval[0])}, {fmt(interval[1])}]"
    return None


def interval_legend(methods: dict[str, str]) -> str:
    """The line under a table that names each interval's method; "" when there are none."""
    by_method: dict[str, list[str]] = {}
    for name in sorted(methods, key=_order):
        by_method.setdefault(methods[name], []).append(name)
    if not by_method:
        return ""
    return "[lo, hi]: 95% intervals; " + "; ".join(f"{METHODS.get(m, m)} ({', '.join(names)})" for m, names in by_method.items())


def metric_table(metrics: dict[str, Any], intervals: dict[str, Any] | None = None) -> tuple[list[str], list[list[str]]]:
    """(head, rows) of an evaluation, each value with its interval from meta.intervals when it has one;
    a `reference` evaluation gets its own column."""
    spans = {part: (intervals or {}).get(part) or {} for part in ("before", "after", "reference")}
    reference = metrics.get("reference")
    rows = [[m, with_interval(b, spans["before"].get(m)), with_interval(a, spans["after"].get(m)), c] for m, b, a, c in comparison(metrics)]
    if not isinstance(reference, dict):
        return METRIC_HEAD, rows
    return [*METRIC_HEAD, "reference"], [row + [with_interval(reference.get(row[0]), spans["reference"].get(row[0]))] for row in rows]


def goal_status(goal: dict[str, Any]) -> str:
    """"met", "missed" or "undecided" (a goal from before statuses existed: met or missed)."""
    status = goal.get("status")
    return status if status in ("met", "missed", "undecided") else ("met" if goal.get("ok") else "missed")


def goal_note(goal: dict[str, Any]) -> str:
    """Why a goal is not met, and about how many examples would decide an undecided one."""
    parts = [] if goal.get("ok") else [goal.get("why") or ""]
    if goal_status(goal) == "undecided" and isinstance(goal.get("needed"), int):
        parts.append(f"about {goal['needed']} examples would decide it")
    return "; ".join(part for part in parts if part)


def _goal_rows(node: dict) -> list[list[str]]:
    rows = []
    for goal in node.get("goals", []):
        status = goal_status(goal)
        shown = "MISSED" if status == "missed" else status
        if status != "met" and not goal.get("fatal", True):
            shown = f"{status} (warn)"
        rows.append([goal["metric"], goal["rule"], shown, fmt(goal.get("n")), fmt(goal.get("before")), fmt(goal.get("value")),
                     interval_text(goal.get("interval")) or "-", fmt(goal.get("limit")), goal.get("test") or "",
                     goal_note(goal)])
    return rows


def _order(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out + [""]


def _markdown(run, nodes, evaluations, charts, overview, tables, images, config_text, config_hash, out_dir) -> str:
    hits = sum(1 for n in nodes.values() if n.get("cached") and n.get("pass_name") != "model")
    ran = sum(1 for n in nodes.values() if not n.get("cached"))
    lines = [f"# slimops run: {run.get('name', '')}", ""]
    lines += [f"- status: **{run.get('status', '?')}**", f"- total: {run.get('seconds', 0):.1f} s; nodes run: {ran}, from cache: {hits}"]
    if run.get("config"):
        lines.append(f"- config: `{run['config']}`" + (f" ({config_hash})" if config_hash else ""))
    for key, value in (run.get("overrides") or {}).items():
        lines.append(f"- set: `{key}={json.dumps(value)}`")
    if run.get("error"):
        lines += ["", "```", run["error"], "```"]
    lines.append("")
    if evaluations:
        lines += ["## Before and after", ""]
        for node_id, node in evaluations.items():
            lines += [f"### {node_id}", ""]
            meta = node.get("meta") or {}
            lines += _md_table(*metric_table(node["metrics"], meta.get("intervals")))
            if legend := interval_legend(meta.get("interval_methods") or {}):
                lines += [f"_{legend}_", ""]
            if node.get("goals"):
                lines += ["Goals:", ""] + _md_table(GOAL_HEAD, _goal_rows(node))
            if charts.get(node_id):
                lines += [f"![{node_id} metrics]({charts[node_id]})", ""]
    if overview:
        lines += ["## Every model", "", f"![quality against latency]({overview})", ""]
    for table in tables:
        lines += [f"## Sample answers: {table.title}", "", table.caption, ""] + _md_table(table.head, table.rows)
    others = {nid: n for nid, n in nodes.items() if n.get("metrics") and nid not in evaluations and n.get("meta", {}).get("role") != "before"}
    if others:
        lines += ["## Other metrics", ""]
        lines += _md_table(["node", "metrics"], [[nid, ", ".join(f"{k}={fmt(v)}" for k, v in n["metrics"].items())] for nid, n in others.items()])
    trials = _trials(out_dir)
    if trials:
        head, rows = trials
        lines += ["## Search trials", "", "From the last search whose output folder this is (trials.json).", ""] + _md_table(head, rows)
    if images:
        lines += ["## Plots from passes", ""]
        for node_id, paths in images.items():
            lines += [f"![{node_id}]({p})" for p in paths] + [""]
    lines += ["## Plan", ""] + _md_table(PLAN_HEAD, _plan_rows(nodes))
    if config_text:
        lines += ["## Config", "", "```yaml", config_text.rstrip(), "```", ""]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]], css: str = "") -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{f' class={css}' if css else ''}><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#1f2933}"
    "table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #cbd2d9;padding:.25rem .6rem;text-align:left}"
    "th{background:#f0f4f8}img{max-width:100%}pre{background:#f5f7fa;padding:.8rem;overflow:auto}"
    ".goals td:last-child{min-width:14rem}.goals td{font-size:.9rem}"
)


def _html(run, nodes, evaluations, charts, overview, tables: list[SampleTable], images, config_text, config_hash, out_dir) -> str:
    esc = html.escape
    hits = sum(1 for n in nodes.values() if n.get("cached") and n.get("pass_name") != "model")
    ran = sum(1 for n in nodes.values() if not n.get("cached"))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>slimops run: {esc(run.get('name', ''))}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>slimops run: {esc(run.get('name', ''))}</h1>",
             f"<p>status: <b>{esc(run.get('status', '?'))}</b>; total {run.get('seconds', 0):.1f} s; nodes run: {ran}, from cache: {hits}"]
    if run.get("config"):
        parts.append(f"; config <code>{esc(run['config'])}</code>" + (f" ({esc(config_hash)})" if config_hash else ""))
    parts.append("</p>")
    if run.get("overrides"):
        parts.append("<p>set: " + ", ".join(f"<code>{esc(k)}={esc(json.dumps(v))}</code>" for k, v in run["overrides"].items()) + "</p>")
    if run.get("error"):
        parts.append(f"<pre>{esc(run['error'])}</pre>")
    if evaluations:
        parts.append("<h2>Before and after</h2>")
        for node_id, node in evaluations.items():
            parts.append(f"<h3>{esc(node_id)}</h3>")
            meta = node.get("meta") or {}
            parts.append(_html_table(*metric_table(node["metrics"], meta.get("intervals"))))
            if legend := interval_legend(meta.get("interval_methods") or {}):
                parts.append(f"<p><small>{esc(legend)}</small></p>")
            if node.get("goals"):
                parts.append("<p>Goals:</p>" + _html_table(GOAL_HEAD, _goal_rows(node), "goals"))
            if charts.get(node_id):
                parts.append(f"<img src='{esc(charts[node_id])}' alt='{esc(node_id)} metrics'>")
    if overview:
        parts.append(f"<h2>Every model</h2><img src='{esc(overview)}' alt='quality against latency'>")
    for table in tables:
        parts.append(f"<h2>Sample answers: {esc(table.title)}</h2><p>{esc(table.caption)}</p>" + _html_table(table.head, table.rows))
    trials = _trials(out_dir)
    if trials:
        parts.append("<h2>Search trials</h2>" + _html_table(*trials))
    if images:
        parts.append("<h2>Plots from passes</h2>")
        for node_id, paths in images.items():
            parts += [f"<figure><img src='{esc(p)}' alt='{esc(node_id)}'><figcaption>{esc(node_id)}: {esc(p)}</figcaption></figure>" for p in paths]
    parts.append("<h2>Plan</h2>" + _html_table(PLAN_HEAD, _plan_rows(nodes)))
    if config_text:
        parts.append(f"<h2>Config</h2><pre>{esc(config_text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def trials_rows(body: dict) -> tuple[list[str], list[list[str]]]:
    """The trials table (head, rows) from trials.json, for the CLI and the report."""
    trials = body.get("trials", [])
    params = list(trials[0]["params"]) if trials else []
    head = ["trial", "", *(p.split(".", 2)[2] for p in params), *(o["metric"] for o in body.get("objectives", [])), "status", "seconds", "hits"]
    rows = []
    for t in trials:
        mark = "best" if t["number"] == body.get("best") else ("pareto" if t["number"] in body.get("pareto", []) else "")
        rows.append([str(t["number"]), mark, *(fmt(t["params"][p]) for p in params), *(fmt(v) for v in t["values"]),
                     t["status"], f"{t['seconds']:.1f}", str(t["hits"])])
    return head, rows
