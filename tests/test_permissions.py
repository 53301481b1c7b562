"""Read-only folders, paths that are files and permission denied: one clear message, a non-zero exit,
nothing changed outside the run's folders, and the next run after the fix succeeds.

The runs happen in a child process that the kernel holds to file permissions. Tests often run as root,
who ignores them; the child then gives up the capabilities that override them (CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH, CAP_FOWNER) before it starts, so a read-only folder is read-only to it too."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_safety import tree_hash

PIPELINE = "passes:\n  a: {type: fake, value: one}\n  b: {type: fake, value: %s, inputs: [a]}\n"


def _bound_by_permissions() -> None:
    """In the child: drop the capabilities that let root ignore file modes (PR_CAPBSET_DROP, then exec)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot drop a capability; the test cannot make a folder read-only")


def slimops(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimops.cli", *args], cwd=root, capture_output=True, text=True,
                          preexec_fn=_bound_by_permissions, timeout=120)


def _read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)


def _writable(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)


@pytest.fixture
def built(project):
    """A project whose pipeline ran once: a cache with two entries and an output folder."""
    (project.root / "notes.txt").write_text("mine\n")
    project.write(PIPELINE % "two")
    done = slimops(project.root, "run", "--quiet", "--config", "pipeline.yaml")
    assert done.returncode == 0, done.stderr
    return project.root


def test_the_child_is_held_to_file_permissions(tmp_path):
    """Without this the cases below would prove nothing when the tests run as root."""
    locked = tmp_path / "locked"
    locked.mkdir()
    _read_only(locked)
    done = subprocess.run([sys.executable, "-c", f"open({str(locked / 'x')!r}, 'w')"], capture_output=True,
                          text=True, preexec_fn=_bound_by_permissions)
    assert done.returncode == 1 and "PermissionError" in done.stderr


CASES = [
    # (what, folder made read-only, pipeline's b value, exit code, message)
    ("a read-only cache serves what it holds", ".slimops", "two", 0, "2 from cache"),
    ("a read-only cache cannot take a new node", ".slimops", "three", 1,
     "Permission denied at {root}/.slimops/cache/locks/"),
    ("a read-only output folder", "out", "three", 1, "Permission denied at {root}/out/"),
]


@pytest.mark.parametrize("folder, value, code, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_read_only_folder_is_one_clear_message_and_the_fixed_run_succeeds(built, folder, value, code, message):
    (built / "pipeline.yaml").write_text(PIPELINE % value)
    before = tree_hash(built)
    _read_only(built / folder)
    try:
        done = slimops(built, "run", "--quiet", "--config", "pipeline.yaml")
    finally:
        _writable(built / folder)
    assert done.returncode == code and message.format(root=built) in done.stderr and "Traceback" not in done.stderr, done.stderr
    if code:
        assert "read-only or not yours: fix its permissions" in done.stderr
        assert tree_hash(built) == before  # nothing written, nothing half-written
    done = slimops(built, "run", "--quiet", "--config", "pipeline.yaml")
    assert done.returncode == 0, done.stderr
    assert (built / "out" / "b" / "out.txt").read_text().startswith(f"value={value}")
    assert slimops(built, "cache", "verify", "--config", "pipeline.yaml").returncode == 0
    assert (built / "notes.txt").read_text() == "mine\n"


PATH_CASES = [
    # (what, --set, exit code, message)
    ("the cache path is a file", "engine.cache_dir=notes.txt", 2,
     "--set engine.cache_dir: 'notes.txt' is a file ({root}/notes.txt); give a folder"),
    ("the output path is a file", "engine.output_dir=notes.txt", 2,
     "--set engine.output_dir: 'notes.txt' is a file ({root}/notes.txt); give a folder"),
    ("the cache folder cannot be made", "engine.cache_dir=locked/cache", 1,
     "cannot write to the cache folder {root}/locked/cache: Permission denied"),
    ("the output folder cannot be made", "engine.output_dir=locked/out", 1,
     "cannot write to the output folder {root}/locked/out: Permission denied"),
]


@pytest.mark.parametrize("override, code, message", [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES])
def test_a_path_slimops_cannot_use_is_one_clear_message(built, override, code, message):
    (built / "locked").mkdir()
    _read_only(built / "locked")
    before = tree_hash(built)
    try:
        done = slimops(built, "run", "--quiet", "--config", "pipeline.yaml", "--set", override)
    finally:
        _writable(built / "locked")
    assert done.returncode == code and message.format(root=built) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and tree_hash(built) == before


def test_an_unreadable_config_is_a_config_error(built):
    (built / "pipeline.yaml").chmod(0o200)
    done = slimops(built, "validate", "--config", "pipeline.yaml")
    assert done.returncode == 2 and "pipeline.yaml: cannot read the file" in done.stderr, done.stderr
    assert "Permission denied" in done.stderr and "Traceback" not in done.stderr
