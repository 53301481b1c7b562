"""slimops deletes only what it created: hostile names, output folders that hold the user's files,
and cache commands pointed at folders that are not caches. Each case asserts the message, the exit
code, and that a sentinel tree of the user's files is byte-for-byte what it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest


def tree_hash(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256), so a test can tell that nothing changed."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def sentinel(project):
    """The user's own files in the project: data, notes, a home-like folder."""
    root = project.root
    (root / "data").mkdir()
    (root / "data" / "tone.jsonl").write_text('{"phrase": "so glad", "tone": "joyful"}\n')
    (root / "notes.txt").write_text("mine\n")
    for sub in ("work", "tmp", "logs"):
        (root / "home" / sub).mkdir(parents=True)
        (root / "home" / sub / "keep.txt").write_text(sub)
    (root / "home" / ".bashrc").write_text("export A=1\n")
    return root


# -- names: refused at validation, before anything is written ------------------------------------

NAME_CASES = [
    ("pass '.'", 'passes: {".": {type: fake}}', "passes..: '.' cannot name a pass"),
    ("pass '..'", 'passes: {"..": {type: fake}}', "cannot name a pass"),
    ("pass with a separator", 'passes: {"a/b": {type: fake}}', "cannot name a pass"),
    ("pass by absolute path", 'passes: {"/tmp/x": {type: fake}}', "cannot name a pass"),
    ("pass with a control character", 'passes: {"a\\tb": {type: fake}}', "cannot name a pass"),
    ("pass too long", f'passes: {{"{"a" * 65}": {{type: fake}}}}', "at most 64 characters"),
    ("pass named like run.json", 'passes: {"run.json": {type: fake}}', "slimops uses it"),
    ("target by absolute path", 'targets: {"/tmp/evil": cpu}\npasses: {a: {type: fake}}', "cannot name a target"),
    ("target '..'", 'targets: {"..": cpu}\npasses: {a: {type: fake}}', "cannot name a target"),
    ("pass and target share a name", "targets: {laptop: cpu}\npasses: {laptop: {type: fake}}", "names both a target and a pass"),
    ("cache in /", "engine: {cache_dir: /}\npasses: {a: {type: fake}}", "engine.cache_dir: '/' is /"),
    ("output in the home folder", "engine: {output_dir: '~'}\npasses: {a: {type: fake}}", "engine.output_dir: '~' is"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in NAME_CASES], ids=[c[0] for c in NAME_CASES])
def test_a_name_that_would_become_a_bad_path_is_refused(project, cli, sentinel, text, message):
    before = tree_hash(sentinel)
    path = project.write(text + "\n")
    for command in ("validate", "run"):
        code, _, err = cli(command, "--config", path)
        assert code == 2, err
        assert message in err, err
        assert "allowed" in err or "pick another" in err or "rename one" in err or "folder of its own" in err
    assert tree_hash(sentinel) == {**before, "pipeline.yaml": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert not (sentinel / "out").exists() and not (sentinel / ".slimops").exists()


# -- the output folder: only what slimops wrote is replaced ---------------------------------------


def test_an_output_folder_holding_the_users_files_is_refused(project, cli, sentinel):
    """engine.output_dir: . with a pass named `data` once deleted the project's data/tone.jsonl."""
    path = project.write("engine: {output_dir: .}\npasses: {data: {type: fake}}\n")
    before = tree_hash(sentinel)
    code, _, err = cli("run", "--config", path)
    assert code == 2
    assert "holds files slimops did not write (data, home, notes.txt, pipeline.yaml)" in err
    assert "set engine.output_dir to a new folder" in err
    assert tree_hash(sentinel) == before


def test_a_node_folder_slimops_did_not_write_is_never_replaced(project, cli, sentinel):
    path = project.write("passes: {a: {type: fake, value: one}}\n")
    assert cli("run", "--quiet", "--config", path)[0] == 0
    assert cli("run", "--quiet", "--config", path, "--set", "passes.a.value=two")[0] == 0  # its own folder: replaced
    assert "value=two" in (sentinel / "out" / "a" / "out.txt").read_text()
    (sentinel / "out" / "b").mkdir()
    (sentinel / "out" / "b" / "report-draft.md").write_text("the user's own\n")
    before = tree_hash(sentinel)
    path = project.write("passes: {a: {type: fake, value: two}, b: {type: fake}}\n")
    code, _, err = cli("run", "--config", path)
    assert code != 0
    assert f"{sentinel / 'out' / 'b'} exists and slimops did not write it" in err
    after = tree_hash(sentinel)
    assert after["out/b/report-draft.md"] == before["out/b/report-draft.md"]
    mine = lambda tree: {k: v for k, v in tree.items() if k.startswith(("data/", "home/", "notes.txt"))}  # noqa: E731
    assert mine(after) == mine(before)


def test_an_output_path_that_is_a_file_is_a_clear_error(project, cli, sentinel):
    (sentinel / "out").write_text("not a folder\n")
    path = project.write("passes: {a: {type: fake}}\n")
    before = tree_hash(sentinel)
    for command in ("validate", "run"):
        code, _, err = cli(command, "--config", path)
        assert code == 2 and f"engine.output_dir: 'out' is a file ({sentinel / 'out'}); give a folder" in err, err
    assert tree_hash(sentinel) == before


def test_an_output_folder_from_before_the_marker_is_adopted(project, cli, sentinel):
    path = project.write("passes: {a: {type: fake, value: one}}\n")
    assert cli("run", "--quiet", "--config", path)[0] == 0
    marker = sentinel / "out" / ".slimops-output.json"
    assert json.loads(marker.read_text())["paths"] == ["a"]
    marker.unlink()  # as an older slimops left it: run.json names the node folders
    assert cli("run", "--quiet", "--config", path, "--set", "passes.a.value=two")[0] == 0
    assert "value=two" in (sentinel / "out" / "a" / "out.txt").read_text()


# -- cache commands: only on a folder that is a slimops cache -------------------------------------

CACHE_CASES = [
    ("clear a home-like folder", ["cache", "clear", "--yes", "--cache-dir", "home"], 1, "holds files that are not a slimops cache's (.bashrc)"),
    ("gc a home-like folder", ["cache", "gc", "--cache-dir", "home"], 1, "holds files that are not a slimops cache's (.bashrc)"),
    ("clear /", ["cache", "clear", "--yes", "--cache-dir", "/"], 1, "refusing to clear /"),
    ("clear without a terminal or --yes", ["cache", "clear", "--cache-dir", ".slimops/cache"], 2, "pass --yes"),
]


@pytest.mark.parametrize("args, code, message", [c[1:] for c in CACHE_CASES], ids=[c[0] for c in CACHE_CASES])
def test_cache_commands_touch_only_a_slimops_cache(project, cli, sentinel, monkeypatch, args, code, message):
    monkeypatch.chdir(sentinel)
    path = project.write("passes: {a: {type: fake}}\n")
    assert cli("run", "--quiet", "--config", path)[0] == 0
    before = tree_hash(sentinel)
    got, out, err = cli(*args)
    assert got == code, out + err
    assert message in err
    assert tree_hash(sentinel) == before


def test_a_killed_clear_blocks_nothing_and_gc_removes_its_trash(project, cli, sentinel, monkeypatch):
    monkeypatch.chdir(sentinel)
    path = project.write("passes: {a: {type: fake}}\n")
    assert cli("run", "--quiet", "--config", path)[0] == 0
    cache = sentinel / ".slimops" / "cache"
    trash = cache / "trash-4242-1"  # what a clear killed mid-delete leaves: entries renamed aside, half deleted
    (trash / "entries" / "abc").mkdir(parents=True)
    (trash / "entries" / "abc" / "manifest.json").write_text("{")
    code, _, err = cli("run", "--quiet", "--config", path, "--set", "passes.a.value=other")
    assert code == 0, err
    assert cli("cache", "gc")[0] == 0
    assert not trash.exists()
    code, out, _ = cli("cache", "clear", "--yes")
    assert code == 0 and "removed 2 entries" in out
    assert not list(cache.glob("trash-*")) and not (cache / "entries").exists()
    assert tree_hash(sentinel / "data") == {"tone.jsonl": hashlib.sha256(b'{"phrase": "so glad", "tone": "joyful"}\n').hexdigest()}


# -- cache integrity: a damaged entry is never shipped or built upon -----------------------------


def _entry_of(cache: Path, node: str) -> Path:
    return next(d for d in (cache / "entries").iterdir() if json.loads((d / "manifest.json").read_text())["node"] == node)


def _flip(entry: Path) -> None:
    file = entry / "artifact" / "out.txt"
    data = bytearray(file.read_bytes())
    data[0] ^= 0x01
    file.write_bytes(bytes(data))


def _manifest(entry: Path, change) -> None:
    path = entry / "manifest.json"
    body = json.loads(path.read_text())
    path.write_text(json.dumps(change(body)))


DAMAGE = [
    ("a flipped byte", _flip, "artifact/out.txt changed"),
    ("a truncated file", lambda e: (e / "artifact" / "out.txt").write_text(""), "artifact/out.txt changed size"),
    ("a missing file", lambda e: (e / "artifact" / "out.txt").unlink(), "artifact/out.txt is missing"),
    ("an extra file", lambda e: (e / "artifact" / "extra.bin").write_bytes(b"\0"), "does not list (artifact/extra.bin)"),
    ("an empty manifest", lambda e: (e / "manifest.json").write_text("{}"), "its manifest is incomplete"),
    ("a path out of the entry", lambda e: _manifest(e, lambda b: {**b, "artifact": {**b["artifact"], "path": "artifact/../.."}}),
     "outside the entry (artifact/../..)"),
    ("an unreadable manifest", lambda e: (e / "manifest.json").write_text("{not json"), "is unreadable"),
    ("an artifact path that is not there", lambda e: _manifest(e, lambda b: {**b, "artifact": {**b["artifact"], "path": "artifact/gone"}}),
     "its artifact (artifact/gone) is missing"),
    ("a missing manifest", lambda e: (e / "manifest.json").unlink(), "its manifest is missing"),
    ("an artifact without its kind", lambda e: _manifest(e, lambda b: {**b, "artifact": {k: v for k, v in b["artifact"].items() if k != "kind"}}),
     "its manifest is incomplete (no artifact.kind)"),
    ("a file listed as text", lambda e: _manifest(e, lambda b: {**b, "files": {k: "x" for k in b["files"]}}),
     "its manifest is malformed (files.artifact/out.txt is not a size and a sha256)"),
    ("a size that is not a number", lambda e: _manifest(e, lambda b: {**b, "files": {k: {**v, "size": str(v["size"])} for k, v in b["files"].items()}}),
     "is not a size and a sha256"),
    ("artifact meta that is null", lambda e: _manifest(e, lambda b: {**b, "artifact": {**b["artifact"], "meta": None}}),
     "its manifest is malformed (artifact.meta is not a mapping)"),
    ("artifact metrics that are a list", lambda e: _manifest(e, lambda b: {**b, "artifact": {**b["artifact"], "metrics": [1]}}),
     "its manifest is malformed (artifact.metrics is not a mapping)"),
]


@pytest.mark.parametrize("damage, message", [c[1:] for c in DAMAGE], ids=[c[0] for c in DAMAGE])
def test_a_damaged_hit_is_set_aside_and_rebuilt_and_verify_and_gc_find_it(project, cli, damage, message):
    path = project.write("passes: {a: {type: fake, value: one}, b: {type: fake, value: two}}\n")
    assert cli("run", "--quiet", "--config", path)[0] == 0
    cache = project.root / ".slimops" / "cache"
    good = (project.root / "out" / "a" / "out.txt").read_bytes()
    damage(_entry_of(cache, "a"))

    code, out, err = cli("cache", "verify", "--config", path)
    assert code == 1 and message in out + err and "gc removes it" in out + err

    code, _, err = cli("run", "--quiet", "--config", path)
    assert code == 0, err
    assert "cache entry" in err and "of a is damaged" in err and "rebuilding it" in err
    run = json.loads((project.root / "out" / "run.json").read_text())
    assert run["nodes"]["a"]["cached"] is False and run["nodes"]["b"]["cached"] is True
    assert (project.root / "out" / "a" / "out.txt").read_bytes() == good
    assert cli("cache", "verify", "--config", path)[0] == 0
    assert len(list((cache / "damaged").iterdir())) == 1

    damage(_entry_of(cache, "a"))  # gc removes a damaged entry and what was set aside
    code, out, _ = cli("cache", "gc", "--config", path)
    assert code == 0 and "2 damaged entries" in out
    assert cli("cache", "verify", "--config", path)[0] == 0 and not list((cache / "damaged").iterdir())


def test_checking_a_hit_reads_no_file_again(project, cli, monkeypatch):
    """Checksums come from the hash memo that publishing filled: an all-cached rerun hashes nothing."""
    from slimops import keys

    path = project.write("passes: {a: {type: fake}, b: {type: fake}}\n")
    assert cli("run", "--quiet", "--config", path)[0] == 0
    reads = []
    real = keys.sha256_file
    monkeypatch.setattr(keys, "sha256_file", lambda p: reads.append(p) or real(p))
    assert cli("run", "--quiet", "--config", path)[0] == 0
    assert reads == []


def test_eight_runs_sharing_a_cache_and_an_output_folder_all_succeed_and_build_each_node_once(project):
    import re
    import subprocess
    import sys

    path = project.write("passes: {a: {type: fake, value: one}, b: {type: fake, value: two}, c: {type: fake, value: three}}\n")
    procs = [subprocess.Popen([sys.executable, "-m", "slimops.cli", "run", "--quiet", "--config", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0] * 8, [err for _, _, err in results]
    built = 0
    for _, _, err in results:
        nodes, hits = map(int, re.search(r"(\d+) nodes, (\d+) from cache", err).groups())
        built += nodes - hits
    assert built == 3
    out = project.root / "out"
    assert [(out / n / "out.txt").read_text().splitlines()[0] for n in "abc"] == ["value=one", "value=two", "value=three"]
    assert not [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".old"))]
    assert len(list((project.root / ".slimops" / "cache" / "entries").iterdir())) == 3


def test_a_full_disk_at_run_json_is_one_clear_message_and_the_next_run_succeeds(project, cli, monkeypatch):
    import errno

    from slimops import scheduler

    path = project.write("passes: {a: {type: fake}}\n")
    real = scheduler._write_run_json

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(project.root / "out" / "run.json"))

    monkeypatch.setattr(scheduler, "_write_run_json", full)
    code, _, err = cli("run", "--config", path)
    assert code == 1
    assert f"error: No space left on device at {project.root / 'out' / 'run.json'}; free space" in err
    assert "Traceback" not in err
    monkeypatch.setattr(scheduler, "_write_run_json", real)
    code, _, err = cli("run", "--quiet", "--config", path)
    assert code == 0, err
    assert json.loads((project.root / "out" / "run.json").read_text())["nodes"]["a"]["cached"] is True


# -- faults at exact points: a kill -9 leaves nothing half-written; the next run repairs it all ---

KILLER = """
import importlib, os, signal, sys
module, attr, when, config, sig = sys.argv[1:6]
owner = importlib.import_module(module)
*parents, name = attr.split(".")
for part in parents:
    owner = getattr(owner, part)
real = getattr(owner, name)
def wrapped(*args, **kwargs):
    if when == "before":
        os.kill(os.getpid(), int(sig))
    result = real(*args, **kwargs)
    os.kill(os.getpid(), int(sig))
    return result
setattr(owner, name, wrapped)
from slimops.cli import main
sys.exit(main(["run", "--quiet", "--config", config]))
"""

KILL_POINTS = [
    ("before publish", "slimops.cache", "Cache.publish", "before"),
    ("after publish", "slimops.cache", "Cache.publish", "after"),
    ("mid-copy to the output folder", "shutil", "copytree", "after"),
    ("before run.json", "slimops.scheduler", "_write_run_json", "before"),
    ("mid run.json", "json", "dumps", "after"),
]


@pytest.mark.parametrize("sig", [9, 15], ids=["kill-9", "sigterm"])
@pytest.mark.parametrize("module, attr, when", [p[1:] for p in KILL_POINTS], ids=[p[0] for p in KILL_POINTS])
def test_a_kill_at_an_exact_point_leaves_nothing_half_written(project, cli, module, attr, when, sig):
    import subprocess
    import sys

    path = project.write("passes: {a: {type: fake, value: one}, b: {type: fake, value: two}}\n")
    done = subprocess.run([sys.executable, "-c", KILLER, module, attr, when, str(path), str(sig)],
                          capture_output=True, text=True, timeout=120)
    if sig == 9:
        assert done.returncode == -9, done.stderr
    else:
        assert done.returncode == 143 and "terminated" in done.stderr and "Traceback" not in done.stderr, done.stderr
        out = project.root / "out"
        assert not out.is_dir() or not [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".old"))]
        staging = project.root / ".slimops" / "cache" / "tmp"  # a terminated run cleans up after itself
        assert not staging.is_dir() or not list(staging.iterdir())
    cache, out = project.root / ".slimops" / "cache", project.root / "out"
    if (cache / "entries").is_dir():
        for entry in (cache / "entries").iterdir():
            assert (entry / "manifest.json").is_file(), "an entry without its manifest"
    code, _, err = cli("run", "--quiet", "--config", path)
    assert code == 0, err
    assert [(out / n / "out.txt").read_text().splitlines()[0] for n in "ab"] == ["value=one", "value=two"]
    assert json.loads((out / "run.json").read_text())["status"] == "ok"
    assert not [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".old"))]
    assert not list((cache / "tmp").glob("*")) and not list((cache / "work").glob("*"))
    assert cli("cache", "verify", "--config", path)[0] == 0


LINK_PASS = """
import os
from pydantic import BaseModel, ConfigDict
import slimops

class Linker(slimops.Pass):
    name = "linker"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        target: str

    def run(self, ctx):
        (ctx.output_dir / "real.txt").write_text("inside")
        os.symlink(self.params_target(ctx), ctx.output_dir / "link")
        return slimops.Artifact(path=ctx.output_dir, kind="text")

    def params_target(self, ctx):
        return ctx.params.target.replace("OUT", str(ctx.output_dir))
"""

LINK_CASES = [
    ("a relative link to a file inside", "real.txt", 0, None),
    ("an absolute link to a file inside", "OUT/real.txt", 1, "holds an absolute link (link -> "),
    ("a link out of the output", "/etc/hostname", 1, "holds a link out of it (link -> /etc/hostname)"),
    ("a link loop", "link", 1, "holds a link that loops or dangles"),
]


@pytest.mark.parametrize("target, code, message", [c[1:] for c in LINK_CASES], ids=[c[0] for c in LINK_CASES])
def test_links_in_a_pass_output_stay_inside_it(project, cli, sentinel, target, code, message):
    (project.root / "linker.py").write_text(LINK_PASS)
    path = project.write(f"passes: {{l: {{type: 'linker:Linker', target: '{target}'}}}}\n")
    before = tree_hash(sentinel / "home")
    got, _, err = cli("run", "--quiet", "--config", path)
    assert got == code, err
    if message:
        assert message in err
        assert not (project.root / "out" / "l").exists()
    else:
        link = project.root / "out" / "l" / "link"
        assert link.is_symlink() and link.read_text() == "inside"
        assert cli("run", "--quiet", "--config", path)[0] == 0  # and the hit checks out
    assert tree_hash(sentinel / "home") == before


def test_a_killed_runs_memo_temp_file_does_not_outlive_the_next_run(project, cli):
    import os
    import time

    path = project.write("passes: {a: {type: fake}}\n")
    assert cli("run", "--quiet", "--config", path)[0] == 0
    leftover = project.root / ".slimops" / "cache" / "hashes.json.99999.tmp"
    leftover.write_text("{")
    old = time.time() - 3600
    os.utime(leftover, (old, old))
    assert cli("run", "--quiet", "--config", path)[0] == 0
    assert not leftover.exists()


def _enospc(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device", "the-disk")


DISK_FULL = [
    ("in a pass", "slimops.passes.fake", "Fake.run", "pass 'a' failed: OSError: [Errno 28] No space left on device", 1),
    ("at publish", "slimops.cache", "Cache.publish", "error: No space left on device at the-disk; free space", 1),
    ("in the copy to the output folder", "slimops.scheduler", "shutil.copytree", "error: No space left on device at the-disk; free space", 1),
]


@pytest.mark.parametrize("module, attr, message, code", [c[1:] for c in DISK_FULL], ids=[c[0] for c in DISK_FULL])
def test_a_full_disk_is_one_message_and_the_next_run_repairs_everything(project, cli, monkeypatch, module, attr, message, code):
    import importlib

    owner = importlib.import_module(module)
    *parents, name = attr.split(".")
    for part in parents:
        owner = getattr(owner, part)
    path = project.write("passes: {a: {type: fake, value: one}}\n")
    with monkeypatch.context() as patch:
        patch.setattr(owner, name, _enospc)
        got, _, err = cli("run", "--config", path)
    assert got == code and message in err and "Traceback" not in err, err
    out, cache = project.root / "out", project.root / ".slimops" / "cache"
    assert not out.is_dir() or not [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".old"))]
    # what the failed run half wrote is gone already, so the next run needs no more space than a first run
    assert not [p for sub in ("tmp", "work") if (cache / sub).is_dir() for p in (cache / sub).iterdir()]
    got, _, err = cli("run", "--quiet", "--config", path)
    assert got == 0, err
    assert (out / "a" / "out.txt").read_text().startswith("value=one")
    assert not list((cache / "tmp").glob("*")) and cli("cache", "verify", "--config", path)[0] == 0
