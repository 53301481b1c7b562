"""`from_gguf`: a format conversion the planner inserts on its own (`converts = True`).

A `.gguf` file -> a Hugging Face model folder (weights dequantized to float32,
config, tokenizer with its chat template). Runs once per GGUF file; the cache keeps the result.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from slimops.errors import ModelError
from slimops.plugin import Artifact, Pass, PassContext


class FromGguf(Pass):
    """Dequantizes a GGUF file into an HF folder that every HF-reading pass can load."""

    name = "from_gguf"
    version = "1"
    consumes = ("gguf",)
    produces = "hf-model"
    converts = True
    requires = ("transformers", "gguf", "torch")

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def run(self, ctx: PassContext) -> Artifact:
        source = Path(ctx.input.path)
        if source.is_dir():
            found = sorted(source.glob("*.gguf"))
            if not found:
                raise ModelError(f"no .gguf file in {source}")
            source = found[0]
        ctx.progress.update(0, 3, f"reading {source.name}")
        save_gguf_as_hf(source, ctx.output_dir, ctx.log)
        ctx.progress.update(3, 3, "saved")
        meta = {**ctx.input.meta, "converted_from": source.name}
        return Artifact(path=ctx.output_dir, kind="hf-model", meta=meta)


def save_gguf_as_hf(gguf_file: Path, out_dir: Path, log=None) -> None:
    """Write `gguf_file` as a plain HF folder in `out_dir`.

    A model that transformers loads with `gguf_file=` is flagged as quantized and refuses
    `save_pretrained`, so the weights are moved into a fresh model built from the same config.

    Raises:
        ModelError: transformers cannot read the file (unsupported architecture or quant type,
            or a file cut short).
    """
    import copy
    import struct

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, OSError, NotImplementedError, struct.error) as err:  # struct.error: cut short in its metadata
        raise ModelError(f"transformers cannot read {gguf_file}: {err} (an architecture or quantization type transformers "
                         "does not convert, or a file cut short: check it is complete)") from None
    config = copy.deepcopy(loaded.config)  # reading it from the file again costs seconds
    # The GGUF config carries a quantization block that would make the fresh model "quantized" too.
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    if fresh.config.tie_word_embeddings:
        # One tensor serves both; a tied checkpoint stores only the input embedding.
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and fresh.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"{gguf_file}: weights do not fit the model its config describes (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if fresh.config.tie_word_embeddings:
        fresh.tie_weights()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if fresh.generation_config is not None and fresh.generation_config.pad_token_id is None:
        fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if log is not None:
        log.info("dequantized %s into %s (%d tensors, tied embeddings: %s)", gguf_file, out_dir, len(state), fresh.config.tie_word_embeddings)
