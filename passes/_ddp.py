"""Fine-tuning on several processes: the pass's Trainer under torchrun (DDP; FSDP and DeepSpeed
configs passed through to transformers).

- `check(params)`: why `processes`, `fsdp` or `deepspeed` cannot work here, or None (plan time).
- `training_args(params, config_dir, cuda)`: what they add to the TrainingArguments.
- `share(batches, rows, world, classifier)`: the pass's token batches cut so that each rank takes
  its share of every batch; the global batch of a step stays the single-process one.
- `launch(ctx, train, method)`: `train(ctx, method)` on `processes` ranks; rank 0's Artifact.
- `python -m slimops.passes._ddp SPEC`: one rank, started by torchrun: rebuild the PassContext
  from SPEC, call the same `train`, write rank 0's result or this rank's error.

The parent writes what `train` reads from its PassContext (all but progress and log) into
`<work_dir>/ddp/spec.pkl` and starts `python -m torch.distributed.run --standalone` in a process
group of its own, its output appended to the node's log. Rank 0 reports progress as JSON lines
in `progress.jsonl`, which the parent tails into `ctx.progress`, and writes `result.json` (kind,
meta, metrics); a failing rank writes `rank-<N>.error` and the parent raises the earliest one.
Checkpoints stay in `<work_dir>/checkpoints`, written by rank 0 and read by every rank on resume.
torch is imported inside functions only.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from slimops import errors
from slimops.errors import DataError, SlimopsError
from slimops.passes import _ddp_nodes as _cluster
from slimops.plugin import Artifact, NullProgress, PassContext

RUN_DIR = "ddp"
# the PassContext fields a rank rebuilds; progress and log are its own
SPEC_FIELDS = ("node", "params", "inputs", "target", "output_dir", "work_dir", "data", "config_dir", "source", "ancestors")
STALE_AFTER_S = 5.0  # a step running longer than this shows how long it has run


def check(params: Any) -> str | None:
    if params.nodes > 1 and importlib.util.find_spec("ray") is None:
        return "nodes: trains across the machines of a Ray cluster; pip install 'slimops[cluster]' and set engine.executor: ray"
    if params.processes * params.nodes == 1 and (params.fsdp or params.deepspeed):
        return "fsdp and deepspeed shard training over several processes; set processes: 2 or more, or remove them"
    if params.fsdp and params.deepspeed:
        return "set fsdp or deepspeed, not both"
    if params.deepspeed and importlib.util.find_spec("deepspeed") is None:
        return "deepspeed: needs the deepspeed package (pip install deepspeed)"
    world = params.processes * params.nodes
    if world > 1 and params.batch_size and params.batch_size % world:
        return f"batch_size {params.batch_size} must be a multiple of processes x nodes ({world}): each process takes an equal share of every batch"
    return None


def training_args(params: Any, config_dir: Path, cuda: bool) -> dict[str, Any]:
    """TrainingArguments for `processes`, `fsdp` and `deepspeed` (none for a single process)."""
    if params.processes * params.nodes == 1:
        return {}
    # a fixed batch is split across the ranks by accelerate; token batches are shared by `share`
    args: dict[str, Any] = {"ddp_backend": "nccl" if cuda else "gloo", "accelerator_config": {"split_batches": bool(params.batch_size)},
                            "ddp_find_unused_parameters": False}  # every trainable weight is used: skip DDP's extra graph walk
    if isinstance(params.fsdp, str):
        args["fsdp"] = params.fsdp
    elif isinstance(params.fsdp, dict):
        config = dict(params.fsdp)
        args["fsdp"], args["fsdp_config"] = config.pop("fsdp", True), config
    if isinstance(params.deepspeed, str):
        args["deepspeed"] = str(config_dir / params.deepspeed)
    elif params.deepspeed:
        args["deepspeed"] = dict(params.deepspeed)
    return args


class _Shares:
    """A batch sampler yielding, for each batch of `batches`, one share per rank in rank order;
    accelerate deals them out round-robin, so rank r trains on `batch[r::world]` of every batch.
    A batch of fewer examples than ranks fills the missing shares with a copy of its first
    example whose labels are all masked (index `size + i`): no loss, no gradient, but every rank
    takes part in the step."""

    def __init__(self, batches, world: int, size: int) -> None:
        self.batches, self.world, self.size = batches, world, size

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches) * self.world

    def __iter__(self):
        for batch in self.batches:
            for rank in range(self.world):
                yield batch[rank :: self.world] or [self.size + batch[0]]


class _WithMasked:
    """The training rows, and past their end masked copies of them (see `_Shares`)."""

    def __init__(self, rows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        if index < len(self.rows):
            return self.rows[index]
        row = self.rows[index - len(self.rows)]
        return {**row, "labels": [-100] * len(row["labels"])}


def share(batches, rows, world: int, classifier: bool):
    """(batch sampler, dataset) for a token-batch loader on `world` ranks; unchanged for one.

    Raises:
        DataError: a classifier's batch holds fewer examples than there are ranks (a rank
            with no labelled example would make its mean loss NaN).
    """
    if world == 1:
        return batches, rows
    smallest = min((len(b) for b in batches.batches()), default=world)
    if classifier and smallest < world:
        raise DataError(f"a batch of {smallest} example(s) cannot be shared by {world} processes; raise batch_tokens or set batch_size")
    return _Shares(batches, world, len(rows)), _WithMasked(rows)


# -- the parent ------------------------------------------------------------------------------------


def launch(ctx: PassContext, train, method: str) -> Artifact:
    """Run `train(ctx, method)` on `ctx.params.processes` ranks under torchrun; return rank 0's Artifact.

    Raises:
        SlimopsError: a rank failed (DataError/ModelError when that is what it raised); the
            message names the rank and its error's first line, the traceback is in the node's log.
    """
    params = ctx.params
    if isinstance(params.deepspeed, str) and not (ctx.config_dir / params.deepspeed).is_file():
        raise SlimopsError(f"deepspeed: no file {ctx.config_dir / params.deepspeed}; the path is relative to the pipeline file")
    run_dir = ctx.work_dir / RUN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*run_dir.glob("rank-*.error"), run_dir / "result.json", run_dir / "progress.jsonl"]:
        stale.unlink(missing_ok=True)
    spec = {"train": train, "method": method, **{name: getattr(ctx, name) for name in SPEC_FIELDS},
            "params": (_importable(type(params)), params.model_dump())}
    blob = pickle.dumps(spec)
    (run_dir / "spec.pkl").write_bytes(blob)
    others = _cluster.start_nodes(ctx, blob) if params.nodes > 1 else None  # machines 1..nodes-1, under Ray
    command = [sys.executable, "-m", "torch.distributed.run", *(others.rendezvous(0) if others else ["--standalone"]),
               f"--nproc_per_node={params.processes}", "-m", "slimops.passes._ddp", str(run_dir / "spec.pkl")]
    ctx.log.info("%s: %d processes under torchrun%s: %s", method, params.processes,
                 f", node 0 of {params.nodes}" if others else "", " ".join(command))
    with open(_log_file(ctx, run_dir), "ab") as out:
        proc = subprocess.Popen(command, cwd=ctx.config_dir, env=rank_env(params.processes), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_cluster.die_with_parent)
        try:
            _relay_progress(proc, run_dir / "progress.jsonl", ctx.progress,
                            f"starting {params.processes * params.nodes} processes" + (f" on {params.nodes} machines" if others else ""))
        except BaseException:  # Ctrl-C, SIGTERM: no rank outlives the pass
            _stop(proc)
            if others:
                others.cancel()
            raise
    if others:
        others.collect(run_dir, ctx.log)  # their ranks' errors land beside this machine's
    if proc.returncode != 0 or (others and others.failed):
        raise _rank_error(ctx, run_dir, proc.returncode or 1)
    result = json.loads((run_dir / "result.json").read_text())
    return Artifact(path=ctx.output_dir / result["path"], kind=result["kind"], meta=result["meta"], metrics=result["metrics"])


def rank_env(processes: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # torchrun would pin every rank to one thread; share the cores out instead, unless the user chose
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return env


def _importable(cls: type) -> type:
    """The nearest class in `cls`'s MRO that its module names (the registry's strict subclass of a
    pass's Params is made at run time, so pickle cannot find it by name)."""
    return next(c for c in cls.__mro__ if c.__qualname__ == cls.__qualname__ and getattr(sys.modules.get(c.__module__), c.__qualname__, None) is c)


def _log_file(ctx: PassContext, run_dir: Path) -> Path:
    """The node's log file (the ranks' lines land between the parent's), else one beside the spec."""
    for handler in ctx.log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.flush()
            return Path(handler.baseFilename)
    return run_dir / "ranks.log"


def _relay_progress(proc: subprocess.Popen, path: Path, progress, first: str) -> None:
    """Pass rank 0's progress lines on until torchrun exits; a silence of STALE_AFTER_S (the ranks
    starting, a long step) shows how long it has lasted."""
    offset, last, since = 0, {"completed": 0, "total": None, "message": first}, time.monotonic()
    progress.update(0, None, first)
    while True:
        done = proc.poll() is not None
        if path.is_file():
            with open(path, "rb") as lines:
                lines.seek(offset)
                for line in lines:
                    if not line.endswith(b"\n"):
                        break  # half written; read it next time
                    offset += len(line)
                    last, since = json.loads(line), time.monotonic()
                    progress.update(last["completed"], last["total"], last["message"])
        if done:
            return
        if time.monotonic() - since > STALE_AFTER_S:
            progress.update(last["completed"], last["total"], f"{last['message']}  ({time.monotonic() - since:.0f} s since)")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to torchrun's process group (torchrun and every rank), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass


def _rank_error(ctx: PassContext, run_dir: Path, code: int) -> SlimopsError:
    """The first rank's error (the earliest written: the others fail when it leaves), as the
    slimops error class it raised or a plain SlimopsError."""
    reports = [json.loads(p.read_text()) for p in run_dir.glob("rank-*.error")]
    if not reports:
        return SlimopsError(f"torchrun exited with code {code} and no rank reported an error (killed? out of memory?); see the node's log")
    first = min(reports, key=lambda r: r["time"])
    ctx.log.error("rank %d failed:\n%s", first["rank"], first["traceback"])
    line = (first["message"].splitlines() or [""])[0]
    cls = getattr(errors, first["type"], None) if first["module"] == errors.__name__ else None
    if isinstance(cls, type) and issubclass(cls, SlimopsError) and cls.__init__ is SlimopsError.__init__:
        return cls(f"rank {first['rank']} of {ctx.params.processes * ctx.params.nodes}: {line}")
    return SlimopsError(f"rank {first['rank']} of {ctx.params.processes * ctx.params.nodes} failed: {first['type']}: {line}")


# -- one rank --------------------------------------------------------------------------------------


class _FileProgress:
    """Rank 0's progress, one JSON line per update, for the parent to relay."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def update(self, completed: float | None = None, total: float | None = None, message: str | None = None) -> None:
        with open(self.path, "a") as out:
            out.write(json.dumps({"completed": completed, "total": total, "message": message}) + "\n")


def main(argv: list[str]) -> int:
    spec_path = Path(argv[0])
    rank = int(os.environ.get("RANK", "0"))
    _cluster.die_with_parent()  # torchrun gone: so is this rank
    spec = pickle.loads(spec_path.read_bytes())
    run_dir = spec_path.parent
    log = logging.getLogger(f"slimops.rank.{rank}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [rank {rank}] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)  # one copy of each step's line
    log.propagate = False
    progress = _FileProgress(run_dir / "progress.jsonl") if rank == 0 else NullProgress()
    try:
        params_class, values = spec["params"]
        fields = {**{name: spec[name] for name in SPEC_FIELDS}, "params": params_class.model_validate(values)}
        ctx = PassContext(**fields, progress=progress, log=log)
        artifact = spec["train"](ctx, spec["method"])
    except BaseException as err:
        report = {"rank": rank, "type": type(err).__name__, "module": type(err).__module__, "message": str(err),
                  "traceback": "".join(traceback.format_exception(err)), "time": time.time()}
        (run_dir / f"rank-{rank}.error").write_text(json.dumps(report))
        log.error("%s", report["traceback"])
        return 1
    if rank == 0:
        result = {"path": str(Path(artifact.path).relative_to(ctx.output_dir)), "kind": artifact.kind,
                  "meta": artifact.meta, "metrics": artifact.metrics}
        (run_dir / "result.json.tmp").write_text(json.dumps(result, default=str))
        (run_dir / "result.json.tmp").replace(run_dir / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
