"""Export to ONNX, once per target.

- Decoder LLMs go through the onnxruntime-genai model builder, run as a subprocess so its
  memory and its prints stay out of slimops: out comes a genai-model folder (model.onnx and
  its external data, genai_config.json, tokenizer files, the chat template).
- Decoders whose architecture the installed builder does not build (GPT-2, DialoGPT) go through
  `torch.onnx.export` with a KV cache (`passes/_onnx/torch_decoder.py`): out comes an onnx-model
  folder that evaluate and quantize read as they read any ONNX decoder.
- Encoders (BERT, MiniLM; with or without a classification head) go through `torch.onnx.export`
  with dynamic batch and sequence axes: out comes an onnx-model folder (model.onnx, config.json,
  tokenizer files).
- Precision and execution provider come from `ctx.target` unless the params say otherwise; the
  result is checked against the input model (`passes/parity.py`) before the node completes.

The ONNX file helpers and the builder's launch, which other passes use too, live in `passes/_onnx/`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slimops.kinds import CLASSIFIER, FEATURES, auto_model_class, has_classifier, is_encoder
from slimops.passes._onnx.builder import (BUILDER_EP, BUILDER_PRECISIONS, builder_options, builder_refusal, check_genai_loads, num_layers,
                                          run_builder, set_runtime_threads)
from slimops.passes._onnx.files import TOKENIZER_FILES, OnnxError, chat_template, copy_tokenizer
from slimops.passes._onnx.torch_decoder import export_decoder
from slimops.passes.parity import ParityParams, check
from slimops.plugin import Artifact, Pass, PassContext
from slimops.quantization import BlockSize
from slimops.sizes import size_mb


class OnnxParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    precision: Literal["auto", "fp32", "fp16", "bf16", "int4", "int8"] = Field(
        "auto",
        description="Weights of the exported model. auto: the target's precision (QDQ targets export fp32 "
        "for the quantize pass). Set fp32 when a quantize pass follows.",
    )
    task: Literal["auto", "text-generation", "text-classification", "feature-extraction"] = Field(
        "auto", description="auto: decoders from config.json architectures, encoders otherwise.",
    )
    block_size: BlockSize | None = Field(None, description="int4/int8 block size (default: target settings, else 32).")
    accuracy_level: int | None = Field(None, ge=0, le=4, description="MatMulNBits compute type: 4 = int8 (fastest on CPU), 1 = fp32.")
    symmetric: bool | None = Field(None, description="Symmetric int4/int8 weights (default true).")
    keep_lm_head_int8: bool | None = Field(
        None, description="lm_head at int8 instead of int4: closer logits, a little larger. Default: true for affine, false for the builder.")
    int4_method: Literal["affine", "builder"] = Field(
        "affine",
        description="How a CPU int4 decoder is made. affine: the builder at fp32, then int4 with a scale and a float offset "
        "per block (exact on GGUF Q4_1 weights) and a merged LoRA kept exactly beside the int4 base; lm_head int8, "
        "shared with the embedding. builder: the builder's own int4 (symmetric round-to-nearest): "
        "smaller and faster, much further from the input model (set a lower parity.min_top1 with it).",
    )
    extra_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="More model-builder options, passed as KEY=VALUE (see its --help).",
    )
    opset: int = Field(17, ge=13, description="ONNX opset of torch.onnx exports (encoders, and decoders the builder does not build).")
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo", description="torch.onnx exporter for encoders and for decoders the builder does not build (GPT-2): "
        "dynamo (maintained) or torchscript (faster, legacy).",
    )
    parity: ParityParams = Field(default_factory=ParityParams, description="Check against the input model.")


class Onnx(Pass):
    """Exports an HF model to ONNX: decoders via the onnxruntime-genai builder, encoders via torch.onnx."""

    name = "onnx"
    version = "3"
    consumes = ("hf-model",)
    produces = "genai-model"
    per_target = True
    requires = ("onnx", "onnxruntime", "onnxruntime-genai", "onnx-ir", "onnxscript", "transformers", "torch")  # onnx-ir: the builder; onnxscript: torch.onnx

    Params = OnnxParams

    def output_kind(self, params, input_kinds):
        if params.task in ("text-classification", "feature-extraction"):
            return "onnx-model"
        return "genai-model"  # an auto-detected encoder returns onnx-model at run time

    def needs_after(self, params, target):
        if params.precision == "auto" and target.quant_format == "qdq":
            return ("quantize", "a QDQ target gets its int8 from a `quantize` pass (calibrated), and this export is fp32 "
                                "for it; add one after it, e.g. `quant: {type: quantize, calibration_data: <a data: entry>}`, "
                                "or set `precision: fp32` here to export fp32 on purpose")
        return None

    def check(self, params, target):
        precision = resolve_precision(params.precision, target)
        if precision not in BUILDER_PRECISIONS.get(BUILDER_EP[target.device], set()) and params.precision != "auto":
            supported = ", ".join(sorted(BUILDER_PRECISIONS[BUILDER_EP[target.device]]))
            return f"the model builder makes {precision} models for {target.device} only as {supported}"
        return None

    def run(self, ctx: PassContext) -> Artifact:
        params = ctx.params
        source = Path(ctx.input.path)
        encoder = params.task in ("text-classification", "feature-extraction") or (params.task == "auto" and is_encoder(source))
        precision = resolve_precision(params.precision, ctx.target, encoder)
        if encoder:
            artifact = export_encoder(source, ctx.output_dir, params, precision, ctx)
        elif not (refusal := builder_refusal(json.loads((source / "config.json").read_text()))):
            artifact = build_decoder(source, ctx.output_dir, params, precision, ctx)
        else:
            ctx.log.info("%s: exporting it through torch.onnx with a KV cache, as an onnx-model", refusal)
            artifact = export_decoder(source, ctx.output_dir, params, precision, ctx)
        artifact.meta = {**ctx.input.meta, **artifact.meta}
        template = chat_template(source)
        if template:
            artifact.meta["chat_template"] = template
            if not (ctx.output_dir / "chat_template.jinja").exists():
                (ctx.output_dir / "chat_template.jinja").write_text(template)
        ctx.progress.update(message="parity check")
        result = check(ctx.input, artifact, params.parity, ctx.target, artifact.meta["precision"], ctx.log)
        artifact.metrics.update(result["metrics"])
        artifact.meta.update(result["meta"])
        artifact.metrics["size_mb"] = round(size_mb(ctx.output_dir), 2)
        return artifact


def resolve_precision(requested: str, target: Any, encoder: bool = False) -> str:
    """The precision to export at: the param, else the target's.

    QDQ targets export fp32 for `quantize`, and so do encoders for int8 dynamic targets; a decoder
    for an int8 dynamic target gets the builder's weight-only int8 (dynamic int8 does not suit
    decoders: see `quantize.resolve_method`).
    """
    if requested != "auto":
        return requested
    if target.quant_format == "qdq" or (target.quant_format == "dynamic" and encoder):
        return "fp32"
    precision = target.precision
    supported = BUILDER_PRECISIONS.get(BUILDER_EP[target.device], {"fp32"})
    if precision in supported:
        return precision
    return "fp16" if "fp16" in supported and precision in ("bf16", "fp32") else "fp32"


# -- decoders: the onnxruntime-genai model builder (`_onnx/builder.py`) ------------------------------------



def build_decoder(source: Path, out: Path, params: OnnxParams, precision: str, ctx: PassContext) -> Artifact:
    ep = BUILDER_EP[ctx.target.device]
    if precision == "int4" and ep == "cpu" and params.int4_method == "affine":
        return build_affine_int4(source, out, params, ctx)
    options = builder_options(params, ctx.target, precision)
    ctx.progress.update(0, num_layers(source) + 2, f"builder: {precision} for {ep}")
    seconds = run_builder(source, out, precision, ep, options, ctx.work_dir / "builder-cache", ctx)
    shutil.rmtree(ctx.work_dir / "builder-cache", ignore_errors=True)
    if not (out / "genai_config.json").exists():
        raise OnnxError("the model builder finished without writing genai_config.json; see the log")
    shared = None
    # CPU only: GatherBlockQuantized over int8 is what onnxruntime's CPU kernels run; GPUs are untested here
    if ctx.target.device == "cpu" and (precision == "int8" or "last_matmul:int8" in options.get("matmul_mixed_precision", "")):
        from slimops.passes._onnx.tied import share_in_file

        shared = share_in_file(out / "model.onnx")  # the int8 lm_head's bytes serve a tied embedding too
        if shared:
            ctx.log.info("the embedding now reads the int8 lm_head's weights; dropped the fp32 table %s", shared)
    set_runtime_threads(out, ctx.target)
    if ctx.target.device == "cpu":
        check_genai_loads(out)
    meta = {"precision": precision, "execution_provider": ep, "builder_options": options, "task": "text-generation",
            "shared_embedding": shared is not None}
    return Artifact(path=out, kind="genai-model", meta=meta, metrics={"build_seconds": round(seconds, 2)})


def build_affine_int4(source: Path, out: Path, params: OnnxParams, ctx: PassContext) -> Artifact:
    """The builder at fp32, then `passes/_onnx/affine.py`: int4 base, offsets and any merged LoRA exact beside it.

    A merged LoRA's delta is a few thousandths of an int4 step, so quantizing the merged weights
    would round the fine-tuning away; when the input was merged from a plain LoRA adapter and
    its base is upstream, the base is exported and the adapter rides beside the int4 weights.
    """
    from slimops.passes._onnx.affine import options_for, rewrite_file

    options = options_for(params, (ctx.target.settings or {}).get("quantize", {}))
    base, adapter = merged_lora_lineage(ctx)
    if adapter is not None:
        ctx.log.info("the input is %s merged into %s: exporting the base, the adapter goes beside the int4 weights", adapter, base)
    fp32_dir = ctx.work_dir / "fp32"
    shutil.rmtree(fp32_dir, ignore_errors=True)
    builder = builder_options(params, ctx.target, "fp32")
    ctx.progress.update(0, num_layers(source) + 3, "builder: fp32 for cpu")
    seconds = run_builder(base or source, fp32_dir, "fp32", "cpu", builder, ctx.work_dir / "builder-cache", ctx)
    shutil.rmtree(ctx.work_dir / "builder-cache", ignore_errors=True)
    if not (fp32_dir / "genai_config.json").exists():
        raise OnnxError("the model builder finished without writing genai_config.json; see the log")
    ctx.progress.update(message="affine int4")
    model_name = json.loads((fp32_dir / "genai_config.json").read_text())["model"]["decoder"].get("filename", "model.onnx")
    try:
        report = rewrite_file(fp32_dir / model_name, out / model_name, **options, lora_dir=adapter)
    except ValueError as err:
        if adapter is None:
            raise OnnxError(f"affine int4 failed: {err}; set int4_method: builder, or export the model at fp32 and quantize it") from None
        # the adapter cannot ride beside the base: the merged weights themselves go to int4 instead
        ctx.log.warning("affine int4 cannot carry the adapter beside the base (%s): quantizing the merged model instead, "
                        "which may round part of the fine-tuning away (export at fp32 or int8 to keep all of it)", err)
        shutil.rmtree(fp32_dir, ignore_errors=True)
        seconds += run_builder(source, fp32_dir, "fp32", "cpu", builder, ctx.work_dir / "builder-cache", ctx)
        shutil.rmtree(ctx.work_dir / "builder-cache", ignore_errors=True)
        for stale in out.glob(model_name + "*"):
            stale.unlink()
        report = rewrite_file(fp32_dir / model_name, out / model_name, **options, lora_dir=None)
    for item in fp32_dir.iterdir():
        if item.is_file() and not item.name.startswith(model_name):
            shutil.copy2(item, out / item.name)
    for name in TOKENIZER_FILES:  # the merged model's own tokenizer files, where it has them
        if (source / name).exists():
            shutil.copy2(source / name, out / name)
    shutil.rmtree(fp32_dir, ignore_errors=True)
    set_runtime_threads(out, ctx.target)
    check_genai_loads(out)
    ctx.log.info("affine int4: %d MatMuls int4, %d with a LoRA side path, lm_head int8: %s, embedding shared: %s",
                 report.quantized, report.lora_layers, report.lm_head is not None, report.shared_embedding)
    meta = {"precision": "int4", "execution_provider": "cpu", "builder_options": builder, "task": "text-generation",
            "quantization": {**report.as_meta(), "block_size": options["block"], "accuracy_level": options["accuracy_level"]}}
    return Artifact(path=out, kind="genai-model", meta=meta, metrics={"build_seconds": round(seconds, 2)})


def merged_lora_lineage(ctx: PassContext) -> tuple[Path | None, Path | None]:
    """(base folder, adapter folder) when the input was merged from a plain LoRA, else (None, None)."""
    if not ctx.input.meta.get("merged_from"):
        return None, None
    adapter = base = None
    for artifact in ctx.ancestors.values():
        if adapter is None and artifact.kind == "hf-adapter":
            adapter = artifact
        elif adapter is not None and artifact.kind == "hf-model":
            base = artifact
            break
    if adapter is None or base is None:
        return None, None
    config = Path(adapter.path) / "adapter_config.json"
    try:
        peft = json.loads(config.read_text())
    except (OSError, ValueError):
        return None, None
    if peft.get("peft_type") != "LORA" or peft.get("use_dora") or peft.get("modules_to_save"):
        ctx.log.warning("the input merges a %s adapter, which affine int4 cannot carry beside the base: quantizing the merged "
                        "weights, which may round much of the fine-tuning away (export at fp32 or int8 to keep it)",
                        "DoRA" if peft.get("use_dora") else peft.get("peft_type"))
        return None, None
    return Path(base.path), Path(adapter.path)



# -- encoders: torch.onnx.export ------------------------------------------------------------------------------


def export_encoder(source: Path, out: Path, params: OnnxParams, precision: str, ctx: PassContext) -> Artifact:
    """Export an encoder with dynamic batch and sequence axes; fp16 converts after export."""
    import torch

    ctx.progress.update(0, 3, "loading")
    classifier = params.task == CLASSIFIER or (params.task == "auto" and has_classifier(source))
    model = auto_model_class(CLASSIFIER if classifier else FEATURES).from_pretrained(str(source), dtype=torch.float32).eval()
    model.config.return_dict = True
    forward_names = model.forward.__code__.co_varnames
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in forward_names and getattr(model.config, "type_vocab_size", 0) else [])
    example = tuple(torch.ones(2, 8, dtype=torch.long) if n != "token_type_ids" else torch.zeros(2, 8, dtype=torch.long) for n in names)
    output = "logits" if classifier else "last_hidden_state"

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            result = self.inner(**dict(zip(names, args)))
            return result.logits if classifier else result.last_hidden_state

    model_file = out / "model.onnx"
    ctx.progress.update(1, 3, f"torch.onnx.export ({params.exporter})")
    if params.exporter == "dynamo":
        batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=1, max=getattr(model.config, "max_position_embeddings", 512))
        shapes = tuple({0: batch, 1: seq} for _ in names)
        program = torch.onnx.export(Wrapper(model), example, dynamic_shapes=(shapes,), input_names=names,
                                    output_names=[output], opset_version=max(params.opset, 18), dynamo=True, verbose=False)
        program.save(str(model_file))
    else:
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        axes[output] = {0: "batch"} if classifier else {0: "batch", 1: "sequence"}
        torch.onnx.export(Wrapper(model), example, str(model_file), input_names=names, output_names=[output],
                          dynamic_axes=axes, opset_version=params.opset, dynamo=False)
    if precision == "fp16":
        _to_fp16(model_file)
    ctx.progress.update(2, 3, "copying tokenizer")
    copy_tokenizer(source, out)
    shutil.copy2(source / "config.json", out / "config.json")
    exported = precision if precision in ("fp32", "fp16") else "fp32"
    if exported != precision:
        ctx.log.info("encoders export at fp32; add a quantize pass for %s", precision)
    meta = {"precision": exported, "task": "text-classification" if classifier else "feature-extraction", "inputs": names, "output": output}
    return Artifact(path=out, kind="onnx-model", meta=meta)


def _to_fp16(model_file: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(model_file))
    model = convert_float_to_float16(model, keep_io_types=True)
    for extra in model_file.parent.glob("model.onnx.data"):
        extra.unlink()
    onnx.save_model(model, str(model_file))
