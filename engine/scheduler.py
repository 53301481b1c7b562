"""Running a plan: each node from the cache when it can, else by its pass (`slimops.build`).

The local executor builds the nodes one after another in topological order; `engine.executor: ray`
hands the misses to `slimops.executor`, which runs every ready node as a Ray task. Either way the
driver keeps the input model, the cache hits and the output folder: finished artifacts are copied
there (not hard-linked: onnx refuses external data with more than one link) unless the node's
folder already holds the entry's files, and `run.json` records every node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimops.build import artifact_of, job_for, obtain
from slimops.cache import ARTIFACT, Entry
from slimops.config import PipelineConfig
from slimops.display import NodeProgress, RunDisplay
from slimops.errors import GoalError, SlimopsError
from slimops.keys import HashMemo
from slimops.outputs import RUN_JSON, OutputFolder, holds, remove, scratch
from slimops.planner import Node, Plan
from slimops.plugin import Artifact


@dataclass
class NodeResult:
    """What a run made of one node."""

    id: str
    pass_name: str
    target: str | None
    key: str
    cached: bool
    path: str
    kind: str
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunResult:
    """The outcome of `slimops.run`: a result per node, and where they were written."""

    name: str
    output_dir: Path
    nodes: dict[str, NodeResult]
    seconds: float

    def __getitem__(self, node_id: str) -> NodeResult:
        return self.nodes[node_id]

    @property
    def run_json(self) -> Path:
        return self.output_dir / RUN_JSON


def execute(plan: Plan, display: RunDisplay | None = None) -> RunResult:
    """Run every node of `plan`; see the module docstring.

    Raises:
        PassError: a pass failed; nodes completed before it stay cached.
    """
    config = plan.config
    cache = plan.cache
    display = display or RunDisplay()
    for warning in plan.warnings:
        display.warn(warning)
    out_dir = config.output_dir
    outputs = OutputFolder(out_dir)
    outputs.claim()  # before any pass runs: a folder of the user's own is refused, never overwritten
    cache.claim()
    cache.remove_stale_tmp()
    started = time.perf_counter()
    artifacts: dict[str, Artifact] = {}
    results: dict[str, NodeResult] = {}
    order = plan.order()
    lines = {node.id: display.add(node.id, node.pass_name, node.key) for node in order}
    failure: SlimopsError | None = None  # the first error; nodes finished before it stay cached
    with display:
        def finish(node: Node, entry: Entry, cached: bool, t0: float) -> None:
            """Materialise a node's entry into the output folder and record it (raises SlimopsError)."""
            line = lines[node.id]
            artifact = artifact_of(entry)
            artifacts[node.id] = artifact
            try:
                path = _materialize(entry, _out_path(out_dir, node), outputs, cache.memo)
            except SlimopsError as err:
                display.set(line, "failed", str(err).splitlines()[0])
                raise
            results[node.id] = NodeResult(
                node.id, node.pass_name, node.target_name, node.key, cached, str(path), artifact.kind,
                round(time.perf_counter() - t0, 3), artifact.metrics, artifact.meta, list(node.inputs),
                node.config.cls().goals(node.config.params, artifact) if node.config else [],
            )
            display.set(line, "cached" if cached else "done")

        for node in order:  # the input model and cache hits are the driver's own, whatever the executor
            if node.source is not None:
                artifacts[node.id] = node.source
                results[node.id] = NodeResult(node.id, "model", None, node.key, True, str(node.source.path), node.kind, 0.0, meta=node.source.meta)
                display.set(lines[node.id], "cached", "input model")
        if config.spec.engine.executor == "ray":
            from slimops.executor import run_on_ray

            failure = run_on_ray(plan, display, lines, artifacts, finish)
        else:
            for node in order:
                if node.source is not None:
                    continue
                t0 = time.perf_counter()
                line = lines[node.id]
                try:
                    entry, cached = obtain(cache, job_for(plan, node, artifacts), NodeProgress(display, line), display.warn,
                                           lambda status, detail="", line=line: display.set(line, status, detail))
                    finish(node, entry, cached, t0)
                except SlimopsError as err:
                    if line.status != "failed":
                        display.set(line, "failed", str(err).splitlines()[0])
                    failure = err
                    break
    result = RunResult(config.name, out_dir, results, round(time.perf_counter() - started, 3))
    misses = [{"node": n.id, **goal} for n in results.values() for goal in n.goals if not goal.get("ok") and goal.get("fatal", True)]
    if failure is None and misses:
        failure = GoalError(misses, result)
    _write_run_json(result, plan, failure)
    _write_report(result)
    cache.memo.save()
    if failure is not None:
        raise failure
    return result


def _out_path(out_dir: Path, node: Node) -> Path:
    return out_dir / node.target_name / node.name if node.target_name else out_dir / node.name


def _materialize(entry: Entry, dest: Path, outputs: OutputFolder, memo: HashMemo) -> Path:
    """Make `dest` hold a copy of the entry's artifact folder; the artifact's path there.

    Whether `dest` already holds it is read from `dest` itself (`holds`), never from an older
    run.json: a killed or concurrent run, or a hand, may have changed it since. Otherwise a copy is
    staged beside it and renamed into place, so a kill leaves the old folder or the new one, never half.

    Raises:
        SlimopsError: `dest` exists and slimops did not write it.
    """
    source = entry.dir / ARTIFACT
    files = {Path(rel).relative_to(ARTIFACT).as_posix(): info for rel, info in entry.manifest.get("files", {}).items()}
    final = dest / Path(entry.manifest["artifact"]["path"]).relative_to(ARTIFACT)
    with outputs.lock():
        outputs.reserve(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        outputs.sweep(dest)
        if holds(dest, source, files, memo):
            return final
        staging, old = scratch(dest, "tmp"), scratch(dest, "old")
        try:
            shutil.copytree(source, staging, symlinks=True)
            if os.path.lexists(dest):
                os.rename(dest, old)
            os.rename(staging, dest)
        except BaseException:  # Ctrl-C, SIGTERM, a full disk: the old folder stays, and no half copy
            if os.path.lexists(old) and not os.path.lexists(dest):
                with contextlib.suppress(OSError):
                    os.rename(old, dest)
            remove(staging)
            raise
        remove(old)
        for rel, info in files.items():  # copied from checked bytes: the next run's look at dest reads nothing
            with contextlib.suppress(OSError):
                memo.remember(dest / rel, info["sha256"])
    return final


def _status(failure: SlimopsError | None) -> str:
    if failure is None:
        return "ok"
    if not isinstance(failure, GoalError):
        return "failed"
    return "goals missed" if any(m.get("status") != "undecided" for m in failure.misses) else "goals undecided"


def _write_run_json(result: RunResult, plan: Plan, failure: SlimopsError | None) -> None:
    result.output_dir.mkdir(parents=True, exist_ok=True)
    body = {
        "name": result.name,
        "config": str(plan.config.file.resolve()) if plan.config.file else None,
        "overrides": _overrides(plan.config),
        "seconds": result.seconds,
        "status": _status(failure),
        "error": str(failure) if failure else None,
        "nodes": {node_id: asdict(node) for node_id, node in result.nodes.items()},
    }
    with OutputFolder(result.output_dir).lock():  # runs sharing the folder take turns; a killed one's temp file goes
        for leftover in result.output_dir.glob(f".{RUN_JSON}.*.tmp"):
            leftover.unlink(missing_ok=True)
        tmp = result.run_json.with_name(f".{RUN_JSON}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(body, indent=2, default=str))
        os.replace(tmp, result.run_json)


def _write_report(result: RunResult) -> None:
    """report.md and report.html next to run.json; a report that cannot be drawn never fails a run."""
    from slimops.report import write_report

    try:
        write_report(result.output_dir)
    except Exception as err:  # the run's own outcome matters more than its pictures
        logging.getLogger("slimops").warning("could not write the run report: %s: %s", type(err).__name__, err)


def _overrides(config: PipelineConfig) -> dict[str, Any]:
    """Each `--set` key and the value it took, so a report shows what ran, not only the file."""
    out = {}
    for path in sorted(config.lines.overridden, key=lambda p: [str(part) for part in p]):
        value: Any = config.raw
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        out[".".join(str(part) for part in path)] = value
    return out
