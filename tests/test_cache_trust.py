"""What the cache takes on trust, and what it must not: a folder that only looks like a cache, the hash
memo under `verify`, an entry folder without its manifest, fresh checkpoints under `gc --older-than`,
and a failing node on a full disk. Each test here failed before its fix."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from slimops.cache import MARKER, Cache

TWO = "passes: {a: {type: fake, value: x}, b: {type: fake, value: b}}\n"


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def entry_of(cache: Path, node: str) -> Path:
    return next(d for d in (cache / "entries").iterdir() if json.loads((d / "manifest.json").read_text())["node"] == node)


# -- a folder is a cache by its marker, or by proof: names alone are not ---------------------------


@pytest.fixture
def lookalike(project):
    """A user's folder whose every name is one a cache uses (the tester's var/)."""
    var = project.root / "var"
    for rel, text in {"tmp/session1/notes.txt": "keep", "logs/app.log": "log", "work/job/a.txt": "a"}.items():
        (var / rel).parent.mkdir(parents=True, exist_ok=True)
        (var / rel).write_text(text)
    return var


@pytest.mark.parametrize("args", [
    ["run", "--quiet", "--config", "pipeline.yaml", "--set", "engine.cache_dir=var"],
    ["cache", "clear", "--yes", "--cache-dir", "var"],
    ["cache", "gc", "--cache-dir", "var"],
    ["cache", "gc", "--older-than", "0", "--cache-dir", "var"],
], ids=["run", "clear", "gc", "gc --older-than"])
def test_a_folder_of_cache_like_names_without_the_marker_is_neither_adopted_nor_cleaned(project, cli, lookalike, monkeypatch, args):
    monkeypatch.chdir(project.root)
    project.write(TWO)
    before = tree(lookalike)
    code, _, err = cli(*args)
    assert code == 1, err
    assert "has no .slimops-cache marker and no cache entry, so its logs, tmp, work may be someone else's" in err
    assert "to an empty folder or to the cache folder itself" in err
    assert tree(lookalike) == before and not (lookalike / MARKER).exists()


def test_an_entry_that_does_not_name_its_own_key_proves_nothing(project, cli, lookalike):
    (lookalike / "entries" / "draft").mkdir(parents=True)
    (lookalike / "entries" / "draft" / "manifest.json").write_text('{"key": "something else"}')
    before = tree(lookalike)
    code, _, err = cli("cache", "gc", "--cache-dir", lookalike)
    assert code == 1 and "no cache entry" in err
    assert tree(lookalike) == before


def test_a_cache_from_before_the_marker_and_an_empty_folder_are_adopted(project, cli):
    path = project.write(TWO)
    (project.root / "empty").mkdir()
    assert cli("run", "--quiet", "--config", path, "--set", f"engine.cache_dir={project.root / 'empty'}")[0] == 0
    cache = project.root / ".slimops" / "cache"
    assert cli("run", "--quiet", "--config", path)[0] == 0
    (cache / MARKER).unlink()  # as a slimops from before the marker left it
    (cache / "tmp" / "deadbeef.1.0").mkdir(parents=True)  # a killed run's leftover
    code, out, err = cli("cache", "gc", "--config", path)
    assert code == 0 and "removed 1 temporary folders" in out, err
    assert cli("run", "--quiet", "--config", path)[0] == 0
    assert (cache / MARKER).is_file()


def test_a_folder_a_concurrent_run_claimed_after_the_marker_was_looked_for_is_adopted(tmp_path):
    """Two runs on a new cache: the second looks for the marker, the first writes it and starts building
    (locks/, entries/ without a whole entry yet), then the second lists the folder: it sees the marker."""
    from slimops.storage import open_cache

    for root in (tmp_path / "local", tmp_path / "shared"):
        for name in ("entries/x", "locks"):
            (root / name).mkdir(parents=True)
        (root / MARKER).write_text("")
    Cache(tmp_path / "local")._check_unmarked()
    open_cache((tmp_path / "shared").as_uri(), local_dir=tmp_path / "m")._check_remote_contents("use")


def test_a_remote_prefix_of_cache_like_names_without_the_marker_is_refused(project, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    shared = tmp_path / "shared"
    (shared / "entries" / "reports").mkdir(parents=True)
    (shared / "entries" / "reports" / "q3.csv").write_text("not ours\n")
    url = shared.as_uri()
    path = project.write(TWO)
    before = tree(shared)
    code, _, err = cli("run", "--quiet", "--config", path, "--set", f"engine.cache_dir={url}")
    assert code == 1 and f"refusing to use {url}: it has no .slimops-cache marker and no cache entry" in err, err
    code, _, err = cli("cache", "gc", "--cache-dir", url)
    assert code == 1 and "refusing to clean" in err
    assert tree(shared) == before


def test_a_remote_caches_local_copies_folder_is_marked_when_gc_first_makes_it(project, cli, tmp_path, monkeypatch):
    """gc takes locks in this machine's copies folder before any run has claimed it; the next gc must know it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    url = (tmp_path / "shared").as_uri()
    path = project.write(TWO)
    assert cli("run", "--quiet", "--config", path, "--set", f"engine.cache_dir={url}",
               "--set", f"engine.local_cache_dir={tmp_path / 'machine-a'}")[0] == 0
    orphan = tmp_path / "shared" / "entries" / ("ab" * 32) / "artifact"
    orphan.mkdir(parents=True)
    (orphan / "out.txt").write_text("half")  # a killed publisher's files: gc locks the key to remove them
    for _ in range(2):
        code, out, err = cli("cache", "gc", "--cache-dir", url)
        assert code == 0, err
    assert not (orphan / "out.txt").exists()


# -- verify reads every byte; a run's hit may trust the memo ---------------------------------------


def test_verify_finds_a_byte_changed_in_place_with_its_mtime_put_back_and_the_run_after_it_rebuilds(project, cli):
    path = project.write(TWO)
    assert cli("run", "--quiet", "--config", path)[0] == 0
    file = entry_of(project.root / ".slimops" / "cache", "a") / "artifact" / "out.txt"
    stat = file.stat()
    with open(file, "r+b") as handle:  # same size, same inode, and the mtime restored: the memo cannot tell
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 1]))
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, out, _ = cli("cache", "verify", "--config", path)
    assert code == 1 and "a: artifact/out.txt changed; gc removes it" in out
    code, _, err = cli("run", "--quiet", "--config", path)  # what verify found, the next hit knows
    assert code == 0 and "of a is damaged: artifact/out.txt changed" in err
    assert (project.root / "out" / "a" / "out.txt").read_text().startswith("value=x")


# -- an entry folder without its manifest ----------------------------------------------------------


def test_publish_sets_aside_a_folder_without_a_manifest_in_its_place(tmp_path):
    cache = Cache(tmp_path / "cache")
    cache.claim()
    key = "cd" * 32
    stray = cache.entries_dir / key
    (stray / "artifact").mkdir(parents=True)
    (stray / "artifact" / "half.bin").write_bytes(b"\0")  # appeared while the pass ran
    staged = cache.begin(key)
    (staged / "artifact" / "out.txt").write_text("whole")
    entry = cache.publish(key, staged, {"key": key, "node": "a", "artifact": {"path": "artifact", "kind": "text"}})
    assert (entry.dir / "artifact" / "out.txt").read_text() == "whole" and cache.check(entry) is None
    assert [p.name.split(".")[0] for p in (cache.root / "damaged").iterdir()] == [key]


# -- gc --older-than keeps checkpoints written within the age ---------------------------------------


def test_gc_older_than_keeps_fresh_checkpoints_and_those_a_live_run_holds(project, cli):
    path = project.write(TWO)
    assert cli("run", "--quiet", "--config", path)[0] == 0
    cache = project.root / ".slimops" / "cache"
    work = cache / "work" / ("ef" * 32)
    (work / "checkpoints" / "step-10").mkdir(parents=True)
    (work / "checkpoints" / "step-10" / "state.pt").write_bytes(b"\0" * 8)
    code, out, _ = cli("cache", "gc", "--older-than", "30", "--config", path)
    assert code == 0 and "0 checkpoint folders" in out and (work / "checkpoints" / "step-10" / "state.pt").is_file()

    old = time.time() - 31 * 86400
    for item in [work, *work.rglob("*")]:
        os.utime(item, (old, old))
    lock = Cache(cache).lock(work.name)
    lock.acquire()
    try:  # a live run resuming from them holds the key's lock
        assert cli("cache", "gc", "--older-than", "30", "--config", path)[0] == 0 and work.is_dir()
    finally:
        lock.release()
    code, out, _ = cli("cache", "gc", "--older-than", "30", "--config", path)
    assert code == 0 and "1 checkpoint folders" in out and not work.exists()


# -- a node failing on a full disk: one message, nothing left behind --------------------------------


class _FullDisk(io.TextIOBase):
    """The node log's stream on a full disk: every write and flush fails."""

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failing_node_on_a_full_disk_is_its_pass_error_and_leaves_no_staged_copy_or_empty_log(project, cli, monkeypatch):
    real_open, real_copy = logging.FileHandler._open, shutil.copyfile

    def copy(src, dst, *args, **kwargs):
        if Path(dst).parent.name == "logs":  # the copy gets as far as creating the file
            Path(dst).write_bytes(b"")
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(logging.FileHandler, "_open", lambda self: _FullDisk() if self.baseFilename.endswith("log.txt") else real_open(self))
    monkeypatch.setattr(shutil, "copyfile", copy)
    path = project.write("passes: {a: {type: fake, fail: true}}\n")
    code, _, err = cli("run", "--quiet", "--config", path)
    cache = project.root / ".slimops" / "cache"
    assert code == 1
    assert "pass 'a' failed: RuntimeError: fake failure requested by 'a'" in err
    assert f"its log is lost: the disk holding {cache} is full, free space there" in err
    assert "Logging error" not in err and "Traceback" not in err
    assert not list((cache / "tmp").iterdir())
    assert not [p for p in (cache / "logs").rglob("*") if p.is_file()]


def test_a_pass_that_fills_the_disk_says_so_and_where(project, cli):
    (project.root / "fillsdisk.py").write_text(
        "import errno\n"
        "import slimops\n"
        "from pydantic import BaseModel\n"
        "class Fill(slimops.Pass):\n"
        "    name = 'fill'\n"
        "    produces = 'text'\n"
        "    class Params(BaseModel):\n"
        "        pass\n"
        "    def run(self, ctx):\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device', str(ctx.output_dir / 'model.bin'))\n"
    )
    path = project.write("passes: {a: {type: 'fillsdisk:Fill'}}\n")
    code, _, err = cli("run", "--quiet", "--config", path)
    cache = project.root / ".slimops" / "cache"
    assert code == 1 and "pass 'a' failed: OSError: [Errno 28] No space left on device" in err
    assert "the disk is full: free space at " in err and "model.bin (or set engine.cache_dir elsewhere) and run again" in err
    assert not list((cache / "tmp").iterdir())


def test_a_cache_that_cannot_be_reached_fails_the_run_and_sets_nothing_aside(project, cli, monkeypatch):
    """Only a local folder without a readable manifest is damage; an unreachable remote is the run's error."""
    from slimops.errors import CacheError

    path = project.write(TWO)
    assert cli("run", "--quiet", "--config", path)[0] == 0

    def unreachable(self, key):
        raise CacheError("the cache at s3://bucket/x cannot be reached (read): ConnectionError")

    monkeypatch.setattr(Cache, "get", unreachable)
    code, _, err = cli("run", "--quiet", "--config", path)
    assert code == 1 and "cannot be reached" in err and "damaged" not in err, err
    assert not (project.root / ".slimops" / "cache" / "damaged").exists()
