"""The `slimops` subcommands that work on a pipeline file, the cache or the installation.

Each `cmd_NAME(args)` takes the parsed arguments and returns an exit code; heavy modules are
imported inside, so `slimops validate` stays fast.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from slimops.errors import SlimopsError
from slimops.cli.olive import announce
from slimops.cli.results import console, print_goals, print_summary, show_search


def cmd_validate(args) -> int:
    """Every check `plan` and `run` make before anything runs (the same code: `build_plan`), no keys."""
    from slimops.config import load_config
    from slimops.planner import build_plan

    t0 = time.perf_counter()
    config = load_config(args.config, args.overrides)
    announce(config, args.config)
    plan = build_plan(config, keys=False)
    show_warnings(plan.warnings)
    print(f"{args.config}: ok ({len(config.passes)} passes, {len(config.spec.targets) or 1} targets) in {time.perf_counter() - t0:.2f}s")
    return 0


def show_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def cmd_plan(args) -> int:
    from slimops.config import load_config
    from slimops.planner import build_plan

    config = load_config(args.config, args.overrides)
    announce(config, args.config)
    plan = build_plan(config)
    show_warnings(plan.warnings)
    if args.json:
        rows = [{"id": node.id, "pass": node.pass_name, "inputs": list(node.inputs), "key": node.key,
                 "status": "cached" if plan.cached(node) else "will run", "target": node.target_name}
                for node in plan.order()]
        print(json.dumps(rows, indent=2))
        return 0
    from rich.markup import escape
    from rich.table import Table

    # names and values are the user's text: '[/x]' or '[INST]' in them is not rich markup
    table = Table(title=f"plan: {escape(plan.config.name)}", box=None, header_style="bold")
    for column in ("node", "pass", "inputs", "key", "status"):
        table.add_column(column)
    for node in plan.order():
        cached = plan.cached(node)
        status = "[blue]cached[/]" if cached else "[yellow]will run[/]"
        if args.explain and not cached:
            status += f" ({escape(plan.explain(node))})"
        table.add_row(escape(node.id), escape(node.pass_name), escape(", ".join(node.inputs)) or "-", node.short, status)
    console().print(table)
    return 0


def cmd_run(args) -> int:
    from slimops import run
    from slimops.display import RunDisplay

    from slimops.config import load_config
    from slimops.errors import GoalError

    config = load_config(args.config, args.overrides)
    announce(config, args.config)
    if config.spec.search is not None and not args.no_search:
        return show_search(config, args.overrides)
    try:
        result = run(config, display=RunDisplay(quiet=args.quiet))
    except GoalError as err:
        print_summary(err.result)
        print_goals(err.result)
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return err.exit_code
    print_summary(result)
    print_goals(result)
    return 0


def cmd_report(args) -> int:
    from slimops.report import write_report

    md, page = write_report(Path(args.dir), samples=args.samples)
    print(f"wrote {md}\nwrote {page}")
    return 0


def _cache_for(args):
    """The cache `--cache-dir` names (a folder or a URL), else the pipeline's, else ./.slimops/cache."""
    from slimops.storage import cache_of, is_url, open_cache

    if args.cache_dir:
        return open_cache(args.cache_dir if is_url(args.cache_dir) else Path(args.cache_dir).resolve())
    if args.config:
        from slimops.config import load_config

        return cache_of(load_config(args.config))
    return open_cache(Path(".slimops/cache").resolve())


def cmd_cache(args) -> int:
    if args.key and args.action != "show":
        raise SlimopsError(f"cache {args.action} takes no key ('{args.key}'); to see one entry: slimops cache show KEY")
    from slimops.cache import Cache

    cache = _cache_for(args)
    missing = type(cache) is Cache and not cache.root.is_dir()  # a remote cache lists its bucket
    if missing and (args.action == "verify" or args.action == "ls" and not args.json):  # scripts get [] from ls --json
        # 0 entries would read as an empty cache, and a mistyped --cache-dir as a clean verify
        raise SlimopsError(f"no cache at {cache.root}{' (a file)' if cache.root.exists() else ''}; give the cache folder with "
                           "--cache-dir, or --config with the pipeline whose cache it is")
    if args.action == "ls" and args.json:
        print(json.dumps([{"key": e.key, "node": e.manifest.get("node"), "pass": e.manifest.get("pass"),
                           "kind": e.manifest.get("artifact", {}).get("kind"), "size_bytes": e.manifest.get("size_bytes"),
                           "seconds": e.manifest.get("seconds"), "created": e.manifest.get("created")}
                          for e in cache.entries()], indent=2))
    elif args.action == "ls":
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=f"cache: {escape(str(cache.location))}", box=None, header_style="bold")
        for column in ("key", "node", "pass", "kind", "size", "seconds", "created"):
            table.add_column(column)
        total = 0
        for entry in cache.entries():
            m = entry.manifest
            total += m.get("size_bytes", 0)
            table.add_row(entry.key[:12], escape(str(m.get("node", ""))), escape(str(m.get("pass", ""))), escape(str(m["artifact"]["kind"])),
                          _size(m.get("size_bytes", 0)), f"{m.get('seconds', 0):.1f}", m.get("created", ""))
        console().print(table)
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
        print(f"removed {removed['tmp']} temporary folders, {removed['work']} checkpoint folders, {removed['entries']} unused entries, {removed['damaged']} damaged entries")
    elif args.action == "clear":
        if not args.yes:
            if not sys.stdin.isatty():
                print(f"error: cache clear removes every entry under {cache.location}; without a terminal to ask, "
                      "pass --yes", file=sys.stderr)
                return 2
            answer = input(f"remove every entry under {cache.location}? [y/N] ")
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
    """Every pass with its kinds and params; those that cannot be loaded are listed with why, exit 1."""
    from rich.markup import escape
    from rich.table import Table

    from slimops.registry import Registry, describe

    def short(value) -> str:  # a nested model's defaults in full are for --json
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."

    found, broken = Registry(Path.cwd()).all()
    passes = [describe(name, cls) for name, cls in found.items()]
    if getattr(args, "json", False):
        print(json.dumps({"passes": passes, "broken": [{"name": n, "error": why} for n, why in broken.items()]}, indent=2))
        return 1 if broken else 0
    table = Table(title="passes", box=None, header_style="bold", show_lines=False)
    for column in ("type", "consumes", "produces", "per target", "params"):
        table.add_column(column)
    for entry in passes:
        params = ", ".join(f"{p['name']} (required)" if p["required"] else f"{p['name']}={short(p['default'])}"
                           for p in entry["params"])
        consumes = "any" if entry["consumes"] is None else (", ".join(entry["consumes"]) or "nothing")
        table.add_row(entry["name"], consumes, entry["produces"] or "(its input's)", "yes" if entry["per_target"] else "no", escape(params))
    console().print(table)
    if broken:
        print("\ncould not load:")
        for name, why in broken.items():
            print(f"  {name}: {why}")
        print(f"error: {len(broken)} pass{'es' if len(broken) > 1 else ''} could not be loaded (listed above)", file=sys.stderr)
    return 1 if broken else 0


def cmd_targets(args) -> int:
    from rich.table import Table

    from slimops.targets import BUILTIN, about, builtin, machine_support

    if args.json:
        rows = []
        for name in BUILTIN:
            profile = builtin(name)
            ok, why = machine_support(profile)
            rows.append({"name": name, "about": about(name), **profile.model_dump(exclude={"extends"}),
                         "execution_providers": profile.execution_providers, "runs_here": ok, "why_not": None if ok else why})
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="target profiles", box=None, header_style="bold")
    for column in ("name", "device", "providers", "precision", "runs here", "what"):
        table.add_column(column)
    for name in BUILTIN:
        profile, text = builtin(name), about(name)
        ok, why = machine_support(profile)
        table.add_row(name, profile.device, ", ".join(profile.execution_providers), profile.precision,
                      "[green]yes[/]" if ok else f"[red]no[/]: {why}", text)
    console().print(table)
    return 0


def cmd_schema(args) -> int:
    from slimops.config.schema import config_reference, schema_text

    text = config_reference() if args.markdown else schema_text()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        if Path(args.output).is_dir():
            raise SlimopsError(f"{args.output} is a folder; give the file to write, e.g. {Path(args.output) / 'pipeline.schema.json'}")
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    return 0


def cmd_doctor(args) -> int:
    from slimops.doctor import FAIL, diagnose, report

    if args.cache_dir:
        from slimops.storage import default_local_dir, is_url

        cache_dir = default_local_dir(args.cache_dir) if is_url(args.cache_dir) else Path(args.cache_dir)
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
