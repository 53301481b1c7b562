"""`generate_adapter`: one base ONNX model that takes LoRA weights as inputs, and one
`.onnx_adapter` file per adapter (onnxruntime's adapter format), for multi-LoRA serving.

How it is made:
1. The onnxruntime-genai builder exports base + first adapter at full precision (fp32 on CPU,
   fp16 on GPUs): each adapted MatMul gets a `lora_A -> lora_B -> Add` branch whose weights are
   initializers (lora_B already scaled by alpha / r).
2. Those initializers become graph inputs with a symbolic rank (`lora_rank`), so adapters of
   different ranks fit; each keeps a rank-1 zero initializer as its default, so with no adapter
   active the model is exactly the base.
3. Each other adapter is exported the same way and only its LoRA weights are kept; they must
   target the same modules as the first.
4. For an int4 target, the base MatMuls are then quantized and the LoRA branches left in float:
   on a CPU with `affine` (exact on GGUF Q4_1 weights, lm_head int8 shared with a tied embedding),
   elsewhere with rtn. rtn's symmetric grid moved SmolLM2's base to parity top-1 0.5 against
   PEFT, under int4's 0.8; affine's keeps it.

Run it with onnxruntime-genai: `adapters = og.Adapters(model); adapters.load(file, name);
generator.set_active_adapter(adapters, name)`; or with onnxruntime: `RunOptions.add_active_adapter`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slimops.config.names import ALLOWED, SAFE
from slimops.passes._onnx.builder import BUILDER_EP, builder_options, builder_refusal, run_builder, set_runtime_threads
from slimops.passes._onnx.files import OnnxError, load_model, save_model
from slimops.passes.onnx import OnnxParams
from slimops.passes._runtime.common import read_json
from slimops.passes.parity import ParityParams, check
from slimops.plugin import Artifact, Pass, PassContext
from slimops.quantization import BlockSize
from slimops.sizes import size_mb

RANK = "lora_rank"


class GenerateAdapterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="More PEFT LoRA adapter folders by name (relative to the pipeline file), beside any hf-adapter inputs.",
    )
    precision: str = Field("auto", description="Base weights: auto (the target's; int4 quantizes the base with rtn), fp32, fp16, int4.")

    @field_validator("adapters")
    @classmethod
    def _safe_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:  # each name becomes adapters/NAME.onnx_adapter and a build folder: one safe path component
            if not SAFE.fullmatch(name) or name.endswith("."):
                raise ValueError(f"{name!r} cannot name an adapter: it becomes a file name; allowed: {ALLOWED}")
        return value
    block_size: BlockSize | None = Field(None, description="int4 block size of the base (default: target settings, else 32).")
    parity: ParityParams = Field(default_factory=ParityParams, description="Base model (no adapter) and each adapter, against PyTorch/PEFT.")


class GenerateAdapter(Pass):
    """Exports a base model with LoRA weights as inputs, and one .onnx_adapter file per adapter."""

    name = "generate_adapter"
    version = "3"  # 3: the LoRA products' value_info says lora_rank, not the trained rank
    consumes = ("hf-adapter", "hf-model")
    many_inputs = True
    produces = "genai-model"
    per_target = True
    requires = ("onnx", "onnxruntime", "onnxruntime-genai", "onnx-ir", "transformers", "torch", "peft")  # onnx-ir: the builder imports it

    Params = GenerateAdapterParams

    def run(self, ctx: PassContext) -> Artifact:
        params = ctx.params
        adapters: dict[str, Path] = {}
        base: Artifact | None = None
        for name, artifact in ctx.inputs.items():
            if artifact.kind == "hf-adapter":
                adapters[name] = Path(artifact.path)
            else:
                base = artifact
        base = base or ctx.nearest("hf-model")
        if base is None:
            raise OnnxError("generate_adapter needs a base HF model upstream (the model the adapters were trained on)")
        for name, text in params.adapters.items():
            if name in adapters:
                raise OnnxError(f"adapters.{name}: an input node is named '{name}' too; give the folder another name")
            path = (ctx.config_dir / text).resolve()
            if not (path / "adapter_config.json").is_file():
                raise OnnxError(f"adapters.{name}: {path} is not a PEFT adapter folder (no adapter_config.json)")
            adapters[name] = path
        if not adapters:
            raise OnnxError("generate_adapter has no adapter: read a fine-tuning node (inputs: [...]) or list folders under `adapters:`")
        base_dir = Path(base.path)
        config = read_json(base_dir / "config.json")
        if config and (refusal := builder_refusal(config)):
            raise OnnxError(f"generate_adapter serves adapters through the onnxruntime-genai model builder, and here {refusal}; "
                            f"merge each adapter (merge_adapter) and export the merged models with `onnx` instead")
        device = ctx.target.device
        float_precision = "fp32" if BUILDER_EP[device] == "cpu" else "fp16"
        target_precision = params.precision if params.precision != "auto" else ctx.target.precision
        ep = BUILDER_EP[device]
        options = builder_options(OnnxParams(), ctx.target, float_precision)
        out = ctx.output_dir
        (out / "adapters").mkdir()
        names = list(adapters)
        total = len(names) + 2
        weights: dict[str, dict[str, Any]] = {}
        for index, name in enumerate(names):
            ctx.progress.update(index, total, f"builder with adapter '{name}'")
            build = out if index == 0 else ctx.work_dir / f"build-{name}"
            shutil.rmtree(build, ignore_errors=True) if index else None
            run_builder(base_dir, build, float_precision, ep, {**options, "adapter_path": str(adapters[name])}, ctx.work_dir / "builder-cache", None if index else ctx)
            model = load_model(build / "model.onnx")
            weights[name] = lora_initializers(model)
            if not weights[name]:
                raise OnnxError(f"adapter '{name}': the builder made no LoRA branches; is it a LoRA adapter (peft_type LORA)?")
            if index == 0:
                base_model = model
            else:
                expected, got = set(weights[names[0]]), set(weights[name])
                if expected != got:
                    raise OnnxError(f"adapter '{name}' adapts other modules than '{names[0]}' ({len(got ^ expected)} differ); "
                                    "adapters sharing one base model need the same target_modules")
                shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(ctx.work_dir / "builder-cache", ignore_errors=True)
        ctx.progress.update(len(names), total, "LoRA weights -> inputs")
        lora_to_inputs(base_model, weights[names[0]])
        precision = float_precision
        if target_precision == "int4":
            settings = (ctx.target.settings or {}).get("quantize", {})
            block = params.block_size or settings.get("block_size", 32)
            base_model = quantize_base(base_model, block, settings.get("accuracy_level", 4), ctx.target.device == "cpu", ctx.log)
            precision = "int4"
        save_model(base_model, out / "model.onnx")
        set_runtime_threads(out, ctx.target)
        files = {}
        for name in names:
            files[name] = f"adapters/{name}.onnx_adapter"
            write_adapter(weights[name], out / files[name])
        meta = {**base.meta, "precision": precision, "adapters": files, "execution_provider": ep}
        artifact = Artifact(path=out, kind="genai-model", meta=meta)
        ctx.progress.update(len(names) + 1, total, "parity check")
        result = check(base, artifact, params.parity, ctx.target, precision, ctx.log)
        artifact.metrics.update(result["metrics"])
        artifact.meta["parity"] = {"base": result["meta"].get("parity")}
        for name in names:
            one = check(base, artifact, params.parity, ctx.target, precision, ctx.log,
                        reference_adapter=adapters[name], candidate_adapter=out / files[name])
            artifact.meta["parity"][name] = one["meta"].get("parity")
            for key, value in one["metrics"].items():
                artifact.metrics[f"{key}_{name}"] = value
        artifact.metrics["adapters"] = len(names)
        artifact.metrics["size_mb"] = round(size_mb(out), 2)
        return artifact


def lora_initializers(model) -> dict[str, Any]:
    """The builder's LoRA weights by initializer name, as numpy arrays."""
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if ".lora_A." in t.name or ".lora_B." in t.name}


def lora_to_inputs(model, weights: dict[str, Any]) -> None:
    """Make each LoRA initializer a graph input of rank `lora_rank`, with a rank-1 zero default.

    The builder's value_info says the trained rank on each LoRA A product: it is made `lora_rank` too.
    Left static, onnxruntime plans buffers from it, and a run at another rank (the rank-1 default,
    a second adapter) may share a buffer with a tensor that happens to have the trained rank's size.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    products = {node.output[0] for node in model.graph.node if any(name in weights and ".lora_A." in name for name in node.input)}
    kept_info = [info for info in model.graph.value_info if info.name not in weights]
    for info in kept_info:
        if info.name in products and info.type.tensor_type.shape.dim:
            info.type.tensor_type.shape.dim[-1].dim_param = RANK  # dim_param replaces the static value (a oneof)
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)

    kept = [t for t in model.graph.initializer if t.name not in weights]
    for name, array in weights.items():
        is_a = ".lora_A." in name
        shape = [array.shape[0], RANK] if is_a else [RANK, array.shape[1]]
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        model.graph.input.append(helper.make_tensor_value_info(name, elem, shape))
        zeros = np.zeros((array.shape[0], 1) if is_a else (1, array.shape[1]), dtype=array.dtype)
        kept.append(numpy_helper.from_array(zeros, name))
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def quantize_base(model, block_size: int, accuracy_level: int | None, affine: bool, log):
    """int4 on the base MatMuls (affine on CPUs, else rtn); the LoRA branches stay float (they read inputs)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq
    from onnxruntime.quantization.quant_utils import QuantFormat

    lora_nodes = [n.name for n in model.graph.node if "/lora" in n.name]
    if affine:
        from slimops.passes._onnx.affine import quantize_affine

        report = quantize_affine(model, block=block_size, accuracy_level=accuracy_level, lm_head_int8=True, exclude=tuple(lora_nodes))
        log.info("affine int4 base: %d MatMuls, %d LoRA nodes kept in float, embedding shared with the int8 lm_head: %s",
                 report.quantized, len(lora_nodes), report.shared_embedding)
        return model
    quantizer = mnq.MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True, accuracy_level=4,
                                         nodes_to_exclude=lora_nodes, quant_format=QuantFormat.QOperator)
    quantizer.process()
    log.info("int4 base: %d LoRA nodes kept in float", len(lora_nodes))
    return quantizer.model.model


def write_adapter(weights: dict[str, Any], path: Path) -> None:
    import onnxruntime

    adapter = onnxruntime.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters({name: onnxruntime.OrtValue.ortvalue_from_numpy(array) for name, array in weights.items()})
    adapter.export_adapter(str(path))
