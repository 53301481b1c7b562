"""What the output folder ships is what the cache holds: a folder is claimed only when it is empty or
slimops's own, a node folder is trusted by its files (never by an older run.json), a link is never
followed, and the output and cache folders never sit inside one another."""

from __future__ import annotations

import hashlib
import json
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
