"""`merge_adapter`: fold a PEFT adapter into its base model, giving a plain HF model folder.

The base is the nearest upstream `hf-model` (the model the adapter was trained on); the
adapter's `meta` says the task (causal LM or classifier) and the labels of a classifier.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from slimops.errors import ModelError
from slimops.kinds import CAUSAL, CLASSIFIER, auto_model_class
from slimops.plugin import Artifact, Pass, PassContext


class MergeAdapter(Pass):
    """Adds the adapter's weights into the base's and saves the result with the tokenizer."""

    name = "merge_adapter"
    version = "1"
    consumes = ("hf-adapter",)
    produces = "hf-model"
    requires = ("torch", "transformers", "peft")

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        dtype: str = Field("float32", description="Dtype of the merged weights: float32, bfloat16 or float16.")

    def run(self, ctx: PassContext) -> Artifact:
        adapter = ctx.input
        base = ctx.nearest("hf-model")
        if base is None:
            raise ModelError(
                f"pass '{ctx.node}': found no base model upstream of adapter '{next(iter(ctx.inputs))}'; "
                "merge_adapter must follow a fine-tuning pass whose input is an HF model"
            )
        ctx.progress.update(0, 2, "loading base and adapter")
        merge(Path(base.path), Path(adapter.path), ctx.output_dir, adapter.meta, ctx.params.dtype)
        ctx.progress.update(2, 2, "merged")
        meta = {**base.meta, **{k: v for k, v in adapter.meta.items() if k in ("formatting", "labels", "task", "max_seq_len")}}
        meta["merged_from"] = adapter.meta.get("method", "adapter")
        return Artifact(path=ctx.output_dir, kind="hf-model", meta=meta)


def merge(base: Path, adapter: Path, out: Path, adapter_meta: dict, dtype: str = "float32") -> None:
    """Load `base`, apply `adapter`, merge and unload, save into `out` with the base's tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ModelError(f"merge_adapter: unknown dtype '{dtype}'; use float32, bfloat16 or float16")
    labels = adapter_meta.get("labels")
    task = CLASSIFIER if adapter_meta.get("task") == CLASSIFIER else CAUSAL
    if task == CLASSIFIER:
        model = auto_model_class(task).from_pretrained(
            base, num_labels=len(labels or []) or 2, dtype=torch_dtype,
            **({"id2label": dict(enumerate(labels)), "label2id": {l: i for i, l in enumerate(labels)}} if labels else {}),
        )
    else:
        model = auto_model_class(task).from_pretrained(base, dtype=torch_dtype)
    try:
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (ValueError, KeyError, RuntimeError) as err:
        raise ModelError(f"adapter {adapter} does not fit base {base}: {err}") from None
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
