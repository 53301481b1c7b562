"""Processes that leave without tearing the interpreter down: the builder's launcher and the CLI.

A module-level object whose finaliser writes a file shows whether teardown ran; an exit handler
that writes another shows that the handlers still run. Plain `python -m` is the control.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from slimops.passes._onnx.builder import LAUNCHER

MODULE = """\
import atexit, pathlib, sys

here = pathlib.Path(__file__).parent


class Finaliser:
    def __del__(self):
        (here / "teardown.txt").write_text("ran")


kept = Finaliser()
atexit.register(lambda: (here / "atexit.txt").write_text("ran"))
(here / "argv.txt").write_text(" ".join(sys.argv[1:]))
if "--fail" in sys.argv:
    raise RuntimeError("builder broke")
if "--exit" in sys.argv:
    sys.exit(3)
sys.stdout.write("no newline at the end")
"""


def _module(tmp_path):
    (tmp_path / "fake_builder.py").write_text(MODULE)
    return tmp_path


def _run(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_plain_python_m_runs_teardown(tmp_path):
    """The control: without the launcher, the module's finaliser runs at exit."""
    folder = _module(tmp_path)
    done = _run([sys.executable, "-m", "fake_builder", "-o", "out"], folder)
    assert done.returncode == 0
    assert (folder / "teardown.txt").exists()


def test_launcher_runs_the_module_as_main_and_skips_teardown(tmp_path):
    folder = _module(tmp_path)
    done = _run([sys.executable, "-c", LAUNCHER, "fake_builder", "-o", "out", "--extra_options", "a=1"], folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "no newline at the end"  # flushed before leaving
    assert (folder / "argv.txt").read_text() == "-o out --extra_options a=1"  # the module sees only its own arguments
    assert (folder / "atexit.txt").read_text() == "ran"
    assert not (folder / "teardown.txt").exists()


def test_launcher_passes_failures_through(tmp_path):
    folder = _module(tmp_path)
    failed = _run([sys.executable, "-c", LAUNCHER, "fake_builder", "--fail"], folder)
    assert failed.returncode == 1
    assert "RuntimeError: builder broke" in failed.stderr
    exited = _run([sys.executable, "-c", LAUNCHER, "fake_builder", "--exit"], folder)
    assert exited.returncode == 3


def test_cli_leave_flushes_runs_exit_handlers_and_skips_teardown(tmp_path):
    script = textwrap.dedent(f"""\
        import atexit, pathlib
        from slimops.cli import leave
        here = pathlib.Path({str(tmp_path)!r})
        class Finaliser:
            def __del__(self):
                (here / "teardown.txt").write_text("ran")
        kept = Finaliser()
        atexit.register(lambda: (here / "atexit.txt").write_text("ran"))
        print("summary", end="")
        leave(4)
    """)
    done = _run([sys.executable, "-c", script], tmp_path)
    assert done.returncode == 4
    assert done.stdout == "summary"
    assert (tmp_path / "atexit.txt").exists()
    assert not (tmp_path / "teardown.txt").exists()


def test_cli_entry_keeps_the_exit_status(tmp_path):
    done = _run([sys.executable, "-m", "slimops.cli", "validate", "--config", str(tmp_path / "absent.yaml")], tmp_path)
    assert done.returncode == 2
    assert "absent.yaml" in done.stderr
    done = _run([sys.executable, "-m", "slimops.cli", "passes"], tmp_path)
    assert done.returncode == 0
    assert "onnx" in done.stdout
