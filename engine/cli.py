"""The `slimops` command: a thin layer over the Python API.

    slimops run      --config F [--set k=v]   run a pipeline
    slimops validate --config F               check a pipeline file, run nothing
    slimops plan     --config F [--explain]   show the DAG, keys, what is cached and why not
    slimops cache    ls|show|verify|gc|clear  manage the cache
    slimops report   DIR                      render report.md/report.html again from DIR/run.json
    slimops passes | targets | schema | init  list passes, targets; write the schema; copy a template
    slimops doctor                            check this environment before a long run

Errors print as one message without a traceback (`--debug` shows it): exit 2 for config, plan,
data and model errors, 1 for a failed pass or cache error, 3 when an evaluation missed a goal
(every node is cached then), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from slimops.errors import SlimopsError


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the pipeline YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, e.g. --set passes.finetune.r=8 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimops", description="Adapt small language models and ship them to devices.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"slimops {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a pipeline")
    _add_config(p)
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary")
    p.add_argument("--no-search", action="store_true", help="with a search: block, run the pipeline once as written")

    p = sub.add_parser("validate", help="check a pipeline file; runs nothing")
    _add_config(p)

    p = sub.add_parser("plan", help="show the plan: nodes, keys, cached or not")
    _add_config(p)
    p.add_argument("--explain", action="store_true", help="say which field differs from the nearest cached entry")

    p = sub.add_parser("cache", help="manage the cache")
    p.add_argument("action", choices=["ls", "show", "verify", "gc", "clear"])
    p.add_argument("key", nargs="?", help="key prefix, for show")
    p.add_argument("--config", "-c", help="take the cache folder from this pipeline file")
    p.add_argument("--cache-dir", help="the cache folder (default .slimops/cache)")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="gc: also drop entries unused this long")
    p.add_argument("--yes", action="store_true", help="clear: do not ask")

    p = sub.add_parser("report", help="render report.md and report.html again from an output folder's run.json")
    p.add_argument("dir", nargs="?", default="out", help="the output folder (default: out)")

    p = sub.add_parser("doctor", help="check this environment: packages each pass needs, providers, CPU, CUDA, disk")
    p.add_argument("--config", "-c", help="check the disk where this pipeline's cache lives")
    p.add_argument("--cache-dir", help="the cache folder (default .slimops/cache)")

    sub.add_parser("passes", help="list every pass with its params and kinds")
    sub.add_parser("targets", help="list target profiles and whether this machine runs them")

    p = sub.add_parser("schema", help="write the JSON Schema of pipeline files")
    p.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    p.add_argument("--markdown", action="store_true", help="write the config reference (docs/config.md) instead")

    p = sub.add_parser("init", help="list templates, or copy one into a folder")
    p.add_argument("template", nargs="?")
    p.add_argument("dir", nargs="?", default=".")
    p.add_argument("--force", action="store_true", help="overwrite existing files")

    from slimops import shortcuts_onnx

    shortcuts_onnx.add_parsers(sub)  # optimize, quantize, generate-adapter
    from slimops import shortcuts

    shortcuts.add_parser(sub)  # finetune
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except SlimopsError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted: nodes completed so far are cached; rerun to resume", file=sys.stderr)
        return 130


def _version() -> str:
    from slimops import __version__

    return __version__


def _console():
    from rich.console import Console

    return Console()


# -- commands ------------------------------------------------------------------------------------


def cmd_validate(args) -> int:
    from slimops.config import load_config

    t0 = time.perf_counter()
    config = load_config(args.config, args.overrides)
    print(f"{args.config}: ok ({len(config.passes)} passes, {len(config.spec.targets) or 1} targets) in {time.perf_counter() - t0:.2f}s")
    return 0


def cmd_plan(args) -> int:
    from slimops.config import load_config
    from slimops.planner import build_plan

    plan = build_plan(load_config(args.config, args.overrides))
    from rich.table import Table

    table = Table(title=f"plan: {plan.config.name}", box=None, header_style="bold")
    for column in ("node", "pass", "inputs", "key", "status"):
        table.add_column(column)
    for node in plan.order():
        cached = plan.cached(node)
        status = "[blue]cached[/]" if cached else "[yellow]will run[/]"
        if args.explain and not cached:
            status += f" ({plan.explain(node)})"
        table.add_row(node.id, node.pass_name, ", ".join(node.inputs) or "-", node.short, status)
    _console().print(table)
    return 0


def cmd_run(args) -> int:
    from slimops import run
    from slimops.display import RunDisplay

    from slimops.config import load_config
    from slimops.errors import GoalError

    config = load_config(args.config, args.overrides)
    if config.spec.search is not None and not args.no_search:
        return _run_search(config, args)
    try:
        result = run(config, display=RunDisplay(quiet=args.quiet))
    except GoalError as err:
        _print_summary(err.result)
        _print_goals(err.result)
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return err.exit_code
    _print_summary(result)
    _print_goals(result)
    return 0


def _run_search(config, args) -> int:
    from rich.table import Table

    from slimops.display import RunDisplay
    from slimops.search import TRIALS_JSON, run_search, trials_rows

    trials, result = run_search(config, args.overrides, RunDisplay(quiet=True), echo=lambda text: print(text, file=sys.stderr))
    head, rows = trials_rows(json.loads((config.output_dir / TRIALS_JSON).read_text()))
    table = Table(title="trials", box=None, header_style="bold")
    for column in head:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    _console().print(table)
    best = next(t for t in trials if t.best)
    print(f"best: trial {best.number} ({', '.join(f'{k}={v}' for k, v in best.params.items())}); its artifacts are in {result.output_dir}", file=sys.stderr)
    _print_summary(result)
    _print_goals(result)
    if best.goals_missed:
        from slimops.errors import GoalError

        print("error: no trial met every goal; the best one missed those above", file=sys.stderr)
        return GoalError.exit_code
    return 0


def _print_summary(result) -> None:
    hits = sum(node.cached for node in result.nodes.values())
    print(f"{result.name}: {len(result.nodes)} nodes, {hits} from cache, {result.seconds:.1f}s; outputs in {result.output_dir}", file=sys.stderr)
    _print_metrics(result)
    if (result.output_dir / "report.html").exists():
        print(f"report: {result.output_dir / 'report.html'}", file=sys.stderr)


def _print_metrics(result) -> None:
    from slimops.report import comparison, fmt, is_comparison

    rows = [(node_id, node) for node_id, node in result.nodes.items() if node.metrics and node.meta.get("role") != "before"]
    if not rows:
        return
    from rich.table import Table

    compared = [(node_id, node) for node_id, node in rows if is_comparison(node.metrics)]
    if compared:
        table = Table(title="before / after", box=None, header_style="bold")
        referenced = any(isinstance(node.metrics.get("reference"), dict) for _, node in compared)
        for column in ("node", "metric", "before", "after", "change", *(["reference"] if referenced else [])):
            table.add_column(column, justify="right" if column in ("before", "after", "reference") else "left")
        for node_id, node in compared:
            reference = node.metrics.get("reference")
            for index, (name, old, new, change) in enumerate(comparison(node.metrics)):
                colour = "green" if change.endswith("better") else ("red" if change.endswith("worse") else "")
                cells = [node_id if index == 0 else "", name, fmt(old), fmt(new), f"[{colour}]{change}[/]" if colour else change]
                if referenced:
                    cells.append(fmt(reference.get(name)) + (f" ({node.meta.get('reference')})" if index == 0 else "")
                                 if isinstance(reference, dict) else "")
                table.add_row(*cells)
        _console().print(table)
    plain = [(node_id, node) for node_id, node in rows if not is_comparison(node.metrics)]
    if plain:
        table = Table(title="metrics", box=None, header_style="bold")
        table.add_column("node")
        table.add_column("metrics")
        for node_id, node in plain:
            table.add_row(node_id, ", ".join(f"{k}={_fmt(v)}" for k, v in node.metrics.items()))
        _console().print(table)


def _print_goals(result) -> None:
    """A table of goals that were missed (fatal ones fail the run; `on_miss: warn` ones only show)."""
    missed = [(node_id, goal) for node_id, node in result.nodes.items() for goal in node.goals if not goal.get("ok")]
    if not missed:
        return
    from rich.table import Table

    from slimops.report import fmt

    table = Table(title="goals missed", box=None, header_style="bold")
    for column in ("node", "metric", "goal", "before", "after", "why", "on miss"):
        table.add_column(column)
    for node_id, goal in missed:
        table.add_row(node_id, goal["metric"], goal["rule"], fmt(goal.get("before")), fmt(goal.get("value")), goal.get("why", ""),
                      "[red]fail[/]" if goal.get("fatal", True) else "[yellow]warn[/]")
    _console().print(table)


def cmd_report(args) -> int:
    from slimops.report import write_report

    md, page = write_report(Path(args.dir))
    print(f"wrote {md}\nwrote {page}")
    return 0


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def _cache_for(args):
    from slimops.cache import Cache

    if args.cache_dir:
        return Cache(Path(args.cache_dir).resolve())
    if args.config:
        from slimops.config import load_config

        return Cache(load_config(args.config).cache_dir)
    return Cache(Path(".slimops/cache").resolve())


def cmd_cache(args) -> int:
    cache = _cache_for(args)
    if args.action == "ls":
        from rich.table import Table

        table = Table(title=f"cache: {cache.root}", box=None, header_style="bold")
        for column in ("key", "node", "pass", "kind", "size", "seconds", "created"):
            table.add_column(column)
        total = 0
        for entry in cache.entries():
            m = entry.manifest
            total += m.get("size_bytes", 0)
            table.add_row(entry.key[:12], m.get("node", ""), m.get("pass", ""), m["artifact"]["kind"],
                          _size(m.get("size_bytes", 0)), f"{m.get('seconds', 0):.1f}", m.get("created", ""))
        _console().print(table)
        print(f"{len(cache.entries())} entries, {_size(total)}")
    elif args.action == "show":
        if not args.key:
            raise SlimopsError("cache show needs a key prefix (see 'slimops cache ls')")
        entry = cache.find(args.key)
        print(json.dumps(entry.manifest, indent=2))
    elif args.action == "verify":
        problems = cache.verify()
        for problem in problems:
            print(problem)
        print(f"{len(cache.entries())} entries checked, {len(problems)} problems")
        return 1 if problems else 0
    elif args.action == "gc":
        removed = cache.gc(args.older_than)
        print(f"removed {removed['tmp']} temporary folders, {removed['work']} checkpoint folders, {removed['entries']} entries")
    elif args.action == "clear":
        if not args.yes and sys.stdin.isatty():
            answer = input(f"remove every entry under {cache.root}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing removed")
                return 0
        print(f"removed {cache.clear()} entries")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def cmd_passes(args) -> int:
    from rich.table import Table

    from slimops.registry import Registry

    table = Table(title="passes", box=None, header_style="bold", show_lines=False)
    for column in ("type", "consumes", "produces", "per target", "params"):
        table.add_column(column)
    for name, cls in Registry(Path.cwd()).all().items():
        params = ", ".join(
            f"{field}={info.default!r}" if not info.is_required() else f"{field} (required)"
            for field, info in cls.Params.model_fields.items()
        )
        consumes = "any" if cls.consumes is None else (", ".join(cls.consumes) or "nothing")
        table.add_row(name, consumes, cls.produces or "(its input's)", "yes" if cls.per_target else "no", params)
    _console().print(table)
    return 0


def cmd_targets(args) -> int:
    from rich.table import Table

    from slimops.targets import BUILTIN_DESCRIPTIONS, builtin, machine_support

    table = Table(title="target profiles", box=None, header_style="bold")
    for column in ("name", "device", "providers", "precision", "runs here", "what"):
        table.add_column(column)
    for name, text in BUILTIN_DESCRIPTIONS.items():
        profile = builtin(name)
        ok, why = machine_support(profile)
        table.add_row(name, profile.device, ", ".join(profile.execution_providers), profile.precision,
                      "[green]yes[/]" if ok else f"[red]no[/]: {why}", text)
    _console().print(table)
    return 0


def cmd_schema(args) -> int:
    from slimops.schema import config_reference, schema_text

    text = config_reference() if args.markdown else schema_text()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    return 0


def cmd_doctor(args) -> int:
    from slimops.doctor import FAIL, diagnose, report

    if args.cache_dir:
        cache_dir = Path(args.cache_dir)
    elif args.config:
        from slimops.config import load_config

        cache_dir = load_config(args.config).cache_dir
    else:
        cache_dir = Path(".slimops/cache")
    checks = diagnose(cache_dir)
    print(report(checks))
    return 1 if any(c.state == FAIL for c in checks) else 0


def cmd_init(args) -> int:
    from slimops.templates import copy_template, templates

    if not args.template:
        for name, about in templates().items():
            print(f"{name:24} {about}")
        print("\ncopy one: slimops init TEMPLATE [DIR]")
        return 0
    written = copy_template(args.template, Path(args.dir), args.force)
    for path in written:
        print(f"wrote {path}")
    print(f"next: slimops run --config {written[0]}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "cache": cmd_cache,
    "report": cmd_report,
    "passes": cmd_passes,
    "targets": cmd_targets,
    "schema": cmd_schema,
    "init": cmd_init,
    "doctor": cmd_doctor,
    "optimize": lambda args: _shortcut(args),
    "quantize": lambda args: _shortcut(args),
    "generate-adapter": lambda args: _shortcut(args),
    "finetune": lambda args: _finetune(args),
}


def _finetune(args) -> int:
    from slimops.shortcuts import cmd_finetune

    return cmd_finetune(args)


def _shortcut(args) -> int:
    from slimops.shortcuts_onnx import COMMANDS as SHORTCUTS

    return SHORTCUTS[args.command](args)


def entry() -> None:
    """The `slimops` command: `main`, then `leave`."""
    leave(main())


def leave(code: int) -> NoReturn:
    """Exit with `code` without tearing the interpreter down.

    Tearing down costs about 0.08 s after a cached run and over a second once torch is loaded;
    everything slimops writes is closed by now, and the exit handlers (logging's among them) run
    and the standard streams are flushed before the process leaves.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
