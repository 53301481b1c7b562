"""Graph optimization for ONNX models the model builder did not make (encoders, exported graphs).

`optimize` runs onnxruntime's graph optimizations and its transformer fusions
(`onnxruntime.transformers.optimizer`: Attention, SkipLayerNorm, BiasGelu, ...), optionally
converts to fp16, and checks the result against its input (`passes/parity.py`). Builder output
is already fused for its target, so a genai-model is refused with a message saying so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from slimops.passes._onnx.files import OnnxError, load_model
from slimops.passes.parity import ParityParams, check
from slimops.plugin import Artifact, Pass, PassContext
from slimops.sizes import size_bytes

# HF model_type -> the optimizer's model_type
FUSION_TYPES = {
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "camembert": "bert",
    "electra": "bert", "mpnet": "bert", "albert": "bert", "deberta": "bert", "deberta-v2": "bert",
    "gpt2": "gpt2", "phi": "phi", "qwen3": "qwen3", "vit": "vit", "swin": "swin", "t5": "t5", "bart": "bart",
}


class OptimizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_type: str = Field("auto", description="The optimizer's model type (bert, gpt2, ...); auto reads config.json.")
    opt_level: Literal[0, 1, 2, 99] = Field(
        1, description="onnxruntime optimization level before the fusions: 0 fusions only, 1 basic, 2 extended, 99 all "
        "(2 and 99 tie the graph to the device they ran on).",
    )
    fp16: bool | None = Field(None, description="Convert weights to fp16, keeping fp32 inputs/outputs (default: target precision is fp16).")
    num_heads: int = Field(0, ge=0, description="Attention heads; 0 reads config.json, else lets the optimizer detect them.")
    hidden_size: int = Field(0, ge=0, description="Hidden size; 0 reads config.json, else lets the optimizer detect it.")
    parity: ParityParams = Field(default_factory=ParityParams, description="Check against the input model.")


class Optimize(Pass):
    """Fuses transformer subgraphs with onnxruntime's optimizer (encoders and other non-builder ONNX models)."""

    name = "optimize"
    version = "1"
    consumes = ("onnx-model", "genai-model")  # an onnx pass plans as genai-model until it sees an encoder
    produces = "onnx-model"
    per_target = True
    requires = ("onnx", "onnxruntime")

    Params = OptimizeParams

    def run(self, ctx: PassContext) -> Artifact:
        import onnx
        from onnxruntime.transformers.optimizer import optimize_model

        params = ctx.params
        source = Path(ctx.input.path)
        folder = source if source.is_dir() else source.parent
        if (folder / "genai_config.json").exists():
            raise OnnxError("this model comes from the onnxruntime-genai builder, which already fuses it for its target; drop the optimize pass")
        model_file = source if source.is_file() else folder / "model.onnx"
        config = _hf_config(folder)
        model_type = params.model_type if params.model_type != "auto" else FUSION_TYPES.get(config.get("model_type", ""), "bert")
        num_heads = params.num_heads or int(config.get("num_attention_heads", 0) or 0)
        hidden = params.hidden_size or int(config.get("hidden_size", 0) or 0)
        fp16 = params.fp16 if params.fp16 is not None else ctx.target.precision == "fp16"
        use_gpu = ctx.target.device in ("cuda", "dml")
        ctx.progress.update(0, 3, f"fusing ({model_type})")
        ctx.log.info("optimize_model(model_type=%s, num_heads=%s, hidden_size=%s, opt_level=%s, use_gpu=%s)", model_type, num_heads, hidden, params.opt_level, use_gpu)
        # onnxruntime's optimizer re-saves a ModelProto next to a temp file and loses its external data,
        # so it gets a private, single-link copy by path
        private = ctx.work_dir / "input" / model_file.name
        private.parent.mkdir(parents=True, exist_ok=True)
        large = size_bytes(model_file.parent) > 1.5 * 2**30
        onnx.save_model(load_model(model_file), str(private), save_as_external_data=large, location=private.name + ".data")
        optimized = optimize_model(str(private), model_type=model_type, num_heads=num_heads, hidden_size=hidden,
                                   opt_level=params.opt_level, use_gpu=use_gpu)
        fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
        ctx.log.info("fused operators: %s", fused)
        if fp16:
            optimized.convert_float_to_float16(keep_io_types=True)
        ctx.progress.update(1, 3, "saving")
        out_file = ctx.output_dir / model_file.name
        optimized.save_model_to_file(str(out_file), use_external_data_format=large)
        shutil.rmtree(private.parent, ignore_errors=True)
        if source.is_dir():
            for item in folder.iterdir():
                if item.is_file() and item.suffix != ".onnx" and not item.name.endswith(".onnx.data"):
                    shutil.copy2(item, ctx.output_dir / item.name)
        precision = "fp16" if fp16 else ctx.input.meta.get("precision", "fp32")
        path = ctx.output_dir if source.is_dir() else out_file
        artifact = Artifact(path=path, kind="onnx-model", meta={**ctx.input.meta, "precision": precision, "fused": fused})
        ctx.progress.update(2, 3, "parity check")
        result = check(ctx.input, artifact, params.parity, ctx.target, precision, ctx.log)
        artifact.metrics.update(result["metrics"])
        artifact.meta.update(result["meta"])
        artifact.metrics["fused_ops"] = sum(fused.values())
        return artifact


def _hf_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
