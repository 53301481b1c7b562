"""What the commands print after a run: the summary line, each node's metrics, the goals table,
and a search's trials table; shared by `slimops run` and the shortcut commands.
"""

from __future__ import annotations

import json
import sys


def console():
    from rich.console import Console

    return Console()


def show_search(config, overrides: list[str]) -> int:
    """Run a pipeline's search, print its trials and the best trial's results; the exit code."""
    from rich.markup import escape
    from rich.table import Table

    from slimops.display import RunDisplay
    from slimops.report import TRIALS_JSON, trials_rows
    from slimops.search import run_search

    trials, result = run_search(config, overrides, RunDisplay(quiet=True), echo=lambda text: print(text, file=sys.stderr))
    head, rows = trials_rows(json.loads((config.output_dir / TRIALS_JSON).read_text()))
    table = Table(title="trials", box=None, header_style="bold")
    for column in head:
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))  # search values are the user's text, not rich markup
    console().print(table)
    best = next(t for t in trials if t.best)
    print(f"best: trial {best.number} ({', '.join(f'{k}={v}' for k, v in best.params.items())}); its artifacts are in {result.output_dir}", file=sys.stderr)
    print_summary(result)
    print_goals(result)
    if best.goals_missed:
        from slimops.errors import GoalError

        print("error: no trial met every goal; the best one missed those above", file=sys.stderr)
        return GoalError.exit_code
    return 0


def print_summary(result) -> None:
    hits = sum(node.cached for node in result.nodes.values())
    print(f"{result.name}: {len(result.nodes)} nodes, {hits} from cache, {result.seconds:.1f}s; outputs in {result.output_dir}", file=sys.stderr)
    print_metrics(result)
    if (result.output_dir / "report.html").exists():
        print(f"report: {result.output_dir / 'report.html'}", file=sys.stderr)


def print_metrics(result) -> None:
    from slimops.report import comparison, interval_legend, is_comparison, with_interval

    rows = [(node_id, node) for node_id, node in result.nodes.items() if node.metrics and node.meta.get("role") != "before"]
    if not rows:
        return
    from rich.markup import escape
    from rich.table import Table

    compared = [(node_id, node) for node_id, node in rows if is_comparison(node.metrics)]
    if compared:
        table = Table(title="before / after", box=None, header_style="bold")
        referenced = any(isinstance(node.metrics.get("reference"), dict) for _, node in compared)
        for column in ("node", "metric", "before", "after", "change", *(["reference"] if referenced else [])):
            table.add_column(column, justify="right" if column in ("before", "after", "reference") else "left", no_wrap=column == "metric")
        methods: dict[str, str] = {}
        for node_id, node in compared:
            reference = node.metrics.get("reference")
            spans = {part: (node.meta.get("intervals") or {}).get(part) or {} for part in ("before", "after", "reference")}
            methods.update(node.meta.get("interval_methods") or {})
            for index, (name, old, new, change) in enumerate(comparison(node.metrics)):
                colour = "green" if change.endswith("better") else ("red" if change.endswith("worse") else "")
                cells = [node_id if index == 0 else "", name, escape(with_interval(old, spans["before"].get(name))),
                         escape(with_interval(new, spans["after"].get(name))), f"[{colour}]{change}[/]" if colour else change]
                if referenced:
                    cells.append(escape(with_interval(reference.get(name), spans["reference"].get(name)))
                                 + (f" ({node.meta.get('reference')})" if index == 0 else "") if isinstance(reference, dict) else "")
                table.add_row(*cells)
        console().print(table)
        if legend := interval_legend(methods):
            console().print(legend, markup=False)
    plain = [(node_id, node) for node_id, node in rows if not is_comparison(node.metrics)]
    if plain:
        table = Table(title="metrics", box=None, header_style="bold")
        table.add_column("node")
        table.add_column("metrics")
        for node_id, node in plain:
            table.add_row(escape(node_id), escape(", ".join(f"{k}={_fmt(v)}" for k, v in node.metrics.items())))
        console().print(table)


def print_goals(result) -> None:
    """The goals not met, two or three lines each: missed ones and undecided ones (too few examples
    to tell), each saying whether it fails the run (`on_miss`/`on_undecided: fail`) or only warns."""
    from slimops.report import fmt, goal_note, goal_status, interval_text

    unmet = [(node_id, goal) for node_id, node in result.nodes.items() for goal in node.goals if not goal.get("ok")]
    if not unmet:
        return
    from rich.markup import escape

    statuses = {goal_status(goal) for _, goal in unmet}
    lines = ["[bold]goals " + (" or ".join(word for word in ("missed", "undecided") if word in statuses) or "missed") + "[/]"]
    for node_id, goal in unmet:
        outcome = "[red]fails the run[/]" if goal.get("fatal", True) else "[yellow]warns[/]"
        lines.append(f"  {escape(node_id)}  {escape(goal['metric'])} {escape(goal['rule'])}: {goal_status(goal)}, {outcome}")
        compared = "reference" if "reference" in goal["rule"] else "before"
        facts = [f"{fmt(goal.get('value'))} ({compared} {fmt(goal.get('before'))})"]
        if goal.get("n") is not None:
            facts.append(f"n={goal['n']}")
        if span := interval_text(goal.get("interval")):
            facts.append(f"interval {span} vs limit {fmt(goal.get('limit'))}" + (f" ({goal['test']})" if goal.get("test") else ""))
        lines.append("    " + escape(", ".join(facts)))
        if note := goal_note(goal):
            lines.append("    " + escape(note))
    console().print("\n".join(lines))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)
