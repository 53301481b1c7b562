"""Running a plan: each node in topological order, from the cache when it can, else by its pass.

A node that runs writes into a temporary cache folder that is renamed into place only when the
pass returns; a lock per key makes a second concurrent run wait and then reuse the entry.
Finished artifacts are copied into the output folder (not hard-linked: onnx refuses external data
with more than one link), and `run.json` records every node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import Timeout

from slimops.cache import ARTIFACT, Cache, Entry
from slimops.config import DataSpec, PipelineConfig
from slimops.display import RunDisplay
from slimops.errors import GoalError, PassError, SlimopsError
from slimops.outputs import RUN_JSON, OutputFolder
from slimops.planner import Node, Plan
from slimops.plugin import Artifact, PassContext



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
    previous = _previous_keys(out_dir / RUN_JSON)
    started = time.perf_counter()
    artifacts: dict[str, Artifact] = {}
    results: dict[str, NodeResult] = {}
    order = plan.order()
    lines = {node.id: display.add(node.id, node.pass_name, node.key) for node in order}
    failure: SlimopsError | None = None
    with display:
        for node in order:
            line = lines[node.id]
            t0 = time.perf_counter()
            if node.source is not None:
                artifacts[node.id] = node.source
                results[node.id] = NodeResult(node.id, "model", None, node.key, True, str(node.source.path), node.kind, 0.0, meta=node.source.meta)
                display.set(line, "cached", "input model")
                continue
            entry = _checked_hit(cache, node, display)
            cached = entry is not None
            if entry is None:
                lock = cache.lock(node.key)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    display.set(line, "waiting", "another run is building this node")
                    lock.acquire()
                try:
                    entry = _checked_hit(cache, node, display)
                    cached = entry is not None
                    if entry is None:
                        display.set(line, "running")
                        try:
                            entry = _build(plan, node, artifacts, display, line)
                        except SlimopsError as err:
                            display.set(line, "failed", str(err).splitlines()[0])
                            failure = err
                            break
                finally:
                    lock.release()
            else:
                cache.touch(entry)
            artifact = _artifact_of(entry)
            artifacts[node.id] = artifact
            try:
                path = _materialize(entry, artifact, _out_path(out_dir, node), previous.get(node.id) == node.key, outputs)
            except SlimopsError as err:
                display.set(line, "failed", str(err).splitlines()[0])
                failure = err
                break
            results[node.id] = NodeResult(
                node.id, node.pass_name, node.target_name, node.key, cached, str(path), artifact.kind,
                round(time.perf_counter() - t0, 3), artifact.metrics, artifact.meta, list(node.inputs),
                node.config.cls().goals(node.config.params, artifact) if node.config else [],
            )
            display.set(line, "cached" if cached else "done")
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


def _build(plan: Plan, node: Node, artifacts: dict[str, Artifact], display: RunDisplay, line) -> Entry:
    from slimops.display import NodeProgress

    config = plan.config
    cache = plan.cache
    pc = node.config
    assert pc is not None
    tmp = cache.begin(node.key)
    log_path = tmp / "log.txt"
    logger = logging.getLogger(f"slimops.node.{node.id}.{os.getpid()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    ctx = PassContext(
        node=node.id,
        params=pc.params,
        inputs={plan.nodes[i].name: artifacts[i] for i in node.inputs},
        target=node.target,
        output_dir=tmp / ARTIFACT,
        work_dir=cache.work_dir(node.key),
        data=_resolved_data(config),
        config_dir=config.base_dir,
        source=artifacts.get("model"),
        ancestors=_ancestors(plan, node, artifacts),
        progress=NodeProgress(display, line),
        log=logger,
    )
    t0 = time.perf_counter()
    try:
        with _library_output_to(handler):
            artifact = pc.cls().run(ctx)
        if not isinstance(artifact, Artifact):
            raise TypeError(f"run() returned {type(artifact).__name__}, not slimops.Artifact")
        rel = Path(ARTIFACT) / Path(artifact.path).resolve().relative_to((tmp / ARTIFACT).resolve())
        json.dumps([artifact.meta, artifact.metrics], default=str)
        _check_links(tmp / ARTIFACT)
    except BaseException as err:
        logger.error("".join(traceback.format_exception(err)))
        handler.close()
        logger.removeHandler(handler)
        if isinstance(err, KeyboardInterrupt):
            cache.abandon(tmp, work=ctx.work_dir)
            raise
        kept = _keep_log(cache, node, log_path)
        cache.abandon(tmp, work=ctx.work_dir)
        if isinstance(err, ValueError) and "is not in the subpath" in str(err):
            message = "the returned Artifact's path is outside ctx.output_dir; write outputs there"
        else:
            message = str(err) if isinstance(err, SlimopsError) else f"{type(err).__name__}: {err}"
        failure = PassError(node.id, message, kept)
        if isinstance(err, SlimopsError):
            failure.exit_code = err.exit_code
        raise failure from None
    seconds = time.perf_counter() - t0
    logger.info("finished in %.2f s", seconds)
    handler.close()
    logger.removeHandler(handler)
    manifest = {
        "key": node.key,
        "node": node.id,
        "pass": pc.type,
        "version": pc.cls.version,
        "params": pc.params.model_dump(mode="json"),
        "inputs": {plan.nodes[i].name: plan.nodes[i].key for i in node.inputs},
        "data": node.parts.get("data", {}),
        "target": node.parts.get("target"),
        "libraries": node.parts.get("libraries", {}),
        "parts": node.parts,
        "seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "artifact": {"path": rel.as_posix(), "kind": artifact.kind, "meta": artifact.meta, "metrics": artifact.metrics},
    }
    try:
        return cache.publish(node.key, tmp, manifest)
    except BaseException:  # a full disk or a kill at publish: the staged copy goes, the checkpoints stay
        cache.abandon(tmp, work=ctx.work_dir)
        raise


# Libraries' own progress bars, prints and warnings would tear the live table and flood CI logs: a
# pass reports through ctx.progress, and everything else it writes goes to the node's log.
_QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


@contextlib.contextmanager
def _library_output_to(handler: logging.FileHandler):
    saved = {name: os.environ.get(name) for name in _QUIET_ENV}
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    warnings_logger = logging.getLogger("py.warnings")
    logging.captureWarnings(True)
    warnings_logger.addHandler(handler)
    propagate, warnings_logger.propagate = warnings_logger.propagate, False
    try:
        with contextlib.redirect_stdout(handler.stream), contextlib.redirect_stderr(handler.stream):
            yield
    finally:
        warnings_logger.removeHandler(handler)
        warnings_logger.propagate = propagate
        logging.captureWarnings(False)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _ancestors(plan: Plan, node: Node, artifacts: dict[str, Artifact]) -> dict[str, Artifact]:
    """Upstream artifacts, breadth-first from the node's inputs."""
    found: dict[str, Artifact] = {}
    queue = list(node.inputs)
    while queue:
        node_id = queue.pop(0)
        if node_id in found:
            continue
        found[node_id] = artifacts[node_id]
        queue.extend(plan.nodes[node_id].inputs)
    return found


def _keep_log(cache: Cache, node: Node, log_path: Path) -> Path | None:
    logs = cache.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kept = logs / f"{node.id.replace('@', '-at-')}-{node.short}.log"
    try:
        shutil.copyfile(log_path, kept)
    except OSError:
        return None
    return kept


def _resolved_data(config: PipelineConfig) -> dict[str, DataSpec]:
    resolved = {}
    for name, spec in config.spec.data.items():
        files = spec.files
        base = config.base_dir
        if isinstance(files, str):
            files = str(base / files)
        elif isinstance(files, list):
            files = [str(base / f) for f in files]
        elif isinstance(files, dict):
            files = {k: (str(base / v) if isinstance(v, str) else [str(base / f) for f in v]) for k, v in files.items()}
        resolved[name] = spec.model_copy(update={"files": files})
    return resolved


def _check_links(folder: Path) -> None:
    """A pass's output may hold symbolic links only to its own files: a link out of it would be
    followed by the checksums and the copy to the output folder, and a loop never ends.

    Raises:
        SlimopsError: a link that leaves the folder, dangles, or loops.
    """
    root = folder.resolve()
    for path in folder.rglob("*"):
        if not path.is_symlink():
            continue
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise SlimopsError(f"the pass's output holds a link that loops or dangles ({path.relative_to(folder)} -> "
                               f"{os.readlink(path)}); write the file itself, or a link to a file inside the output") from None
        if not target.is_relative_to(root):
            raise SlimopsError(f"the pass's output holds a link out of it ({path.relative_to(folder)} -> {target}); "
                               "copy the file into ctx.output_dir instead, so the cache holds what it ships")
        if os.path.isabs(os.readlink(path)):  # it would dangle once the entry is renamed into place
            raise SlimopsError(f"the pass's output holds an absolute link ({path.relative_to(folder)} -> "
                               f"{os.readlink(path)}); make it relative to its folder")


def _checked_hit(cache: Cache, node: Node, display: RunDisplay) -> Entry | None:
    """The node's cache entry if it is whole; a damaged one is set aside (and rebuilt by the caller)."""
    try:
        entry = cache.get(node.key)
        problem = cache.check(entry) if entry is not None else None
    except SlimopsError as err:  # an unreadable manifest: the entry cannot be trusted
        entry, problem = Entry(node.key, cache.entries_dir / node.key, {}), str(err)
    if entry is None or problem is None:
        return entry
    aside = cache.set_aside(entry)
    display.warn(f"cache entry {node.key[:12]} of {node.id} is damaged: {problem}; moved to {aside}, rebuilding it")
    return None


def _artifact_of(entry: Entry) -> Artifact:
    info = entry.manifest["artifact"]
    return Artifact(path=entry.dir / info["path"], kind=info["kind"], meta=info.get("meta", {}), metrics=info.get("metrics", {}))


def _out_path(out_dir: Path, node: Node) -> Path:
    return out_dir / node.target_name / node.name if node.target_name else out_dir / node.name


def _materialize(entry: Entry, artifact: Artifact, dest: Path, unchanged: bool, outputs: OutputFolder) -> Path:
    """Copy the entry's artifact folder into `dest`, replacing what was there atomically.

    Runs sharing the output folder take turns under its lock, so whoever holds it may remove any
    staging folder left there: its writer was killed.

    Raises:
        SlimopsError: `dest` exists and slimops did not write it.
    """
    final = dest / Path(entry.manifest["artifact"]["path"]).relative_to(ARTIFACT)
    with outputs.lock():
        outputs.reserve(dest)
        if unchanged and dest.exists():
            return final
        dest.parent.mkdir(parents=True, exist_ok=True)
        for leftover in dest.parent.glob(f".{dest.name}.*"):  # a killed run's half copy or set-aside folder
            if leftover.suffix in (".tmp", ".old"):
                shutil.rmtree(leftover, ignore_errors=True)
        staging = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
        try:
            shutil.copytree(entry.dir / ARTIFACT, staging, symlinks=True)
            if dest.exists():
                old = dest.parent / f".{dest.name}.{os.getpid()}.old"
                os.rename(dest, old)
                os.rename(staging, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(staging, dest)
        except BaseException:  # Ctrl-C, SIGTERM, a full disk: no half copy stays in the output folder
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return final


def _previous_keys(run_json: Path) -> dict[str, str]:
    try:
        data = json.loads(run_json.read_text())
        return {node_id: info["key"] for node_id, info in data.get("nodes", {}).items()}
    except (OSError, ValueError, KeyError, AttributeError):
        return {}


def _write_run_json(result: RunResult, plan: Plan, failure: SlimopsError | None) -> None:
    result.output_dir.mkdir(parents=True, exist_ok=True)
    body = {
        "name": result.name,
        "config": str(plan.config.file.resolve()) if plan.config.file else None,
        "overrides": _overrides(plan.config),
        "seconds": result.seconds,
        "status": ("goals missed" if isinstance(failure, GoalError) else "failed") if failure else "ok",
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
