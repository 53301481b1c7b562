"""The Ray executor (`engine.executor: ray`): every node whose inputs are ready runs as a Ray task.

- `connect(settings)`: join the cluster `engine.ray_address` (or RAY_ADDRESS) names, else start a
  local Ray.
- `run_on_ray(plan, display, lines, artifacts, finish)`: the plan's cache misses as tasks, each with
  the resources its pass asks for (`Pass.resources`: CPUs, GPUs, memory; a node wanting more than
  one CPU or GPU gets a placement group of one bundle, so its processes share a machine). The
  driver keeps what the local executor does: the input model, cache hits, the output folder, the
  live table (tasks relay their progress through a small actor) and each node's log.
Search trials as Ray tasks are `slimops.trials`.

A task builds its node through the scheduler's own `obtain`, into the same cache (a shared URL, or
a folder every Ray node sees), so a node is built once whoever asks for it. A worker lost mid-node
(its process or its machine) is retried by Ray; the lost attempt left no entry, only a staged
folder the next run removes and a lock whose holder is gone (a file lock the kernel dropped, or a
lease that runs out).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from slimops.errors import PassError, PlanError, SlimopsError

RETRIES = 3  # attempts after a lost worker; a pass's own error is never retried


def ray_module():
    try:
        import ray
    except ImportError:
        raise PlanError("engine.executor: ray needs the ray package: pip install 'slimops[cluster]'") from None
    return ray


def connect(settings) -> None:
    """Join `settings.ray_address` (or RAY_ADDRESS), else start a local Ray; once per process.

    Raises:
        SlimopsError: no Ray cluster answers at that address.
    """
    ray = ray_module()
    if ray.is_initialized():
        return
    address = settings.ray_address or os.environ.get("RAY_ADDRESS") or None
    import logging

    try:
        ray.init(address=address, log_to_driver=False, include_dashboard=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as err:
        # a head from `ray start` turns token auth on where ~/.ray/auth_token exists (ray-project/ray#64755)
        auth = "auth" in str(err).lower() or ((Path.home() / ".ray" / "auth_token").exists() and "RAY_AUTH_MODE" not in os.environ)
        hint = ("; the cluster wants Ray's auth token: set RAY_AUTH_MODE=token (the token is read from ~/.ray/auth_token, "
                "or RAY_AUTH_TOKEN)" if auth else "")
        raise SlimopsError(f"cannot join the Ray cluster at {address}: {str(err).splitlines()[0]}{hint}; start one "
                           "('ray start --head'), or set engine.ray_address (or leave it out to start a local Ray)") from None


def import_paths(config) -> list[str]:
    """Folders a worker puts on sys.path before it unpickles a job: the pipeline's own (plugins)."""
    return [str(config.base_dir)]


def _resources(node) -> dict[str, float]:
    wanted = node.config.cls().resources(node.config.params, node.target)
    return {"CPU": float(wanted.get("CPU", 1.0)), "GPU": float(wanted.get("GPU", 0.0)),
            **({"memory": float(wanted["memory"])} if wanted.get("memory") else {})}


def _check_fits(ray, node, wanted: dict[str, float]) -> None:
    """A node no machine of the cluster can hold would wait forever: say so instead."""
    machines = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for name in ("CPU", "GPU"):
        largest = max((m.get(name, 0.0) for m in machines), default=0.0)
        if wanted[name] > largest:
            raise PassError(node.id, f"it needs {wanted[name]:g} {name}s on one machine and the largest Ray node has "
                            f"{largest:g}; lower processes, or add a machine that has them")


def _options(ray, node) -> dict[str, Any]:
    wanted = _resources(node)
    _check_fits(ray, node, wanted)
    options: dict[str, Any] = {"num_cpus": wanted["CPU"], "num_gpus": wanted["GPU"], "max_retries": RETRIES}
    if "memory" in wanted:
        options["memory"] = wanted["memory"]
    if wanted["CPU"] > 1 or wanted["GPU"] > 1:  # processes of one node (DDP ranks) share one machine
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": wanted["CPU"], **({"GPU": wanted["GPU"]} if wanted["GPU"] else {})}
        group = placement_group([bundle], strategy="STRICT_PACK")  # removed when the task ends (`_release`)
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
    return options


def _release(ray, options: dict[str, Any]) -> None:
    """Give back a finished task's placement group: it holds its bundle's CPUs and GPUs until removed."""
    strategy = options.get("scheduling_strategy")
    if strategy is not None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(strategy.placement_group)


def _relay_class(ray):
    @ray.remote(num_cpus=0)
    class Relay:
        """Where tasks leave their latest status and progress, for the driver's live table."""

        def __init__(self):
            self.updates: dict[str, dict[str, Any]] = {}

        def put(self, node_id: str, update: dict[str, Any]) -> None:
            self.updates.setdefault(node_id, {}).update(update)

        def take(self) -> dict[str, dict[str, Any]]:
            updates, self.updates = self.updates, {}
            return updates

    return Relay


class _RelayProgress:
    """A task's `ctx.progress`: at most two updates a second reach the driver."""

    def __init__(self, relay, node_id: str):
        self.relay, self.node_id, self.sent = relay, node_id, 0.0

    def update(self, completed: float | None = None, total: float | None = None, message: str | None = None) -> None:
        now = time.monotonic()
        if now - self.sent < 0.5 and (completed is None or total is None or completed < total):
            return
        self.sent = now
        self.relay.put.remote(self.node_id, {"completed": completed, "total": total, "message": message})


def build_task(blob: bytes, paths: list[str], relay) -> dict[str, Any]:
    """What a Ray task runs: unpickle the node's Job, find its inputs in this machine's cache, build it."""
    for path in paths:
        if path not in sys.path:
            sys.path.append(path)
    import ray

    from slimops.build import obtain
    from slimops.storage import open_cache

    job, location = ray.cloudpickle.loads(blob)
    node_id = job.node.id
    where = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    warnings: list[str] = []

    def status(name: str, detail: str = "") -> None:
        relay.put.remote(node_id, {"status": name, "detail": detail or f"on {where}"})

    try:
        cache = open_cache(**location)
        job.relocate(cache)
        entry, cached = obtain(cache, job, _RelayProgress(relay, node_id), warnings.append, status)
    except SlimopsError as err:
        log = getattr(err, "log", None)
        text = str(err)
        if isinstance(err, PassError):
            text = text.rsplit("\n  log: ", 1)[0].removeprefix(f"pass '{node_id}' failed: ")
        return {"error": text, "exit_code": err.exit_code, "log": _read(log), "warnings": warnings, "where": where}
    return {"cached": cached, "log": _read(entry.dir / "log.txt"), "warnings": warnings, "where": where}


def _read(path: Path | None, limit: int = 2_000_000) -> str | None:
    try:
        return Path(path).read_text(errors="replace")[-limit:] if path else None
    except OSError:
        return None


def run_on_ray(plan, display, lines, artifacts, finish: Callable) -> SlimopsError | None:
    """Run the plan's nodes as Ray tasks as their inputs become ready; returns the first error, if any.

    Nodes already running when one fails are let finish (they stay cached); no new one starts.
    """
    from slimops.display import NodeProgress
    from slimops.build import checked_hit, job_for
    from slimops.storage import cache_settings

    ray = ray_module()
    connect(plan.config.spec.engine)
    cache = plan.cache
    location = cache_settings(plan.config)
    paths = import_paths(plan.config)
    task = ray.remote(build_task)
    relay = _relay_class(ray).remote()
    progress = {node_id: NodeProgress(display, line) for node_id, line in lines.items()}
    done = {node.id for node in plan.order() if node.source is not None}
    todo = [node for node in plan.order() if node.source is None]
    pending: dict[Any, tuple[Any, float, dict[str, Any]]] = {}  # task -> (node, start, its options)
    failure: SlimopsError | None = None
    try:
        while todo or pending:
            started = True
            while started and failure is None:  # a hit can make other nodes ready: look again
                started = False
                for node in [n for n in todo if all(i in done for i in n.inputs)]:
                    todo.remove(node)
                    started = True
                    t0 = time.perf_counter()
                    try:
                        entry = checked_hit(cache, node, display.warn)
                        if entry is not None:
                            cache.touch(entry)
                            finish(node, entry, True, t0)
                            done.add(node.id)
                            continue
                        blob = ray.cloudpickle.dumps((job_for(plan, node, artifacts), location))
                        options = _options(ray, node)
                        ref = task.options(**options).remote(blob, paths, relay)
                    except SlimopsError as err:
                        display.set(lines[node.id], "failed", str(err).splitlines()[0])
                        failure = err
                        break
                    pending[ref] = (node, t0, options)
                    display.set(lines[node.id], "queued", "waiting for a Ray worker")
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            _show(ray, relay, display, lines, progress)
            for ref in ready:
                node, t0, options = pending.pop(ref)
                error = _collect(ray, ref, node, cache, display, lines, finish, t0)
                _release(ray, options)
                done.add(node.id)
                failure = failure or error
    except BaseException:  # Ctrl-C or SIGTERM: the tasks go too; what they staged is a leftover the next run removes
        for ref, (_, _, options) in pending.items():
            ray.cancel(ref, force=True)
            _release(ray, options)
        raise
    return failure


def _collect(ray, ref, node, cache, display, lines, finish, t0) -> SlimopsError | None:
    """The outcome of one task: its entry materialised on the driver, or its error."""
    from slimops.build import checked_hit

    line = lines[node.id]
    try:
        outcome = ray.get(ref)
    except ray.exceptions.RayError as err:  # the worker was lost more often than RETRIES
        failure = PassError(node.id, f"its Ray worker was lost {RETRIES + 1} times ({type(err).__name__}: "
                            f"{str(err).splitlines()[0]}); see the Ray logs of the cluster")
        display.set(line, "failed", str(failure).splitlines()[0])
        return failure
    for warning in outcome["warnings"]:
        display.warn(warning)
    if "error" in outcome:
        kept = _keep(cache.root / "logs" / f"{node.id.replace('@', '-at-')}-{node.short}.log", outcome["log"])
        failure = PassError(node.id, f"{outcome['error']} (on {outcome['where']})", kept)
        failure.exit_code = outcome["exit_code"]
        display.set(line, "failed", str(failure).splitlines()[0])
        return failure
    try:
        entry = checked_hit(cache, node, display.warn)  # with a cache URL, this machine's copy is fetched now
        if entry is None:
            raise SlimopsError(f"cache entry {node.key[:12]} of {node.id} is missing or damaged after its worker published it; run again")
        if outcome["log"] is not None and not (entry.dir / "log.txt").exists():
            _keep(entry.dir / "log.txt", outcome["log"])
        finish(node, entry, outcome["cached"], t0)
    except SlimopsError as err:
        if line.status != "failed":
            display.set(line, "failed", str(err).splitlines()[0])
        return err
    return None


def _keep(path: Path, text: str | None) -> Path | None:
    if text is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError:
        return None
    return path


def _show(ray, relay, display, lines, progress) -> None:
    for node_id, update in ray.get(relay.take.remote()).items():
        line = lines[node_id]
        if "status" in update and line.status not in ("done", "cached", "failed"):
            display.set(line, update["status"], update.get("detail", ""))
        if any(update.get(k) is not None for k in ("completed", "total", "message")) and line.status == "running":
            progress[node_id].update(update.get("completed"), update.get("total"), update.get("message"))
