"""What the CLI says when it is used wrongly: one `error:` line saying what and what to do, an exit
code, never a traceback (unless `--debug`, before or after the command); the nearest command, flag
or choice for a typo; help and defaults on every flag; `--json` that scripts can parse."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimops.cli import build_parser, has_default

PIPELINE = """
name: errors
passes:
  a: {type: fake, value: one}
  b: {type: fake, value: two, inputs: [a]}
"""


def _run_json(text: str):
    def setup(root: Path) -> None:
        (root / "r").mkdir()
        (root / "r" / "run.json").write_text(text)
    return setup


def _twin_entries(root: Path) -> None:
    """A second entry whose key shares the first's 4-digit prefix."""
    entries = root / ".slimops" / "cache" / "entries"
    first = sorted(entries.iterdir())[0]
    shutil.copytree(first, entries / (first.name[:4] + "0" * 60))


# (case, setup(root), args, exit code, what the one error line says)
IN_PROCESS = [
    ("cache show glob", None, ["cache", "show", "e8*"], 1, "'e8*' is not a key prefix: keys are hex digits"),
    ("cache show path", None, ["cache", "show", "../x"], 1, "'../x' is not a key prefix"),
    ("cache show none", None, ["cache", "show", "abc", "--cache-dir", "empty"], 1, "no cache entry starts with 'abc'"),
    ("cache ls nowhere", None, ["cache", "ls", "--cache-dir", "nowhere"], 1, "no cache at "),
    ("cache verify nowhere", None, ["cache", "verify", "--cache-dir", "nowhere"], 1, "no cache at "),
    ("schema into a folder", lambda root: (root / "schemas").mkdir(), ["schema", "-o", "schemas"], 1,
     "schemas is a folder; give the file to write, e.g. schemas/pipeline.schema.json"),
    ("cache ls a key", None, ["cache", "ls", "abc"], 1, "cache ls takes no key ('abc'); to see one entry: slimops cache show KEY"),
    ("cache show two", _twin_entries, ["cache", "show", "PREFIX"], 1, "2 cache entries start with"),
    ("report list", _run_json("[]"), ["report", "r"], 1, "r/run.json holds a list, not the object a run writes"),
    ("report empty", _run_json("{}"), ["report", "r"], 1, "not a run record: missing name, status, nodes"),
    ("report keys", _run_json('{"name": "x", "status": "ok"}'), ["report", "r"], 1, "not a run record: missing nodes"),
    ("report nodes", _run_json('{"name": "x", "status": "ok", "nodes": []}'), ["report", "r"], 1, "nodes: should be an object"),
    ("report node", _run_json('{"name": "x", "status": "ok", "nodes": {"a": {"seconds": "soon"}}}'), ["report", "r"], 1,
     "nodes.a.seconds: input should be a valid number"),
    ("report metrics", _run_json('{"name": "x", "status": "ok", "nodes": {"a": {"metrics": {"after": {"f1": "x"}}}}}'),
     ["report", "r"], 1, "metrics.after should map each metric to a number"),
    ("report not json", _run_json("not json"), ["report", "r"], 1, "r/run.json is not valid JSON"),
    ("report intervals", _run_json('{"name": "x", "status": "ok", "nodes": {"a": {"meta": {"intervals": 5}}}}'), ["report", "r"], 1,
     "nodes.a.meta: meta.intervals should map before/after/reference to each metric's interval"),
    ("report role", _run_json('{"name": "x", "status": "ok", "nodes": {"a": {"meta": {"role": ["before"]}}}}'), ["report", "r"], 1,
     "nodes.a.meta: meta.role should be text"),
    ("report no run.json", lambda root: (root / "r").mkdir(), ["report", "r"], 1, "no run.json in r; run 'slimops run"),
    ("init into a file", lambda root: (root / "afile").write_text(""), ["init", "quickstart", "afile"], 2,
     "afile is a file, not a folder; give the folder to copy 'quickstart' into"),
    ("init under a file", lambda root: (root / "afile").write_text(""), ["init", "quickstart", "afile/sub"], 2,
     "afile is a file, not a folder"),
    ("init over files", lambda root: (root / "q").mkdir() or (root / "q" / "quickstart.yaml").write_text("mine"),
     ["init", "quickstart", "q"], 2, "q already has quickstart.yaml; pass --force to replace them, or give another folder"),
    ("init unknown", None, ["init", "quikstart", "q"], 2, "no template 'quikstart'; did you mean 'quickstart'?"),
]


@pytest.mark.parametrize("case, setup, args, code, message", IN_PROCESS, ids=[row[0] for row in IN_PROCESS])
def test_error_is_one_line(project, cli, monkeypatch, case, setup, args, code, message):
    monkeypatch.chdir(project.root)
    project.write(PIPELINE)
    assert cli("run", "--config", "pipeline.yaml", "--quiet")[0] == 0  # a cache with two entries
    if setup:
        setup(project.root)
    args = [sorted(e.name for e in (project.root / ".slimops/cache/entries").iterdir())[0][:4] if a == "PREFIX" else a
            for a in args]
    got, out, err = cli(*args)
    assert (got, err.strip().splitlines()) == (code, [err.strip()]), err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in out + err


def slimops(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimops.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


# (case, args, exit code, the one line on stderr)
USAGE = [
    ("command", ["valdate"], "error: unknown command 'valdate'; did you mean 'validate'? (see 'slimops --help')"),
    ("flag before required", ["run", "--confg", "x"], "error: unknown flag --confg; did you mean --config? (see 'slimops run --help')"),
    ("flag after required", ["validate", "--config", "pipeline.yaml", "--confg", "x"], "error: unknown flag --confg; did you mean --config?"),
    ("flag with value", ["plan", "--config", "pipeline.yaml", "--explian=1"], "error: unknown flag --explian; did you mean --explain?"),
    ("top-level flag", ["--debg", "validate", "--config", "pipeline.yaml"], "error: unknown flag --debg; did you mean --debug?"),
    ("choice", ["cache", "sho"], "error: unknown cache action 'sho'; did you mean 'show'? (see 'slimops cache --help')"),
    ("stray argument", ["validate", "--config", "pipeline.yaml", "extra"], "error: unexpected argument: extra"),
    ("missing flag", ["run"], "error: the following arguments are required: --config/-c (see 'slimops run --help')"),
    ("negative age", ["cache", "gc", "--older-than", "-5"], "error: argument --older-than: '-5' is not an age in days; give a number, 0"),
    ("NaN age", ["cache", "gc", "--older-than", "nan"], "error: argument --older-than: 'nan' is not an age in days"),
]


@pytest.mark.parametrize("case, args, line", USAGE, ids=[row[0] for row in USAGE])
def test_usage_error_names_the_nearest(project, case, args, line):
    project.write(PIPELINE)
    done = slimops(*args, cwd=project.root)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(line), done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("args", [["--debug", "validate", "--config", "missing.yaml"], ["validate", "--config", "missing.yaml", "--debug"]],
                         ids=["before", "after"])
def test_debug_shows_the_traceback(project, args):
    done = slimops(*args, cwd=project.root)
    assert done.returncode == 1 and "Traceback" in done.stderr and "ConfigError" in done.stderr
    quiet = slimops(*[a for a in args if a != "--debug"], cwd=project.root)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and quiet.stderr.startswith("error: ")


def test_an_unexpected_error_is_one_line_too(cli, monkeypatch):
    import slimops.cli

    def broken(args):
        raise ValueError("boom")

    monkeypatch.setitem(slimops.cli.COMMANDS, "targets", broken)
    code, _, err = cli("targets")
    assert code == 1 and err.startswith("error: unexpected ValueError: boom;") and "--debug" in err
    with pytest.raises(ValueError):
        cli("targets", "--debug")


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [("slimops", parser), *sub.choices.items()]




@pytest.mark.parametrize("name", [name for name, _ in _commands()])
def test_every_flag_has_help_and_shows_its_default(name):
    parser = dict(_commands())[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        flag = (action.option_strings or [action.dest])[0]
        assert action.help, f"{name} {flag} has no help"
        text = formatter._expand_help(action)
        if has_default(action) and (action.option_strings or action.nargs in ("?", "*")):
            assert "default" in text and str(action.default) in text, f"{name} {flag}: help does not say its default: {text}"
    assert "(default: out)" in " ".join(dict(_commands())["report"].format_help().split())


def test_the_formatter_adds_a_default_once():
    parser = dict(_commands())["cache"]
    text = " ".join(parser.format_help().split())
    assert "--cache-dir CACHE_DIR the cache folder (default .slimops/cache)" in text  # said already: not twice
    init = " ".join(dict(_commands())["init"].format_help().split())
    assert "made if missing (default: .)" in init


def test_plan_json(project, cli, monkeypatch):
    import slimops.planner as planner

    real = planner.build_plan

    def warned(*args, **kwargs):
        plan = real(*args, **kwargs)
        plan.warnings.append("pipeline.yaml:3 passes.a.value: unusual")
        return plan

    monkeypatch.setattr(planner, "build_plan", warned)
    path = project.write(PIPELINE)
    code, out, err = cli("plan", "--config", path, "--json")
    assert code == 0 and "warning: pipeline.yaml:3" in err
    nodes = json.loads(out)
    assert [(n["id"], n["pass"], n["inputs"], n["status"], n["target"]) for n in nodes] == [
        ("a", "fake", [], "will run", None), ("b", "fake", ["a"], "will run", None)]
    assert all(len(n["key"]) == 64 for n in nodes)
    cli("run", "--config", path, "--quiet")
    code, out, _ = cli("plan", "--config", path, "--json")
    assert [n["status"] for n in json.loads(out)] == ["cached", "cached"]


def test_cache_ls_json(project, cli):
    path = project.write(PIPELINE)
    cli("run", "--config", path, "--quiet")
    code, out, _ = cli("cache", "ls", "--config", path, "--json")
    entries = json.loads(out)
    assert code == 0 and sorted(e["node"] for e in entries) == ["a", "b"]
    for entry in entries:
        assert list(entry) == ["key", "node", "pass", "kind", "size_bytes", "seconds", "created"]
        assert len(entry["key"]) == 64 and entry["pass"] == "fake" and entry["kind"] == "text" and entry["size_bytes"] > 0
    code, out, _ = cli("cache", "ls", "--cache-dir", project.root / "nothing", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_targets_json(cli):
    from slimops.targets import BUILTIN

    code, out, _ = cli("targets", "--json")
    profiles = json.loads(out)
    assert code == 0 and [p["name"] for p in profiles] == list(BUILTIN)
    for profile in profiles:
        assert {"about", "device", "providers", "execution_providers", "precision", "runs_here", "why_not"} <= set(profile)
        assert isinstance(profile["runs_here"], bool) and (profile["why_not"] is None) == profile["runs_here"]


def test_json_is_all_stdout_in_a_child(project):
    project.write(PIPELINE)
    for args in (["plan", "--config", "pipeline.yaml", "--json"], ["targets", "--json"], ["cache", "ls", "--json"]):
        done = slimops(*args, cwd=project.root)
        assert done.returncode == 0, done.stderr
        assert isinstance(json.loads(done.stdout), list)


def test_a_copy_that_fails_on_several_files_says_the_first_ones_cause(project, cli, monkeypatch):
    """shutil.copytree gathers each file's error into one shutil.Error, whose errno is None: the
    message still says the disk is full and where, not a printed list."""
    import errno

    import slimops.scheduler

    def copytree(source, destination, *args, **kwargs):
        raise shutil.Error([(f"{source}/a", f"{destination}/a", f"[Errno {errno.ENOSPC}] No space left on device: '{destination}/a'"),
                            (f"{source}/b", f"{destination}/b", "[Errno 28] No space left on device")])

    path = project.write("passes: {a: {type: fake}}\n")
    monkeypatch.setattr(slimops.scheduler.shutil, "copytree", copytree)
    code, _, err = cli("run", "--quiet", "--config", path)
    assert code == 1 and "error: No space left on device (and 1 more files) at " in err and "; free space there" in err, err
    assert "[(" not in err


MARKUP_PASS = '''
import slimops
from pydantic import BaseModel


class Brackets(slimops.Pass):
    name = "brackets"

    class Params(BaseModel):
        text: str = "[/x]"

    def run(self, ctx):
        ctx.progress.update(0, 2, f"reading {ctx.params.text} [bold]")
        (ctx.output_dir / "a.txt").write_text("x")
        return slimops.Artifact(path=ctx.output_dir, kind="text", metrics={"note": ctx.params.text})
'''


def test_the_users_text_is_never_read_as_rich_markup(project, cli):
    """'[/x]' closes no tag: rich raised MarkupError on it (a 'slimops bug') in plan, cache ls and the tables."""
    import io

    import slimops
    from slimops.display import RunDisplay

    (project.root / "brackets.py").write_text(MARKUP_PASS)
    path = project.write("name: '[/n]'\npasses:\n  a: {type: 'brackets:Brackets'}\n")
    code, out, err = cli("plan", "--config", path, "--explain", "--set", "passes.a.text=<s>[INST] hi [/INST]")
    assert code == 0 and "plan: [/n]" in out, err
    stream = io.StringIO()
    stream.isatty = lambda: True  # the live table, as a terminal gets it
    slimops.run(path, display=RunDisplay(stream=stream, live=True))
    assert "hit" in stream.getvalue() or "built" in stream.getvalue()
    code, out, err = cli("run", "--config", path)
    assert code == 0 and "note=[/x]" in out + err, err
    (project.root / "[/c]").mkdir(parents=True)
    code, out, err = cli("cache", "ls", "--cache-dir", str(project.root / "[/c]"))
    assert code == 0 and "[/c]" in out, err
