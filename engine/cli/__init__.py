"""The `slimops` command: a thin layer over the Python API.

    slimops run      --config F [--set k=v]   run a pipeline
    slimops validate --config F               check a pipeline file, run nothing
    slimops plan     --config F [--explain]   show the DAG, keys, what is cached and why not
    slimops cache    ls|show|verify|gc|clear  manage the cache
    slimops report   DIR [--samples N]        render report.md/report.html again from DIR/run.json
    slimops passes | targets | schema | init  list passes, targets; write the schema; copy a template
    slimops doctor                            check this environment before a long run
    slimops convert-olive FILE [-o F]         write an Olive workflow config as a pipeline

`run`, `validate` and `plan` take an Olive workflow config too, converted on the way in (`slimops.olive`).

Here: the parser, `main` and `entry`. `commands` holds the subcommands that work on a pipeline
file, the cache or the installation; `results` prints what a run or a search gave; `shortcuts` is
the one flow the flag-driven commands share (`finetune` in `finetune`; `optimize`, `quantize`,
`generate-adapter` in `onnx`), which writes a pipeline naming a target profile and runs it.

Errors print as one message without a traceback (`--debug`, before or after the command, shows
it); a mistyped command, flag or choice names the nearest one. Exit 2 for usage, config, plan,
data and model errors, 1 for a failed pass or cache error, 3 when an evaluation missed a goal
(every node is cached then), 130 when interrupted, 143 when terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import math
import os
import re
import signal
import sys
import threading
from typing import NoReturn

from slimops.cli import commands, finetune, olive, onnx
from slimops.errors import SlimopsError
from slimops.report_samples import SAMPLES


class HelpFormatter(argparse.HelpFormatter):
    """Each flag's help ends with its default, unless the help says it already or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not has_default(action) or "default" in text or not (action.option_strings or action.nargs in ("?", "*")):
            return text
        return f"{text} (default: %(default)s)"


def has_default(action: argparse.Action) -> bool:
    """Whether `action` has a default worth showing: not None, False, [] nor argparse's SUPPRESS."""
    return action.default is not None and action.default is not False and action.default != [] and action.default != argparse.SUPPRESS


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, naming the nearest command, flag or choice.

    Python 3.14 has `suggest_on_error`; this does the same on 3.11. An unknown flag is named even
    where argparse would first complain that a required one is missing (`run --confg x`).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._tokens = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            commands = self._commands()
            command = commands.choices.get(getattr(parsed, "command", None)) if commands else None
            (command or self).error(_unexpected(extras, [p for p in (command, self) if p is not None]))
        return parsed

    def _commands(self) -> argparse._SubParsersAction | None:
        return next((a for a in self._actions if isinstance(a, argparse._SubParsersAction)), None)

    def _check_value(self, action: argparse.Action, value) -> None:
        if action.choices is None or value in action.choices:
            return
        choices = [str(c) for c in action.choices]
        if isinstance(action, argparse._SubParsersAction):
            what = "command"
        else:  # `unknown --device 'gpu'`, `unknown cache action 'sho'`
            what = action.option_strings[0] if action.option_strings else f"{self.prog.split()[-1]} {action.dest}"
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose from {', '.join(choices)}"
        raise argparse.ArgumentError(None, f"unknown {what} '{value}'; {hint}")

    def error(self, message: str) -> NoReturn:
        if message.startswith("the following arguments are required"):
            tokens = getattr(self, "_tokens", [])
            if self._commands():  # what follows the command is its parser's to judge
                tokens = tokens[:next((i for i, t in enumerate(tokens) if not t.startswith("-")), len(tokens))]
            flags = [t for t in tokens if _unknown_flag(self, t)]
            message = _unexpected(flags, [self]) if flags else message
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _unknown_flag(parser: argparse.ArgumentParser, token: str) -> bool:
    if not token.startswith("-") or token in ("-", "--") or token.lstrip("-").replace(".", "", 1).isdigit():
        return False
    flag = token.split("=", 1)[0]
    known = parser._option_string_actions
    if flag in known or (not flag.startswith("--") and flag[:2] in known):  # -qc: short flags joined
        return False
    return not (flag.startswith("--") and parser.allow_abbrev and sum(o.startswith(flag) for o in known) == 1)


def _unexpected(extras: list[str], parsers: list[argparse.ArgumentParser]) -> str:
    """One line about the first unknown flag among `extras` (with the nearest flag), else the stray arguments."""
    flags = [t for t in extras if t.startswith("-") and all(_unknown_flag(p, t) for p in parsers)]
    if not flags:
        return f"unexpected argument{'s' if len(extras) > 1 else ''}: {' '.join(extras)}"
    flag = flags[0].split("=", 1)[0]
    options = [o for p in parsers for o in p._option_string_actions if o.startswith("--")]
    close = difflib.get_close_matches(flag, options, n=1)
    return f"unknown flag {flag}; did you mean {close[0]}?" if close else f"unknown flag {flag}"


def _count(text: str) -> int:
    """A whole number, 0 or more: argparse's type for --samples."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not a count; give a whole number, 0 or more")
    return int(text)


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the pipeline YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, e.g. --set passes.finetune.r=8 (repeatable); null clears an optional key, "
                        "and a quoted value (KEY='\"null\"') is read as text")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="slimops", description="Adapt small language models and ship them to devices.")
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
    p.add_argument("--json", action="store_true", help="print the nodes as JSON (id, pass, inputs, key, status, target), for scripts")

    p = sub.add_parser("cache", help="manage the cache")
    p.add_argument("action", choices=["ls", "show", "verify", "gc", "clear"],
                   help="ls: list entries; show: one entry's manifest; verify: check every entry; gc: drop temporary "
                   "and unused files; clear: remove every entry")
    p.add_argument("key", nargs="?", help="key prefix (hex digits, as 'cache ls' shows them), for show")
    p.add_argument("--config", "-c", help="take the cache folder from this pipeline file")
    p.add_argument("--cache-dir", help="the cache folder (default .slimops/cache), or its URL: s3://bucket/prefix, file:///shared/folder")
    p.add_argument("--older-than", type=_days, metavar="DAYS", help="gc: also drop entries unused this long")
    p.add_argument("--yes", action="store_true", help="clear: do not ask")
    p.add_argument("--json", action="store_true", help="ls: print the entries as JSON, for scripts")

    p = sub.add_parser("report", help="render report.md and report.html again from an output folder's run.json")
    p.add_argument("dir", nargs="?", default="out", help="the output folder (default: out)")
    p.add_argument("--samples", type=_count, default=SAMPLES, metavar="N",
                   help="examples the sample table shows per data set and split, those where the models disagree first; 0 hides it")

    p = sub.add_parser("doctor", help="check this environment: packages each pass needs, providers, CPU, CUDA, disk")
    p.add_argument("--config", "-c", help="check the disk where this pipeline's cache lives")
    p.add_argument("--cache-dir", help="the cache folder (default .slimops/cache)")

    p = sub.add_parser("passes", help="list every pass with its params and kinds; exit 1 when one cannot be loaded")
    p.add_argument("--json", action="store_true", help="print the passes (and those that cannot load) as JSON, for scripts")
    p = sub.add_parser("targets", help="list target profiles and whether this machine runs them")
    p.add_argument("--json", action="store_true", help="print the profiles as JSON, for scripts")

    p = sub.add_parser("schema", help="write the JSON Schema of pipeline files")
    p.add_argument("--output", "-o", default="-", help="file to write, or - for stdout (default: -)")
    p.add_argument("--markdown", action="store_true", help="write the config reference (docs/config.md) instead")

    p = sub.add_parser("init", help="list templates, or copy one into a folder")
    p.add_argument("template", nargs="?", help="the template to copy; without one, list them")
    p.add_argument("dir", nargs="?", default=".", help="the folder to copy it into; made if missing")
    p.add_argument("--force", action="store_true", help="overwrite existing files")

    onnx.add_parsers(sub)  # optimize, quantize, generate-adapter
    finetune.add_parser(sub)
    olive.add_parser(sub)
    for command in sub.choices.values():  # `slimops validate --debug` as well as `slimops --debug validate`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
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
        if err.errno == errno.EPIPE:  # `slimops cache ls --json | head`: the reader has all it wanted
            return 141
        err = _first_failure(err)
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
    except Exception as err:  # a bug: still one line, and the way to the traceback
        if args.debug:
            raise
        print(f"error: unexpected {type(err).__name__}: {err}; this is a slimops bug: rerun with --debug and report "
              "the traceback", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _first_failure(err: OSError) -> OSError:
    """The first file's error of a copytree that failed on several (shutil.Error holds a list of
    (source, destination, why) with the errno only in the text), else `err` itself."""
    import shutil

    failures = err.args[0] if isinstance(err, shutil.Error) and err.args and isinstance(err.args[0], list) else None
    if not failures or not isinstance(failures[0], tuple) or len(failures[0]) != 3:
        return err
    _, destination, why = failures[0]
    found = re.match(r"\[Errno (\d+)\] ([^:]+)", str(why))
    more = f" (and {len(failures) - 1} more files)" if len(failures) > 1 else ""
    if not found:
        return OSError(None, f"{why}{more}", destination)
    return OSError(int(found.group(1)), found.group(2) + more, destination)


def _days(text: str) -> float:
    """A number of days, 0 or more: argparse's type for --older-than (a negative or NaN age would match every entry)."""
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not (math.isfinite(days) and days >= 0):
        raise argparse.ArgumentTypeError(f"'{text}' is not an age in days; give a number, 0 or more")
    return days


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
    "convert-olive": olive.cmd_convert_olive,
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
