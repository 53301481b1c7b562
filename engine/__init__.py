"""slimops: a declarative pass pipeline for adapting small language models and shipping them.

The public surface is `__all__`; everything else is a private module.

    >>> import slimops
    >>> result = slimops.run("pipeline.yaml", overrides=["passes.finetune.r=8"])
    >>> result["finetune"].path
"""

from __future__ import annotations

from pathlib import Path

from slimops.errors import CacheError, ConfigError, DataError, ModelError, PassError, PlanError, SlimopsError
from slimops.plugin import Artifact, Pass, PassContext

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "CacheError",
    "ConfigError",
    "DataError",
    "ModelError",
    "Pass",
    "PassContext",
    "PassError",
    "PlanError",
    "SlimopsError",
    "load_config",
    "plan",
    "run",
]


def load_config(path: str | Path, overrides: list[str] | None = None):
    """Read and validate a pipeline file; see `slimops.config.load_config`."""
    from slimops.config import load_config as _load

    return _load(path, overrides)


def plan(config_or_path, overrides: list[str] | None = None):
    """Plan a pipeline: its DAG of nodes, each with its cache key (nothing runs)."""
    from slimops.planner import build_plan

    config = _as_config(config_or_path, overrides)
    return build_plan(config)


def run(config_or_path, overrides: list[str] | None = None, display=None):
    """Run a pipeline and return its `RunResult` (a result per node, and `run.json`).

    Args:
        config_or_path: a pipeline file's path, or a config from `load_config`.
        overrides: `key.path=value` strings, as `--set` takes them.
        display: a `slimops.display.RunDisplay`; by default a live table on a terminal.

    Raises:
        ConfigError, PlanError, ModelError, DataError: before anything runs.
        PassError: a pass failed; every node completed before it stays cached.
    """
    from slimops.planner import build_plan
    from slimops.scheduler import execute

    config = _as_config(config_or_path, overrides)
    return execute(build_plan(config), display)


def _as_config(config_or_path, overrides):
    from slimops.config import PipelineConfig, load_config as _load

    if isinstance(config_or_path, PipelineConfig):
        if overrides:
            if config_or_path.file is None:
                raise ConfigError("overrides need a config loaded from a file")
            return _load(config_or_path.file, overrides)
        return config_or_path
    return _load(config_or_path, overrides)
