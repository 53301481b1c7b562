"""Search trials as Ray tasks (`search.parallel` with `engine.executor: ray`).

- `TrialPool(config, size)`: up to `size` trials at once; `submit`, then `wait` for the next to finish.
- `trial_task`: what a task runs: the whole trial, with the local executor, on the shared cache, so
  trials share every cached prefix (the first to reach a node builds it; the others wait on its lock).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from slimops.errors import SlimopsError
from slimops.executor import RETRIES, connect, import_paths, ray_module


def headline(err: Exception) -> str:
    """An error's first line, and the next when the first only introduces it ("1 error in the pipeline config:")."""
    lines = str(err).splitlines() or [""]
    return " ".join(line.strip() for line in lines[:2]) if lines[0].endswith(":") else lines[0]


def trial_task(file: str, overrides: list[str], paths: list[str]) -> dict[str, Any]:
    """One search trial, a whole run with the local executor on the shared cache."""
    for path in paths:
        if path not in sys.path:
            sys.path.append(path)
    from slimops.config import load_config
    from slimops.display import RunDisplay
    from slimops.errors import GoalError
    from slimops.planner import build_plan
    from slimops.scheduler import execute

    try:
        result = execute(build_plan(load_config(file, [*overrides, "engine.executor=local"])), RunDisplay(quiet=True))
    except GoalError as err:
        return {"result": err.result, "missed": err.misses}
    except SlimopsError as err:
        return {"error": headline(err)}
    return {"result": result, "missed": []}


class TrialPool:
    """Up to `size` trials at once as Ray tasks; `wait` returns the first to finish."""

    def __init__(self, config, size: int):
        self.ray = ray_module()
        connect(config.spec.engine)
        self.size = size
        self.file = str(Path(config.file).resolve())  # a worker's working folder is not the driver's
        self.paths = import_paths(config)
        self.task = self.ray.remote(trial_task).options(num_cpus=1, max_retries=RETRIES)
        self.pending: dict[Any, tuple[int, float]] = {}

    def full(self) -> bool:
        return len(self.pending) >= self.size

    def submit(self, number: int, overrides: list[str]) -> None:
        self.pending[self.task.remote(self.file, overrides, self.paths)] = (number, time.perf_counter())

    def wait(self) -> tuple[int, dict[str, Any], float]:
        """(trial number, its outcome, seconds) of the next trial to finish."""
        ready, _ = self.ray.wait(list(self.pending), num_returns=1)
        number, t0 = self.pending.pop(ready[0])
        try:
            outcome = self.ray.get(ready[0])
        except self.ray.exceptions.RayError as err:
            outcome = {"error": f"its Ray worker was lost ({type(err).__name__})"}
        return number, outcome, round(time.perf_counter() - t0, 2)

    def cancel(self) -> None:
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
