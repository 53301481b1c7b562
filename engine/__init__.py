"""slimops: a declarative pass pipeline for adapting small language models and shipping them.

The public surface is `__all__`; everything else is a private module.

    >>> import slimops
    >>> result = slimops.run("pipeline.yaml", overrides=["passes.finetune.r=8"])
    >>> result["finetune"].path

What lives where (`slimops.X`):
    errors      the exception tree, drawn once, with exit codes
    plugin      the pass contract: Pass, PassContext, Artifact
    registry    finding a pass by its `type:` (built-ins, entry points, module:Class)
    targets     hardware-target profiles, one table of the built-in ones
    config/     what a pipeline file may say, and loading one with every mistake located
    kinds       what a model folder is (decoder, encoder, classifier) and its AutoModel class
    inputs      how a model name resolves: a local path, a registered name, a hub id
    metrics     one table of the metrics: which way is better, its unit, what each measures
    quantization which quantize methods are weight-only or calibrated
    sizes       how size on disk is measured (size_mb)
    needs       what a pass needs from the Python environment (the planner and `doctor` read it)
    keys        cache keys: file hashes (memoised), data fingerprints, node keys
    planner     the DAG of nodes x targets, with each node's cache key
    cache       content-addressed entries, published atomically, checked before use
    storage     where the cache lives: a folder, or an fsspec URL (open_cache)
    remote      the cache at a URL, shared by machines, with local copies on each
    lease       a lock shared by machines: a lease object, renewed while held
    build       building one node: its entry from the cache, else its pass under the key's lock
    scheduler   runs a plan: hits and the output folder on the driver, misses by the executor
    executor    engine.executor: ray, every ready node as a Ray task with its pass's resources
    trials      search trials at once as Ray tasks (search.parallel)
    outputs     the output folder's marker: slimops replaces only what it wrote there
    search      trials over pass params (Optuna)
    report      run.json to Markdown/HTML with charts
    display     the live progress table
    doctor      `slimops doctor`: checks an environment before a long run
    cli/        the `slimops` command
The built-in passes are `slimops.passes`, reached only through the registry.
"""

from pathlib import Path as _Path

from slimops.errors import (CacheError, ConfigError, DataError, GoalError, ModelError, PassError, PlanError, SlimopsError,
                            TemplateError)
from slimops.plugin import Artifact, Pass, PassContext

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "CacheError",
    "ConfigError",
    "DataError",
    "GoalError",
    "ModelError",
    "NodeResult",
    "Pass",
    "PassContext",
    "PassError",
    "PipelineConfig",
    "Plan",
    "PlanError",
    "RunResult",
    "SlimopsError",
    "TemplateError",
    "load_config",
    "plan",
    "run",
]

# What load_config, plan and run return; imported on first use so `import slimops` stays light.
_LAZY = {
    "PipelineConfig": "slimops.config.load",
    "Plan": "slimops.planner",
    "NodeResult": "slimops.scheduler",
    "RunResult": "slimops.scheduler",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'slimops' has no attribute '{name}'")


def load_config(path: "str | _Path", overrides: "list[str] | None" = None):
    """Read and validate a pipeline file; returns a `PipelineConfig`.

    Raises:
        ConfigError: listing every problem, each with file, line and key path.
    """
    from slimops.config import load_config as _load

    return _load(path, overrides)


def plan(config_or_path, overrides: "list[str] | None" = None):
    """Plan a pipeline: its DAG of nodes, each with its cache key (nothing runs); returns a `Plan`."""
    from slimops.planner import build_plan

    config = _as_config(config_or_path, overrides)
    return build_plan(config)


def run(config_or_path, overrides: "list[str] | None" = None, display=None):
    """Run a pipeline and return its `RunResult` (a `NodeResult` per node, and `run.json`).

    Args:
        config_or_path: a pipeline file's path, or a config from `load_config`.
        overrides: `key.path=value` strings, as `--set` takes them.
        display: a `slimops.display.RunDisplay`; by default a live table on a terminal.

    Raises:
        ConfigError, PlanError, ModelError, DataError: before anything runs.
        PassError: a pass failed; every node completed before it stays cached.
        GoalError: an evaluation missed a goal; every node is cached, the result is `err.result`.
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
