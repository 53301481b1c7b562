"""What the output folder ships is what the cache holds: a folder is claimed only when it is empty or
slimops's own, a node folder is trusted by its files (never by an older run.json), a link is never
followed, and the output and cache folders never sit inside one another."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

PIPELINE = "passes: {a: {type: fake, value: x}, b: {type: fake, value: b}}\n"


def tree_hash(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256), so a test can tell that nothing changed."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def first_line(path: Path) -> str:
    return path.read_text().splitlines()[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".old")))


# -- claiming a folder without the marker ---------------------------------------------------------

SLIMOPS_RUN_JSON = json.dumps({"name": "p", "nodes": {"a": {"key": "0" * 64, "pass_name": "fake", "cached": False}}})

REFUSED = [
    ("files named like slimops's", {"model/config.json": "{}", ".git/HEAD": "ref: main\n", "report.md": "MY REPORT\n"},
     "(.git, model, report.md)"),
    ("a run.json that is not slimops's", {"run.json": '{"nodes": "mine"}', "report.md": "MY REPORT\n"}, "(report.md, run.json)"),
    ("a run.json that is not JSON", {"run.json": "my notes", "trials/notes.txt": "mine\n"}, "(run.json, trials)"),
    ("a dotfile beside an older run.json", {"run.json": SLIMOPS_RUN_JSON, "a/out.txt": "x\n", ".git/HEAD": "ref: main\n"}, "(.git)"),
]


@pytest.mark.parametrize("files, shown", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_folder_of_the_users_files_is_refused_whatever_their_names(project, cli, files, shown):
    results = project.root / "results"
    for name, text in files.items():
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text(text)
    before = sorted(p.relative_to(results).as_posix() for p in results.rglob("*")), tree_hash(results)
    path = project.write(PIPELINE)
    code, _, err = cli("run", "--config", path, "--set", "engine.output_dir=results")
    assert code == 2, err
    assert f"the output folder {results} holds files slimops did not write {shown}" in err, err
    assert "set engine.output_dir to a new folder (e.g. out), or empty this one" in err
    assert (sorted(p.relative_to(results).as_posix() for p in results.rglob("*")), tree_hash(results)) == before


def test_validate_and_plan_refuse_the_folder_run_would_refuse_and_write_nothing_there(project, cli):
    results = project.root / "results"
    results.mkdir()
    (results / "notes.txt").write_text("mine\n")
    path = project.write(PIPELINE + "engine: {output_dir: results}\n")
    for command in ("validate", "plan"):
        code, _, err = cli(command, "--config", path)
        assert code == 2 and f"{path}:2 engine.output_dir: the output folder {results} holds files slimops did not write (notes.txt)" in err, err
    assert sorted(p.name for p in results.iterdir()) == ["notes.txt"]  # no marker, no lock


ADOPTED = [
    ("an empty folder", {}),
    ("what a claim killed before its marker left", {".slimops-output.lock": "", "..slimops-output.json.4242.tmp": "{"}),
    ("a search's folder before its best run", {"trials.json": '{"trials": []}', "trials/000/run.json": SLIMOPS_RUN_JSON}),
]


@pytest.mark.parametrize("files", [c[1] for c in ADOPTED], ids=[c[0] for c in ADOPTED])
def test_an_empty_folder_or_one_slimops_left_is_adopted(project, cli, files):
    results = project.root / "results"
    results.mkdir()
    for name, text in files.items():
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text(text)
    path = project.write(PIPELINE)
    code, _, err = cli("run", "--quiet", "--config", path, "--set", "engine.output_dir=results")
    assert code == 0, err
    assert first_line(results / "a" / "out.txt") == "value=x"


# -- a node folder is trusted by its files --------------------------------------------------------


def test_a_node_folder_holding_another_entry_than_run_json_says_is_replaced(project, cli):
    """A run killed after replacing out/a, before writing run.json, left the older run.json beside it."""
    path = project.write(PIPELINE)
    out = project.root / "out"
    assert cli("run", "--quiet", "--config", path)[0] == 0
    older = (out / "run.json").read_text()
    assert cli("run", "--quiet", "--config", path, "--set", "passes.a.value=y")[0] == 0
    (out / "run.json").write_text(older)
    code, _, err = cli("run", "--config", path)
    assert code == 0, err
    assert "2 nodes, 2 from cache" in err
    assert first_line(out / "a" / "out.txt") == "value=x"
    assert leftovers(out) == []


def test_a_terminated_run_that_replaced_a_node_folder_is_repaired_by_the_next_run(project, cli):
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    path = project.write(PIPELINE)
    out = project.root / "out"
    assert cli("run", "--quiet", "--config", path)[0] == 0
    slow = subprocess.Popen([sys.executable, "-m", "slimops.cli", "run", "--quiet", "--config", str(path),
                             "--set", "passes.a.value=y", "--set", "passes.b.seconds=30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:  # until a is replaced (it is missing for a moment while it is); b is still working
        with contextlib.suppress(FileNotFoundError):
            if first_line(out / "a" / "out.txt") == "value=y":
                break
        assert slow.poll() is None and time.monotonic() < deadline, slow.communicate()
        time.sleep(0.05)
    slow.send_signal(signal.SIGTERM)
    assert slow.wait(timeout=60) == 143
    code, _, err = cli("run", "--config", path)
    assert code == 0, err
    assert "2 nodes, 2 from cache" in err
    assert first_line(out / "a" / "out.txt") == "value=x"


def _truncate(folder: Path) -> None:
    (folder / "out.txt").write_text("")


def _delete(folder: Path) -> None:
    (folder / "out.txt").unlink()


def _add(folder: Path) -> None:
    (folder / "stray.txt").write_text("not the entry's\n")


def _same_size(folder: Path) -> None:
    text = (folder / "out.txt").read_text()
    (folder / "out.txt").write_text(text.replace("value=", "VALUE="))


def _link(folder: Path) -> None:
    (folder / "real.txt").write_text((folder / "out.txt").read_text())
    (folder / "out.txt").unlink()
    (folder / "out.txt").symlink_to("real.txt")


def _file(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.write_text("value=x\n")


DAMAGE = [("truncated", _truncate), ("deleted", _delete), ("a stray file", _add), ("same size, other bytes", _same_size),
          ("a file made a link", _link), ("the folder made a file", _file)]


@pytest.mark.parametrize("damage", [d[1] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_a_damaged_node_folder_is_replaced_and_nothing_else_is_touched(project, cli, damage):
    path = project.write(PIPELINE)
    out = project.root / "out"
    assert cli("run", "--quiet", "--config", path)[0] == 0
    shipped = {node: tree_hash(out / node) for node in "ab"}
    (out / "notes.txt").write_text("the user's\n")
    (out / ".a.draft.old").write_text("the user's, named like a leftover\n")
    damage(out / "a")
    damage(out / "b")
    code, _, err = cli("run", "--config", path)
    assert code == 0, err
    assert "2 nodes, 2 from cache" in err
    assert {node: tree_hash(out / node) for node in "ab"} == shipped
    assert not any(p.is_symlink() for node in "ab" for p in (out / node).rglob("*"))
    assert (out / "notes.txt").read_text() == "the user's\n"
    assert (out / ".a.draft.old").read_text() == "the user's, named like a leftover\n"
    assert leftovers(out) == [".a.draft.old"]


def test_an_unchanged_node_folder_is_neither_read_nor_copied_again(project, cli, monkeypatch):
    from slimops import keys

    path = project.write(PIPELINE)
    out = project.root / "out"
    assert cli("run", "--quiet", "--config", path)[0] == 0
    inode = (out / "a" / "out.txt").stat().st_ino
    reads: list[Path] = []
    real = keys.sha256_file
    monkeypatch.setattr(keys, "sha256_file", lambda p: reads.append(p) or real(p))
    assert cli("run", "--quiet", "--config", path)[0] == 0
    assert reads == []
    assert (out / "a" / "out.txt").stat().st_ino == inode


def test_an_interrupted_replace_leaves_the_old_node_folder(project, cli, monkeypatch):
    """Ctrl-C or SIGTERM between setting the old folder aside and renaming the new one into place."""
    path = project.write(PIPELINE)
    out = project.root / "out"
    assert cli("run", "--quiet", "--config", path)[0] == 0
    real = os.rename

    def interrupted(src, dst, *args, **kwargs):
        if Path(src).name.endswith(".tmp") and Path(dst) == out / "a":
            raise KeyboardInterrupt
        return real(src, dst, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", interrupted)
        code, _, err = cli("run", "--quiet", "--config", path, "--set", "passes.a.value=y")
    assert code == 130, err
    assert first_line(out / "a" / "out.txt") == "value=x"
    assert leftovers(out) == []


# -- links are unlinked, never followed -----------------------------------------------------------


def test_a_linked_node_folder_is_replaced_and_the_folder_it_names_is_kept(project, cli):
    path = project.write(PIPELINE)
    out, mine = project.root / "out", project.root / "mine"
    assert cli("run", "--quiet", "--config", path)[0] == 0
    mine.mkdir()
    (mine / "keep.txt").write_text("the user's\n")
    shutil.rmtree(out / "a")
    (out / "a").symlink_to("../mine")
    (out / ".a.4242.old").symlink_to("../mine")  # what an older slimops left, and could not remove
    code, _, err = cli("run", "--quiet", "--config", path, "--set", "passes.a.value=y")
    assert code == 0, err
    assert not (out / "a").is_symlink() and first_line(out / "a" / "out.txt") == "value=y"
    assert leftovers(out) == []
    assert tree_hash(mine) == {"keep.txt": hashlib.sha256(b"the user's\n").hexdigest()}


# -- the output and cache folders apart -----------------------------------------------------------

NESTED = [
    ("output inside the cache", "{output_dir: c1/logs, cache_dir: c1}",
     "engine.output_dir: 'c1/logs' is inside engine.cache_dir (ROOT/c1), so clearing the cache would delete the outputs"),
    ("output is the cache", "{output_dir: c1, cache_dir: c1}",
     "engine.output_dir: 'c1' is engine.cache_dir (ROOT/c1), so clearing the cache would delete the outputs"),
    ("output inside the default cache", "{output_dir: .slimops/cache/out}",
     "engine.output_dir: '.slimops/cache/out' is inside engine.cache_dir (ROOT/.slimops/cache)"),
    ("cache under a node's name in the output", "{output_dir: out, cache_dir: out/a}",
     "engine.cache_dir: 'out/a' is inside engine.output_dir (ROOT/out), where node folders and reports land"),
]


@pytest.mark.parametrize("engine, message", [c[1:] for c in NESTED], ids=[c[0] for c in NESTED])
def test_an_output_folder_and_a_cache_folder_inside_one_another_are_refused(project, cli, engine, message):
    path = project.write(f"engine: {engine}\n" + PIPELINE)
    for command in ("validate", "run"):
        code, _, err = cli(command, "--config", path)
        assert code == 2, err
        assert message.replace("ROOT", str(project.root)) in err, err
        assert "give each a folder of its own (e.g. out and .slimops/cache)" in err
    assert sorted(p.name for p in project.root.iterdir()) == ["pipeline.yaml"]


def test_a_cache_under_a_hidden_name_of_the_output_folder_survives_and_clearing_it_keeps_the_outputs(project, cli):
    path = project.write("engine: {output_dir: out, cache_dir: out/.cache}\n" + PIPELINE)
    out = project.root / "out"
    assert cli("run", "--quiet", "--config", path)[0] == 0
    shipped = tree_hash(out / "a")
    assert cli("cache", "clear", "--yes", "--config", path)[0] == 0
    assert tree_hash(out / "a") == shipped
