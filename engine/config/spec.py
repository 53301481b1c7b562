"""The typed sections of a pipeline file, as pydantic models (no torch: validation is fast).

- `ModelSpec`, `DataSpec`, `EngineSettings`: the model, data and engine sections.
- `PipelineFile`: the file's shape; pass params are checked by each pass's own `Params`.
- `RESERVED_PASS_KEYS`, `MODEL_INPUT`: the keys every pass takes, and the name of the input model.
- `DATA_TYPES`: a data file's type by its suffix.
- `SHORTHAND`: the field a section's string form stands for (`model: NAME` is {path: NAME}).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimops.config.search import SearchSpec
from slimops.targets import TargetProfile

RESERVED_PASS_KEYS = ("type", "inputs", "targets")
# a local data file's `type:` by its suffix, for what writes pipelines (the shortcut commands, the Olive converter)
DATA_TYPES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text", ".text": "text"}
MODEL_INPUT = "model"


class ModelSpec(BaseModel):
    """The pipeline's input model. In YAML a mapping, or just its path or name."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="A folder, a file (.gguf, .onnx), a registered name (smollm2-135m) or a hub id.")
    kind: str | None = Field(None, description="Artifact kind; detected from the files when absent.")
    task: Literal["text-generation", "text-classification"] = Field(
        "text-generation", description="What the model does: a causal LM, or an encoder with a classification head."
    )

    shorthand: ClassVar[str] = "path"  # `model: smollm2-135m` is {path: smollm2-135m}

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {cls.shorthand: value} if isinstance(value, str) else value


# The sections whose string form stands for a mapping, each naming the field in `shorthand`
# (a target `cpu-int4` is {extends: cpu-int4}). `--set model.kind=...` extends the string to that
# mapping rather than replacing it.
SHORTHAND: dict[type[BaseModel], str] = {model: model.shorthand for model in (ModelSpec, TargetProfile)}


class DataSpec(BaseModel):
    """One data set: where it is, how to split it, how to turn an example into text."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["jsonl", "json", "csv", "parquet", "text", "hf"] = Field(
        "jsonl", description="File format, or hf for a hub data set (needs a network)."
    )
    files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="Local file(s), relative to the pipeline file; a mapping gives one per split."
    )
    name: str | None = Field(None, description="Hub data set name, for type: hf.")
    subset: str | None = Field(None, description="Hub data set subset (config name), for type: hf.")
    splits: dict[str, str] = Field(
        default_factory=dict,
        description="Split name to slice, e.g. {train: '[:90%]', eval: '[90%:]'} or {eval: 'test[:200]'}.",
    )
    template: str | None = Field(None, description="Text of one example, with {field} placeholders.")
    prompt: str | None = Field(None, description="Prompt part of an example; with `response`, loss covers the response only.")
    response: str | None = Field(None, description="Response part of an example, with {field} placeholders.")
    messages: str | None = Field(None, description="Column of chat messages, rendered with the model's chat template.")
    text: str | None = Field(None, description="Column of plain text (for perplexity or type: text).")
    label: str | None = Field(None, description="Column of the label, for classification and accuracy.")

    def file_list(self) -> list[str]:
        if self.files is None:
            return []
        if isinstance(self.files, str):
            return [self.files]
        if isinstance(self.files, list):
            return list(self.files)
        out: list[str] = []
        for value in self.files.values():
            out.extend([value] if isinstance(value, str) else value)
        return out


class EngineSettings(BaseModel):
    """Where the engine keeps its cache and writes its outputs, and what runs the nodes (docs/scale.md)."""

    model_config = ConfigDict(extra="forbid")

    cache_dir: str = Field(".slimops/cache", description="Cache folder, relative to the pipeline file; or an fsspec URL "
                           "(s3://bucket/prefix, gs://..., file:///shared/path) for a cache shared between machines.")
    output_dir: str = Field("out", description="Output folder, relative to the pipeline file.")
    executor: Literal["local", "ray"] = Field("local", description="local: nodes run one after another in this process; "
                                              "ray: every ready node runs as a Ray task (pip install slimops[cluster]).")
    ray_address: str | None = Field(None, description="The Ray cluster to join (auto, or ray://host:10001); default: "
                                    "join the one RAY_ADDRESS names, else start a local one.")
    local_cache_dir: str | None = Field(None, description="With a cache URL: the folder on each machine that holds local "
                                        "copies of the entries passes read; default ~/.cache/slimops/copies/<hash of the URL>.")
    local_cache_gb: float = Field(20.0, gt=0, description="With a cache URL: the local copies' size bound; the least "
                                  "recently used go first.")
    lock_lease_s: float = Field(60.0, ge=1, description="With a cache URL: how long a builder's lock on a node outlives "
                                "its last heartbeat (a lost machine's node is rebuilt after this).")


class PipelineFile(BaseModel):
    """The shape of a pipeline file. Pass params are validated by each pass's own Params."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("pipeline", description="A name for this pipeline, shown in plans and reports.")
    model: ModelSpec | None = Field(None, description="The input model.")
    data: dict[str, DataSpec] = Field(default_factory=dict, description="Data sets, by the name passes refer to.")
    targets: dict[str, TargetProfile] = Field(
        default_factory=dict, description="Hardware targets: a built-in name (cpu-int4) or a full profile."
    )
    passes: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Passes in order; each consumes the previous output unless `inputs` says."
    )
    engine: EngineSettings = Field(default_factory=EngineSettings)
    search: SearchSpec | None = Field(None, description="A search over pass params; `slimops run` then runs its trials.")
