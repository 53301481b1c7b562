"""Fine-tuning across machines (`nodes: N`): torchrun on N machines of a Ray cluster, one rendezvous.

- `start_nodes(ctx, spec)`: machines 1..N-1 as Ray tasks, each running torchrun with its node rank;
  returns a `Machines` whose `rendezvous(0)` gives the node's own torchrun its flags.
- `die_with_parent()`: a child process's preexec: Linux signals it when its parent dies.

The node's own task is machine 0: it runs torchrun as for one machine, but with `--nnodes N
--node_rank 0 --master_addr <its address> --master_port <a free port>`, so global rank 0 (which
writes the artifact and the checkpoints) runs where the node's output folder is. The other machines
are Ray tasks of `processes` CPUs (and GPUs) each, spread over the cluster; each writes the spec into
a folder of its own and runs torchrun with its node rank. Their ranks read the inputs, the data and
the node's work folder (checkpoints, for resume) at the paths the spec names, so those must be on
every machine: the project and the cache's folder (or `engine.local_cache_dir`) on a shared mount.
A machine that lacks one says which, and a failing rank's error comes back to machine 0, which
fails the node with the first one.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from slimops.errors import SlimopsError

RANKS_MODULE = "slimops.passes._ddp"


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies, even by SIGKILL (elsewhere: nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Machines:
    """The Ray tasks of machines 1..N-1, and the rendezvous they share with machine 0."""

    def __init__(self, ray, refs: list, address: str, port: int, nodes: int):
        self.ray, self.refs, self.address, self.port, self.nodes = ray, refs, address, port, nodes
        self.failed = False

    def rendezvous(self, node_rank: int) -> list[str]:
        return [f"--nnodes={self.nodes}", f"--node_rank={node_rank}", f"--master_addr={self.address}", f"--master_port={self.port}"]

    def cancel(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)

    def collect(self, run_dir: Path, log) -> None:
        """Wait for the other machines; their ranks' error reports go into `run_dir`, their output into the log."""
        for node_rank, ref in enumerate(self.refs, start=1):
            try:
                outcome = self.ray.get(ref)
            except self.ray.exceptions.RayError as err:
                outcome = {"code": 1, "where": "?", "log": "", "errors": [_report(-node_rank, f"machine {node_rank}'s Ray task was lost: {type(err).__name__}")]}
            if outcome["log"]:
                log.info("machine %d (%s):\n%s", node_rank, outcome["where"], outcome["log"])
            for report in outcome["errors"]:
                (run_dir / f"rank-{report['rank']}.error").write_text(json.dumps(report))
            self.failed = self.failed or outcome["code"] != 0


def start_nodes(ctx, spec: bytes) -> Machines:
    """Start torchrun on `nodes - 1` other machines of the Ray cluster this pass runs in.

    Raises:
        SlimopsError: the pass is not running under Ray, or the cluster has too few machines.
    """
    params = ctx.params
    try:
        import ray
    except ImportError:
        raise SlimopsError("nodes: trains across the machines of a Ray cluster: pip install 'slimops[cluster]'") from None
    if not ray.is_initialized() or ray.get_runtime_context().get_task_id() is None:  # not in a Ray task
        raise SlimopsError(f"nodes: {params.nodes} trains across the machines of a Ray cluster; set engine.executor: ray")
    gpus = float(params.processes) if ctx.target is not None and getattr(ctx.target, "device", None) == "cuda" else 0.0
    fit = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= params.processes]
    if len(fit) < params.nodes:
        raise SlimopsError(f"nodes: {params.nodes} needs {params.nodes} machines of {params.processes} CPUs each; "
                           f"the Ray cluster has {len(fit)}")
    address = ray.util.get_node_ip_address()
    with socket.socket() as probe:  # a free port on this machine for the rendezvous store
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    machines = Machines(ray, [], address, port, params.nodes)
    task = ray.remote(_machine).options(num_cpus=params.processes, num_gpus=gpus, scheduling_strategy="SPREAD", max_retries=0)
    machines.refs = [task.remote(spec, node_rank, machines.rendezvous(node_rank), params.processes)
                     for node_rank in range(1, params.nodes)]
    return machines


def _report(rank: int, message: str, kind: str = "SlimopsError") -> dict[str, Any]:
    return {"rank": rank, "type": kind, "module": "slimops.errors", "message": message, "traceback": message, "time": time.time()}


def _needed_paths(spec: dict[str, Any]) -> list[Path]:
    paths = [Path(spec["work_dir"])]
    for artifact in [*spec["inputs"].values(), *([spec["source"]] if spec["source"] else [])]:
        paths.append(Path(artifact.path))
    for data in spec["data"].values():
        paths.extend(Path(f) for f in data.file_list())
    return paths


def _machine(spec: bytes, node_rank: int, rendezvous: list[str], processes: int) -> dict[str, Any]:
    """One of machines 1..N-1: its ranks under torchrun, in a folder of its own."""
    where = socket.gethostname()
    first_rank = node_rank * processes
    loaded = pickle.loads(spec)
    missing = [p for p in _needed_paths(loaded) if not p.exists()]
    if missing:
        message = (f"machine {node_rank} ({where}) has no {missing[0]}; nodes: > 1 needs the project and the cache's "
                   "folder (or engine.local_cache_dir) on a folder every machine mounts at the same path")
        return {"code": 1, "where": where, "log": "", "errors": [_report(first_rank, message)]}
    run_dir = Path(tempfile.mkdtemp(prefix=f"slimops-machine-{node_rank}-"))
    try:
        (run_dir / "spec.pkl").write_bytes(spec)
        command = [sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc_per_node={processes}",
                   "-m", RANKS_MODULE, str(run_dir / "spec.pkl")]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        done = subprocess.run(command, cwd=loaded["config_dir"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True, preexec_fn=die_with_parent)
        errors = [json.loads(p.read_text()) for p in run_dir.glob("rank-*.error")]
        return {"code": done.returncode, "where": where, "log": done.stdout.decode(errors="replace")[-200_000:], "errors": errors}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
