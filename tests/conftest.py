"""Shared fixtures: write a pipeline into a temporary project and run the CLI on it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from slimops.cli import main


@pytest.fixture
def project(tmp_path: Path):
    """A temporary project folder; `project.write(text)` writes pipeline.yaml there."""

    class Project:
        root = tmp_path

        def write(self, text: str, name: str = "pipeline.yaml") -> Path:
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip())
            return path

    return Project()


@pytest.fixture
def cli(capsys):
    """Run `slimops ARGS`; returns (exit code, stdout, stderr)."""

    def call(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


@pytest.fixture(autouse=True, scope="session")
def _private_hash_memo(tmp_path_factory):
    """The user's shared memo of file hashes goes to a temporary file, not ~/.cache."""
    import os

    os.environ["SLIMOPS_HASH_MEMO"] = str(tmp_path_factory.mktemp("memo") / "file-hashes.json")


# Every package the product promises is declared, so a test skipped because one could not be
# imported hides a broken install: it fails instead, on CI and everywhere else.
def _missing_import(report) -> bool:
    return report.skipped and "could not import" in str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _missing_import(report):
        report.outcome = "failed"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _missing_import(report):
        report.outcome = "failed"
