"""What the shortcut commands (`finetune`, `optimize`, `quantize`, `generate-adapter`) share: the
search flags and `search:` block, flag errors, and the one flow that turns flags into a pipeline file
and runs it.

`run(command, args, pipeline_for)`: with `--emit-config` print the pipeline's YAML and stop;
otherwise write it to `<output_path>/pipeline.yaml`, run it (or its search), and print where the
result is. A failed run names that file, so the user edits and reruns it with `slimops run`; so a
file there that differs from the one this command writes is refused (another folder, or --force
where the command has it), while the same file is a rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from slimops.errors import ConfigError, Issue

STRATEGIES = ("grid", "random", "tpe")


def add_search_flags(p: argparse.ArgumentParser, search_help: str, trials_help: str, strategy_help: str):
    """`--search`, `--trials`, `--search_strategy`: shared by finetune, optimize and quantize.

    Returns:
        The "search" argument group, for a command's own search flags.
    """
    group = p.add_argument_group("search")
    group.add_argument("--search", action="store_true", help=search_help)
    group.add_argument("--trials", type=int, metavar="N", help=trials_help)
    group.add_argument("--search_strategy", choices=STRATEGIES, help=strategy_help)
    return group


def flag_error(command: str, flag: str, message: str) -> ConfigError:
    return ConfigError([Issue(f"slimops {command}", None, flag, message)])


def search_block(command: str, args, space: dict[str, Any], objectives: list[dict[str, str]], default_strategy: str,
                 default_trials: int | None) -> dict[str, Any]:
    """The `search:` block for `args` (the space with the knobs the user fixed left out).

    Raises:
        ConfigError: the flags fixed every knob of the space.
    """
    if not space:
        raise flag_error(command, "--search", "every knob it would search is fixed by a flag; drop one of them or drop --search")
    block: dict[str, Any] = {"space": space, "strategy": args.search_strategy or default_strategy}
    if args.trials or default_trials:
        block["trials"] = args.trials or default_trials
    block["objectives"] = objectives
    return block


def check_search_flags(command: str, args) -> None:
    """--trials and --search_strategy only mean something with --search."""
    if args.trials is not None and args.trials < 1:
        raise flag_error(command, "--trials", f"give at least 1 trial (got {args.trials})")
    if not args.search:
        for flag, value in (("--trials", args.trials), ("--search_strategy", args.search_strategy)):
            if value is not None:
                raise flag_error(command, flag, "goes with --search; add --search to run trials")


def local_path(text: str, absolute: bool) -> str:
    path = Path(text).expanduser()
    return str(path.resolve()) if absolute and path.exists() else text




class _Dumper(yaml.SafeDumper):
    """Multi-line strings (prompt templates) as YAML blocks, so the written file reads as typed."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def pipeline_yaml(pipeline: dict[str, Any], command: str) -> str:
    head = f"# Written by 'slimops {command}'; edit it and run it with 'slimops run --config FILE'.\n"
    return head + yaml.dump(pipeline, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _may_write(config: Path, text: str, args) -> bool:
    """Whether to write `text` to `config`: yes where there is none; no where it holds `text` already
    (a rerun, which then hits the cache).

    Raises:
        ConfigError: it holds another pipeline (the user's edits, which the failure message invites,
            or another command's or other flags'), unless --force.
    """
    if not config.exists() and not config.is_symlink():
        return True
    try:
        if config.is_file() and config.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass  # unreadable: not this pipeline
    if getattr(args, "force", False):
        return True
    raise ConfigError("holds another pipeline than this command writes (edited, or from other flags or another command); "
                      "give another folder with -o to keep it, or add --force to replace it", str(config))


def run(command: str, args, pipeline_for: Callable[..., dict[str, Any]], metrics_of: str | None = None, advice: str = "") -> int:
    """Emit, or write and run, the pipeline `pipeline_for(args, absolute=...)` builds.

    Args:
        command: the subcommand's name, for messages and the file's header.
        args: the parsed flags; reads emit_config, output_path, search, quiet, debug.
        pipeline_for: the command's flags-to-pipeline function.
        metrics_of: the node whose metrics to print; default the last node.
        advice: what to change in the written file when a run fails (after "change it there").
    """
    from slimops.cli.results import show_search

    if args.emit_config:
        from slimops.config import parse_config

        text = pipeline_yaml(pipeline_for(args, absolute=False), command)
        parse_config(text, Path.cwd(), name=f"<slimops {command}>")  # a pipeline these flags make must be one slimops runs
        sys.stdout.write(text)
        return 0
    import slimops
    from slimops.config import load_config
    from slimops.display import RunDisplay
    from slimops.errors import SlimopsError
    from slimops.outputs import OutputFolder

    pipeline = pipeline_for(args, absolute=True)  # flag errors first: nothing is written for them
    out = Path(args.output_path)
    config = out / "pipeline.yaml"
    text = pipeline_yaml(pipeline, command)
    write = _may_write(config, text, args)
    OutputFolder(out).claim()  # the pipeline file and the outputs both go here: the folder must be slimops's
    if write:
        config.write_text(text)
    try:
        if getattr(args, "search", False):
            code = show_search(load_config(config), [])
            print(f"{command}: search done; trials in {config.parent / 'trials'}; pipeline: {config}", file=sys.stderr)
            return code
        result = slimops.run(config, display=RunDisplay(quiet=args.quiet))
    except SlimopsError as err:
        if getattr(args, "debug", False):
            raise
        print(f"error: {err}", file=sys.stderr)
        print(f"the pipeline is {config}: change it there{advice} and run `slimops run --config {config}`; "
              "what finished stays cached", file=sys.stderr)
        return err.exit_code
    last = list(result.nodes.values())[-1]
    print(f"{command}: {last.kind} in {last.path} ({result.seconds:.1f}s; pipeline: {config})", file=sys.stderr)
    metrics = result[metrics_of].metrics if metrics_of else last.metrics
    if metrics:
        print(json.dumps(metrics), file=sys.stderr)
    return 0
