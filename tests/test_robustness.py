"""Kills, concurrent runs and plugins: the cache never holds a half entry, and plugins load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import slimops

SLOW = """
passes:
  first: {type: fake, value: quick}
  slow: {type: fake, value: slow, seconds: %s}
  last: {type: fake}
"""


def _run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "slimops.cli", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible,
    )


def _interruptible() -> None:
    """In the child: Ctrl-C as a terminal delivers it, whatever the test process's libraries did to
    its own signal mask or SIGINT disposition (a child inherits both; once, in a full CI run, the
    child never saw the test's SIGINT)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_sigkill_mid_pass_leaves_no_half_entry_and_rerun_resumes(project, cli):
    path = project.write(SLOW % 30)
    cache = project.root / ".slimops" / "cache"
    proc = _run_cli("run", "--config", str(path))
    _wait_for(lambda: any((cache / "tmp").glob("*")) and len(list((cache / "entries").glob("*"))) == 1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    entries = [json.loads((d / "manifest.json").read_text())["node"] for d in (cache / "entries").iterdir()]
    assert entries == ["first"]  # the slow node left only a temp folder, not an entry
    code, out, err = cli("run", "--quiet", "--config", path, "--set", "passes.slow.seconds=0")
    assert code == 0, err
    result = json.loads((project.root / "out" / "run.json").read_text())
    assert result["nodes"]["first"]["cached"] is True
    assert result["nodes"]["slow"]["cached"] is False
    code, out, _ = cli("cache", "verify", "--config", path)
    assert code == 0 and "0 problems" in out
    assert not list((cache / "tmp").glob("*")), "the dead run's temp folder was cleaned"


def test_verify_finds_a_corrupted_entry(project, cli):
    path = project.write(SLOW % 0)
    result = slimops.run(path)
    entry = project.root / ".slimops" / "cache" / "entries" / result["slow"].key / "artifact" / "out.txt"
    entry.unlink()
    entry.write_text("tampered\n")
    code, out, _ = cli("cache", "verify", "--config", path)
    assert code == 1 and "out.txt changed" in out


def test_two_concurrent_runs_share_one_entry_per_node(project):
    path = project.write(SLOW % 1.5)
    procs = [_run_cli("run", "--config", str(path)) for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    logs = "".join(err for _, err in outputs)
    assert logs.count("[   done] slow") == 1, logs  # built once; the other run waited and reused it
    assert logs.count("[ cached] slow") == 1, logs
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (project.root / ".slimops" / "cache" / "entries").iterdir()]
    nodes = sorted(m["node"] for m in manifests)
    assert nodes == ["first", "last", "slow"]


def test_plugin_from_a_module_beside_the_config(project):
    (project.root / "shout.py").write_text(
        "from pydantic import BaseModel\n"
        "import slimops\n"
        "class Shout(slimops.Pass):\n"
        "    name = 'shout'\n"
        "    consumes = ('text',)\n"
        "    produces = 'text'\n"
        "    class Params(BaseModel):\n"
        "        suffix: str = '!'\n"
        "    def run(self, ctx):\n"
        "        text = (ctx.input.path / 'out.txt').read_text().upper()\n"
        "        (ctx.output_dir / 'loud.txt').write_text(text + ctx.params.suffix)\n"
        "        return slimops.Artifact(path=ctx.output_dir, kind='text')\n"
    )
    path = project.write("passes:\n  a: {type: fake, value: quiet}\n  b: {type: 'shout:Shout', suffix: '?!'}\n")
    slimops.run(path)
    loud = (project.root / "out" / "b" / "loud.txt").read_text()
    assert "VALUE=QUIET" in loud and loud.endswith("?!")


def test_plugin_from_an_entry_point(project, tmp_path):
    site = tmp_path / "site"
    (site / "echo_plugin").mkdir(parents=True)
    (site / "echo_plugin" / "__init__.py").write_text(
        "import slimops\n"
        "from slimops.passes.fake import Fake\n"
        "class Echo(Fake):\n"
        "    name = 'echo'\n"
    )
    info = site / "echo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[slimops.passes]\necho = echo_plugin:Echo\n")
    path = project.write("passes:\n  a: {type: echo, value: from-entry-point}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = _run_cli("run", "--quiet", "--config", str(path), env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "value=from-entry-point" in (project.root / "out" / "a" / "out.txt").read_text()
    listing = subprocess.run([sys.executable, "-m", "slimops.cli", "passes"], env=env, capture_output=True, text=True)
    assert "echo" in listing.stdout


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
                         ids=["ctrl-c", "sigterm"])
def test_an_interrupt_mid_pass_exits_with_its_code_and_cleans_its_temp_folder(project, sig, code, word):
    path = project.write(SLOW % 30)
    cache = project.root / ".slimops" / "cache"
    proc = _run_cli("run", "--config", str(path))
    _wait_for(lambda: any((cache / "tmp").glob("*")) and len(list((cache / "entries").glob("*"))) == 1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code
    assert word in err and "Traceback" not in err
    assert not list((cache / "tmp").glob("*"))
    assert len(list((cache / "entries").glob("*"))) == 1
    assert not [p for p in (project.root / "out").glob(".*") if p.name.endswith((".tmp", ".old"))]


def test_a_killed_runs_half_copied_output_is_removed(project):
    path = project.write(SLOW % 0)
    slimops.run(path)
    leftover = project.root / "out" / ".slow.999999.tmp"
    leftover.mkdir()
    (leftover / "half.bin").write_bytes(b"\0" * 10)
    slimops.run(path, ["passes.slow.value=changed"])
    assert not leftover.exists()
    assert (project.root / "out" / "slow" / "out.txt").read_text().startswith("value=changed")


def test_a_plugins_params_reject_unknown_keys_and_a_nameless_pass_is_refused(project, cli):
    """A Params written as the plugin guide shows (no model_config) still fails on a misspelt key,
    and a pass class without a `name` is refused with the rule it breaks."""
    (project.root / "loose.py").write_text(
        "from pydantic import BaseModel\n"
        "import slimops\n"
        "class Loose(slimops.Pass):\n"
        "    name = 'loose'\n"
        "    class Params(BaseModel):\n"
        "        suffix: str = '!'\n"
        "    def run(self, ctx):\n"
        "        return slimops.Artifact(path=ctx.output_dir, kind='text')\n"
        "class Nameless(slimops.Pass):\n"
        "    pass\n"
    )
    path = project.write("passes:\n  a: {type: fake, value: quiet}\n  b: {type: 'loose:Loose', sufix: '?'}\n")
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and "passes.b.sufix: unknown key; did you mean 'suffix'?" in err
    path = project.write("passes:\n  b: {type: 'loose:Nameless'}\n")
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and "sets no `name`" in err


def test_a_run_in_another_pid_namespace_keeps_a_live_runs_temp_folder(project, cli):
    """Two containers sharing a cache volume see different PIDs: liveness is the writer's lock."""
    if subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow a new PID namespace")
    slow = project.write(SLOW % 4, name="slow.yaml")
    other = project.write("passes: {x: {type: fake, value: other}}\n", name="other.yaml")
    cache = project.root / ".slimops" / "cache"
    # the run gets a PID in its namespace that no process has out here, as a PID check would not see it
    pid = next(p for p in range(300, 30000) if not Path(f"/proc/{p}").exists())
    script = f'i=2; while [ $i -lt {pid} ]; do /bin/true; i=$((i+1)); done; "$@"'  # each fork takes the next PID
    inside = subprocess.Popen(["unshare", "--pid", "--fork", "sh", "-c", script, "sh", sys.executable, "-m", "slimops.cli",
                               "run", "--quiet", "--config", str(slow), "--set", "engine.output_dir=out-slow"],
                              cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(list((cache / "entries").glob("*"))) == 1 and any((cache / "tmp").glob("*")))
    writing = list((cache / "tmp").iterdir())
    assert [p.name.split(".")[1] for p in writing] == [str(pid)]
    code, _, err = cli("run", "--quiet", "--config", other)
    assert code == 0, err
    assert all(p.is_dir() for p in writing), "the other run deleted a live run's temp folder"
    _, err = inside.communicate(timeout=60)
    assert inside.returncode == 0, err
    assert (project.root / "out-slow" / "last" / "out.txt").is_file()
    assert cli("cache", "verify", "--config", slow)[0] == 0
