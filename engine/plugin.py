"""The plugin contract: `Pass`, `PassContext` and `Artifact`.

A pass is a class with a pydantic `Params` model and one method, `run(ctx) -> Artifact`. The
class attributes tell the planner what it accepts, what it makes, whether it depends on the
target, and what it needs; the engine does the rest (caching, keys, outputs, progress).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

# A pass with `baseline = True` also runs on the pipeline's input model, as the node `<name>.before`.
BASELINE_SUFFIX = ".before"


@dataclass
class Artifact:
    """What a pass produces: a file or folder of a given kind.

    Args:
        path: the file or folder; inside `ctx.output_dir` when a pass returns it.
        kind: what it is (`hf-model`, `onnx-model`, ... or a plugin's own word).
        meta: JSON-serialisable facts later passes need (a chat template, the base model's key).
        metrics: numbers to show in the run summary and run.json.
    """

    path: Path
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


class Progress(Protocol):
    """What a pass reports while it works; the run display shows it on the pass's line."""

    def update(self, completed: float | None = None, total: float | None = None, message: str | None = None) -> None: ...


class NullProgress:
    def update(self, completed: float | None = None, total: float | None = None, message: str | None = None) -> None:
        pass


@dataclass
class PassContext:
    """Everything a pass may use while it runs.

    Args:
        node: the node's name (`finetune`, or `quant@laptop` for a per-target node).
        params: the validated `Params` of the pass.
        inputs: upstream artifacts by node name, in the order the pipeline lists them.
        target: the target profile; for a target-independent pass, the pipeline's first target.
        output_dir: an empty folder this pass owns; what it returns must live inside it.
        work_dir: a folder kept across failed or killed attempts of this very node (same key),
            for checkpoints to resume from; removed once the node completes.
        data: the pipeline's data sets by name (`slimops.config.DataSpec`, files resolved).
        config_dir: the folder of the pipeline file, for paths the pass resolves itself.
        source: the pipeline's input model artifact, if it has one.
        ancestors: every upstream artifact by node name, nearest first (inputs, their inputs, ...);
            `nearest(kind)` picks one, e.g. the base model of an adapter.
        progress: report progress here.
        log: a logger writing to this node's log file.
    """

    node: str
    params: Any
    inputs: dict[str, Artifact]
    target: Any
    output_dir: Path
    work_dir: Path
    data: dict[str, Any]
    config_dir: Path
    source: Artifact | None = None
    ancestors: dict[str, Artifact] = field(default_factory=dict)
    progress: Progress = field(default_factory=NullProgress)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("slimops.pass"))

    @property
    def input(self) -> Artifact:
        """The first (usually the only) input."""
        if not self.inputs:
            raise RuntimeError(f"pass '{self.node}' has no input")
        return next(iter(self.inputs.values()))

    def nearest(self, kind: str) -> Artifact | None:
        """The closest upstream artifact of `kind` (inputs first), or None."""
        for artifact in self.ancestors.values():
            if artifact.kind == kind:
                return artifact
        return None


class Pass:
    """Base class of every pass; subclass it, set the class attributes, write `run`.

    Class attributes:
        name: the `type:` users write in YAML.
        version: part of the cache key; bump it when the pass's behaviour changes.
        consumes: the artifact kinds it accepts; None accepts any, () takes no input.
        produces: the kind it returns; None means the kind of its first input.
        per_target: True when its output depends on the target profile.
        requires: Python distributions it imports; missing ones are plan errors, and their
            versions are part of the cache key.
        devices: machine devices it needs to run at all (`("cuda",)` for a GPU-only pass);
            empty means any.
        alternative: the pass to suggest when this one cannot serve a target.
        executes_on_target: True when it runs the model on the target's execution providers
            (so those must exist here); False when it only writes files for that target.
        converts: True when the planner may insert it to turn `consumes` into `produces`
            automatically (a GGUF file into an HF folder, say).
        data_fields: Params fields that name a `data:` entry; their fingerprints join the key.
        baseline: True when the planner should also run this pass, with the same params, on the
            pipeline's input model as the node `<name>.before`; each node of the pass then gets
            that node's artifact as an extra, last input (before/after comparisons).
        unkeyed: Params fields that do not change the artifact (goals, say); left out of the key,
            so changing them reuses the cached artifact.
        many_inputs: True when `run` reads every one of `ctx.inputs`; a pass that reads one
            (`ctx.input`) given several in `inputs:` is a config error.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    consumes: ClassVar[tuple[str, ...] | None] = None
    produces: ClassVar[str | None] = None
    per_target: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()
    devices: ClassVar[tuple[str, ...]] = ()
    alternative: ClassVar[str | None] = None
    executes_on_target: ClassVar[bool] = False
    converts: ClassVar[bool] = False
    data_fields: ClassVar[tuple[str, ...]] = ("data", "eval_data", "calibration_data")
    baseline: ClassVar[bool] = False
    unkeyed: ClassVar[tuple[str, ...]] = ()
    many_inputs: ClassVar[bool] = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def output_kind(self, params: Any, input_kinds: list[str]) -> str:
        """The kind this pass returns for these params and inputs (default: `produces`)."""
        if self.produces is not None:
            return self.produces
        return input_kinds[0] if input_kinds else "any"

    extra_input_kind: str | None = None

    def extra_inputs(self, params: Any) -> list[str]:
        """Other passes this one reads besides its inputs (evaluate's `reference`): they run
        first and their artifacts reach `ctx.inputs` after the inputs; each must make
        `extra_input_kind` when that is set."""
        return []

    def imports(self, params: Any) -> dict[tuple[str | int, ...], str]:
        """The `module:function`s `run` imports from the pipeline's folder (a custom loss, a custom
        metric), by the key path under the pass that names each; validation checks that each
        module can be found, so a typo fails before anything runs rather than after training."""
        return {}

    def choices(self, params: Any) -> dict[str, Any]:
        """What the pass decides from this machine for an `auto` setting (precision, say), by name.

        Part of the node's key, so an artifact built with other choices is never reused; empty by default.
        """
        return {}

    def requirements(self, params: Any) -> tuple[str, ...]:
        """The distributions these params need: `requires`, plus any a setting adds (evaluate's lm_eval tasks)."""
        return self.requires

    def check(self, params: Any, target: Any) -> str | None:
        """Say why this pass cannot serve `target` with `params`, or None if it can.

        Called at plan time; override for needs the class attributes cannot express.
        """
        return None

    def needs_after(self, params: Any, target: Any) -> tuple[str, str] | None:
        """(pass type, why) when this pass's output is only half the job for `target` and a pass of that
        type must read it; the planner reports a pipeline without one. Default: None."""
        return None

    def resources(self, params: Any, target: Any) -> dict[str, float]:
        """What one run takes from a machine, for the Ray executor: {"CPU": n, "GPU": n} (and "memory", bytes).

        Default: one CPU, and one GPU when the target's device is CUDA.
        """
        return {"CPU": 1.0, "GPU": 1.0 if getattr(target, "device", None) == "cuda" else 0.0}

    def goals(self, params: Any, artifact: Artifact) -> list[dict[str, Any]]:
        """Goals checked on the finished artifact, fresh or cached (default: none).

        Returns:
            one dict per goal: `metric`, `rule`, `value`, `ok`, `why`, and `fatal` (a missed
            fatal goal fails the run once every node is cached).
        """
        return []

    def run(self, ctx: PassContext) -> Artifact:  # pragma: no cover - the contract
        raise NotImplementedError(f"pass '{self.name}' does not implement run(ctx)")
