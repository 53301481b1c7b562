"""The `slimops` command: a thin layer over the Python API.

    slimops run      --config F [--set k=v]   run a pipeline
    slimops validate --config F               check a pipeline file, run nothing
    slimops plan     --config F [--explain]   show the DAG, keys, what is cached and why not
    slimops cache    ls|show|verify|gc|clear  manage the cache
    slimops report   DIR                      render report.md/report.html again from DIR/run.json
    slimops passes | targets | schema | init  list passes, targets; write the schema; copy a template
    slimops doctor                            check this environment before a long run

Here: the parser, `main` and `entry`. `commands` holds the subcommands that work on a pipeline
file, the cache or the installation; `results` prints what a run or a search gave; `shortcuts` is
the one flow the flag-driven commands share (`finetune` in `finetune`; `optimize`, `quantize`,
`generate-adapter` in `onnx`), which writes a pipeline naming a target profile and runs it.

Errors print as one message without a traceback (`--debug` shows it): exit 2 for config, plan,
data and model errors, 1 for a failed pass or cache error, 3 when an evaluation missed a goal
(every node is cached then), 130 when interrupted, 143 when terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from typing import NoReturn

from slimops.cli import commands, finetune, onnx
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

    onnx.add_parsers(sub)  # optimize, quantize, generate-adapter
    finetune.add_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that it unwinds (and cleans up) as Ctrl-C does."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        return COMMANDS[args.command](args) or 0
    except SlimopsError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a full disk, a read-only or vanished folder, a permission denied
        if args.debug:
            raise
        where = f" at {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}; {_advice(err)} (or point engine.cache_dir / engine.output_dir "
              "elsewhere) and run again: what finished stays cached", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        if args.debug:
            raise
        how, code = ("terminated", 143) if isinstance(err, Terminated) else ("interrupted", 130)
        print(f"{how}: nodes completed so far are cached; rerun to resume", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _advice(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space there"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is read-only or not yours: fix its permissions"
    return "fix the cause there"


def _version() -> str:
    from slimops import __version__

    return __version__


COMMANDS = {
    "run": commands.cmd_run,
    "validate": commands.cmd_validate,
    "plan": commands.cmd_plan,
    "cache": commands.cmd_cache,
    "report": commands.cmd_report,
    "passes": commands.cmd_passes,
    "targets": commands.cmd_targets,
    "schema": commands.cmd_schema,
    "init": commands.cmd_init,
    "doctor": commands.cmd_doctor,
    "finetune": finetune.cmd_finetune,
    **onnx.COMMANDS,  # optimize, quantize, generate-adapter
}


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
