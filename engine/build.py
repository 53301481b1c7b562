"""Building one node: from its cache entry when it is whole, else by its pass, under the key's lock.

- `Job`: what a build needs and nothing of the run around it; it pickles, so a Ray worker builds the
  node as the driver would (`job_for` makes one from a plan).
- `obtain(cache, job, progress, warn, status)`: the node's entry, cached or built; the one path the
  local executor and Ray's tasks share.
- `checked_hit`, `artifact_of`: a cached entry that passes its checks (a damaged one is set aside).

A pass runs into a temporary cache folder that is published (renamed into place with its manifest)
only when it returns; its output, warnings and library prints go to the node's log.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from filelock import Timeout

from slimops.cache import ARTIFACT, Cache, Entry
from slimops.config import DataSpec, PipelineConfig
from slimops.errors import PassError, SlimopsError
from slimops.planner import Node, Plan
from slimops.plugin import Artifact, PassContext


@dataclass
class Job:
    """What building one node needs, and nothing of the run around it: it pickles, so a Ray worker on
    another machine builds the node as this process would (`relocate` finds the inputs in its cache)."""

    node: Node
    inputs: dict[str, str]  # input pass name -> node id, in order
    ancestors: list[str]  # upstream node ids, breadth-first
    artifacts: dict[str, Artifact]  # node id -> artifact, for every ancestor
    keys: dict[str, str]  # node id -> key, for every ancestor
    entries: set[str]  # the ancestors that are cache entries (the rest: the input model)
    data: dict[str, DataSpec]
    config_dir: Path

    def relocate(self, cache: Cache) -> None:
        """Point each input at this machine's copy of its cache entry."""
        for node_id in self.entries:
            entry = cache.get(self.keys[node_id])
            if entry is None:
                raise SlimopsError(f"cache entry {self.keys[node_id][:12]} of {node_id} is gone from {cache.root}; run again")
            self.artifacts[node_id] = artifact_of(entry)


def job_for(plan: Plan, node: Node, artifacts: dict[str, Artifact]) -> Job:
    ancestors = list(_ancestors(plan, node, artifacts))
    known = [*ancestors, *(["model"] if "model" in artifacts and "model" not in ancestors else [])]  # ctx.source
    return Job(node, {plan.nodes[i].name: i for i in node.inputs}, ancestors, {i: artifacts[i] for i in known},
               {i: plan.nodes[i].key for i in known}, {i for i in known if plan.nodes[i].source is None},
               _resolved_data(plan.config), plan.config.base_dir)


def obtain(cache: Cache, job: Job, progress, warn, status) -> tuple[Entry, bool]:
    """The node's entry: a whole cached one, or built under its lock (a concurrent builder is waited
    for, then its entry reused). Returns (entry, whether it was cached). `status(name, detail)` shows
    waiting and running.

    Raises:
        PassError: the pass failed; nothing of the attempt is left in the cache.
    """
    node = job.node
    entry = checked_hit(cache, node, warn)
    if entry is not None:
        cache.touch(entry)
        return entry, True
    lock = cache.lock(node.key)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        status("waiting", "another run is building this node")
        lock.acquire()
    try:
        entry = checked_hit(cache, node, warn)
        if entry is not None:
            return entry, True
        status("running")
        return _build(cache, job, progress), False
    finally:
        lock.release()


def _build(cache: Cache, job: Job, progress) -> Entry:
    node = job.node
    pc = node.config
    assert pc is not None
    tmp = cache.begin(node.key)
    log_path = tmp / "log.txt"
    try:
        handler = _NodeLog(log_path)
        work_dir = cache.work_dir(node.key)
    except BaseException:
        cache.abandon(tmp)
        raise
    logger = logging.getLogger(f"slimops.node.{node.id}.{os.getpid()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    ctx = PassContext(
        node=node.id,
        params=pc.params,
        inputs={name: job.artifacts[i] for name, i in job.inputs.items()},
        target=node.target,
        output_dir=tmp / ARTIFACT,
        work_dir=work_dir,
        data=job.data,
        config_dir=job.config_dir,
        source=job.artifacts.get("model"),
        ancestors={i: job.artifacts[i] for i in job.ancestors},
        progress=progress,
        log=logger,
    )
    t0 = time.perf_counter()
    try:
        with _library_output_to(handler):
            artifact = pc.cls().run(ctx)
        if not isinstance(artifact, Artifact):
            raise TypeError(f"run() returned {type(artifact).__name__}, not slimops.Artifact")
        rel = Path(ARTIFACT) / Path(artifact.path).resolve().relative_to((tmp / ARTIFACT).resolve())
        if not os.path.lexists(artifact.path):
            raise SlimopsError(f"the returned Artifact's path {rel.relative_to(ARTIFACT).as_posix()} does not exist in "
                               "ctx.output_dir; write the output before returning it")
        json.dumps([artifact.meta, artifact.metrics], default=str)
        _check_links(tmp / ARTIFACT)
    except BaseException as err:
        # Nothing here may fail in turn (a full disk fails the log's writes too): the staged copy goes
        # whatever happens, and the error raised is the node's.
        kept = None
        try:
            log_failure = _close_log(logger, handler, "".join(traceback.format_exception(err)))
            if not isinstance(err, KeyboardInterrupt):
                kept = _keep_log(cache, node, log_path)
        finally:
            cache.abandon(tmp, work=ctx.work_dir)
        if isinstance(err, KeyboardInterrupt):
            raise
        if isinstance(err, ValueError) and "is not in the subpath" in str(err):
            message = "the returned Artifact's path is outside ctx.output_dir; write outputs there"
        else:
            message = str(err) if isinstance(err, SlimopsError) else f"{type(err).__name__}: {err}"
        if _disk_full(err):
            message += f"; the disk is full: free space at {err.filename or cache.root} (or set engine.cache_dir elsewhere) and run again"
        elif _disk_full(log_failure) and kept is None:
            message += f"; its log is lost: the disk holding {cache.root} is full, free space there"
        failure = PassError(node.id, message, kept)
        if isinstance(err, SlimopsError):
            failure.exit_code = err.exit_code
        raise failure from None
    seconds = time.perf_counter() - t0
    logger.info("finished in %.2f s", seconds)
    _close_log(logger, handler)  # a log lost to a full disk: publishing says so, if the entry cannot be written either
    manifest = {
        "key": node.key,
        "node": node.id,
        "pass": pc.type,
        "version": pc.cls.version,
        "params": pc.params.model_dump(mode="json"),
        "inputs": {name: job.keys[i] for name, i in job.inputs.items()},
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


class _NodeLog(logging.FileHandler):
    """The node's log file. A write it cannot make (a full disk) is remembered as `failure`, not printed
    as Python's "--- Logging error ---" and a traceback over the live table: the node's error says it once."""

    failure: OSError | None = None

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            self.failure = self.failure or err
        else:  # a pass's own bad log call (a format string that does not fit): Python's report helps its author
            super().handleError(record)


def _close_log(logger: logging.Logger, handler: _NodeLog, text: str | None = None) -> OSError | None:
    """Write `text` (a failure's traceback) to the node's log and close it; what stopped the log being
    written, if anything (never raised)."""
    if text is not None:
        logger.error(text)
    try:
        handler.close()  # flushes: a full disk fails here too
    except OSError as err:
        handler.failure = handler.failure or err
    logger.removeHandler(handler)
    return handler.failure


def _disk_full(err: BaseException | None) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


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
    """Copy a failed attempt's log under logs/; None when it cannot be (a copy cut short leaves nothing)."""
    kept = cache.root / "logs" / f"{node.id.replace('@', '-at-')}-{node.short}.log"
    partial = kept.with_name(f"{kept.name}.{os.getpid()}.tmp")
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_path, partial)
        os.replace(partial, kept)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
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


def checked_hit(cache: Cache, node: Node, warn) -> Entry | None:
    """The node's cache entry if it is whole; a damaged one is set aside (and rebuilt by the caller)."""
    try:
        entry = cache.get(node.key)
        problem = cache.check(entry) if entry is not None else None
    except SlimopsError:
        problem = cache.read_manifest(node.key)[1]
        if problem is None:  # not the local folder (an unreachable remote, say): nothing to set aside
            raise
        entry = Entry(node.key, cache.entries_dir / node.key, {})  # a folder without a readable manifest: damage
    if entry is None or problem is None:
        return entry
    aside = cache.set_aside(entry)
    warn(f"cache entry {node.key[:12]} of {node.id} is damaged: {problem}; moved to {aside}, rebuilding it")
    return None


def artifact_of(entry: Entry) -> Artifact:
    info = entry.manifest["artifact"]
    return Artifact(path=entry.dir / info["path"], kind=info["kind"], meta=info.get("meta", {}), metrics=info.get("metrics", {}))
