"""Quantize an ONNX model for a target, with onnxruntime's quantizers.

- `affine` int4 (`passes/_onnx/affine.py`, the CPU default): a scale and a float offset per block, kept
  on onnxruntime's fast int4 kernel by a small side path; exact on GGUF Q4_1 weights; lm_head
  int8, shared with a tied embedding.
- Weight-only int4/int8 (MatMulNBits): `rtn` (onnxruntime's blockwise round-to-nearest, what the
  model builder uses), `hqq`, `k_quant`, and `gptq` (calibrated on a `data:` entry). Options:
  block size, symmetric, accuracy level, and lm_head (the last MatMul) kept at int8.
- `int8_dynamic`: int8 weights, activations quantized at run time (MatMulInteger); CPUs.
- `qdq`: static QuantizeLinear/DequantizeLinear pairs calibrated on a `data:` entry, for NPUs
  (QNN's own config on npu targets).
- Defaults come from the target: `precision` and `quant_format` pick the method, and
  `settings.quantize` gives block_size, accuracy_level, symmetric.
- The result is checked against the input model (`passes/parity.py`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimops.passes._onnx.files import OnnxError, load_model
from slimops.passes._onnx.weight_only import CalibrationReader, weight_only, weight_only_options
from slimops.passes._runtime.errors import ParityError
from slimops.passes.parity import ParityParams, check
from slimops.plugin import Artifact, Pass, PassContext
from slimops.quantization import CALIBRATED, WEIGHT_ONLY, BlockSize
from slimops.sizes import size_mb

Method = Literal["auto", "affine", "rtn", "hqq", "k_quant", "gptq", "int8_dynamic", "qdq"]


class QuantizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Method = Field(
        "auto",
        description="auto: from the target (int4/weight_only -> affine on CPUs, rtn elsewhere; dynamic -> int8_dynamic, "
        "or weight-only rtn int8 for a decoder (genai-model); qdq -> qdq). affine: scale + float offset per block, exact on GGUF Q4_1 weights, CPU only. "
        "rtn is fast; hqq and k_quant are slower and often closer; gptq needs calibration_data.",
    )
    bits: Literal[4, 8] | None = Field(None, description="Weight-only bits (default: 8 for an int8 target, else 4).")
    block_size: BlockSize | None = Field(None, description="Weights per scale (default: target settings, else 32). Smaller is closer and larger.")
    symmetric: bool | None = Field(None, description="Symmetric weights (default: target settings, else true).")
    accuracy_level: int | None = Field(None, ge=0, le=4, description="MatMulNBits compute type: 4 = int8 activations (fastest on CPU), "
                                       "1 = fp32. Default: target settings, else 4 on CPU targets.")
    keep_lm_head_int8: bool | None = Field(
        None, description="Quantize the last MatMul (lm_head) to int8 instead of int4: closer logits, a little larger. "
        "Default: true for affine (which then shares it with a tied embedding), false otherwise.")
    nodes_to_exclude: list[str] = Field(default_factory=list, description="Node names to leave unquantized.")
    calibration_data: str | None = Field(None, description="A `data:` entry for gptq and qdq calibration.")
    calibration_split: str | None = Field(None, description="Split of the calibration data (default: train, else eval).")
    calibration_samples: int = Field(32, ge=1, description="Examples used to calibrate.")
    max_seq_len: int = Field(64, ge=4, description="Calibration examples are cut to this many tokens.")
    activation_type: Literal["uint8", "uint16"] = Field("uint16", description="qdq activations: uint16 keeps accuracy on QNN HTP; uint8 is smaller and faster.")
    weight_type: Literal["uint8", "int8"] = Field("uint8", description="qdq weights.")
    per_channel: bool = Field(False, description="qdq: a scale per output channel.")
    parity: ParityParams = Field(default_factory=ParityParams, description="Check against the input model.")

    @model_validator(mode="after")
    def _calibration(self):
        if self.method == "gptq" and not self.calibration_data:
            raise ValueError("method gptq needs calibration_data: the name of a data: entry")
        if self.method == "affine" and self.bits == 8:
            raise ValueError("method affine is int4 only; for int8 weights use method: rtn with bits: 8, or int8_dynamic")
        return self


class Quantize(Pass):
    """Quantizes an ONNX model: weight-only int4/int8 (rtn, hqq, k_quant, gptq), int8 dynamic, or static QDQ."""

    name = "quantize"
    version = "4"
    consumes = ("genai-model", "onnx-model")
    produces = None
    per_target = True
    requires = ("onnx", "onnxruntime", "transformers")

    Params = QuantizeParams

    def check(self, params, target):
        method = resolve_method(params, target)
        if method is None:
            return (f"the target's precision is {target.precision} with no quant_format, so there is nothing to quantize; "
                    "set `method:` or limit this pass with `targets: [...]`")
        if method in CALIBRATED and not params.calibration_data:
            return f"method {method} calibrates on data: set calibration_data to a data: entry"
        return None

    def run(self, ctx: PassContext) -> Artifact:
        params = ctx.params
        method = resolve_method(params, ctx.target, ctx.input.kind)
        assert method is not None
        source = Path(ctx.input.path)
        source_dir = source if source.is_dir() else source.parent
        model_file = source if source.is_file() else _model_file(source)
        out_file = ctx.output_dir / model_file.name
        _check_quantizable(model_file)
        settings = dict((ctx.target.settings or {}).get("quantize", {}))
        ctx.progress.update(0, 3, f"{method}: preparing")
        calibration = None
        if method in CALIBRATED:
            calibration = calibration_inputs(ctx, source_dir, model_file)
        ctx.progress.update(1, 3, f"{method}: quantizing")
        ctx.log.info("quantizing %s with %s (target %s)", model_file, method, ctx.target.precision)
        with _logs_into(ctx.log):
            precision, meta = self._quantize(ctx, method, model_file, out_file, calibration, settings)
        if source.is_dir():
            _copy_companions(source, ctx.output_dir, model_file.name)
        if ctx.input.kind == "genai-model":
            from slimops.passes._onnx.builder import check_genai_loads, set_runtime_threads

            set_runtime_threads(ctx.output_dir, ctx.target)
            if ctx.target.device == "cpu":
                check_genai_loads(ctx.output_dir)
        ctx.progress.update(2, 3, "parity check")
        path = ctx.output_dir if source.is_dir() else out_file
        artifact = Artifact(path=path, kind=ctx.input.kind, meta={**ctx.input.meta, **meta, "precision": precision})
        try:
            result = check(ctx.input, artifact, params.parity, ctx.target, precision, ctx.log)
        except ParityError as err:
            if method == "int8_dynamic" and ctx.input.kind == "genai-model":
                raise ParityError(f"{err} int8_dynamic quantizes a decoder's activations with one scale per tensor, which "
                                  "its outlier features defeat: use method: rtn with bits: 8 (weight-only int8).") from None
            raise
        artifact.metrics.update(result["metrics"])
        artifact.meta.update(result["meta"])
        artifact.metrics["size_mb"] = round(size_mb(ctx.output_dir), 2)
        artifact.metrics["input_size_mb"] = round(size_mb(source), 2)
        return artifact

    def _quantize(self, ctx: PassContext, method: str, model_file: Path, out_file: Path, calibration, settings) -> tuple[str, dict]:
        params = ctx.params
        if method == "affine":
            from slimops.passes._onnx.affine import options_for, rewrite_file

            options = options_for(params, settings)
            if ctx.input.meta.get("merged_from"):
                ctx.log.warning("this model was merged from an adapter: int4 of merged weights may round the fine-tuning away; "
                                "an onnx pass with precision int4 (int4_method: affine) on the merged model keeps it")
            try:
                report = rewrite_file(model_file, out_file, **options, exclude=tuple(params.nodes_to_exclude))
            except ValueError as err:
                raise OnnxError(f"affine int4 failed: {err}") from None
            return "int4", {"quantization": {**report.as_meta(), "block_size": options["block"], "accuracy_level": options["accuracy_level"]}}
        if method in WEIGHT_ONLY:
            bits = params.bits or (8 if ctx.target.precision == "int8" else 4)
            options = weight_only_options(params, ctx.target, bits)
            lm_head = bool(params.keep_lm_head_int8)
            shared = weight_only(model_file, out_file, method, options, lm_head, params.nodes_to_exclude, calibration, ctx.log,
                                 share_embedding=ctx.target.device == "cpu")
            precision = f"int{bits}"
            meta = {"quantization": {"method": method, **options, "keep_lm_head_int8": lm_head, "shared_embedding": shared is not None}}
        elif method == "int8_dynamic":
            dynamic_int8(model_file, out_file, params.nodes_to_exclude)
            precision, meta = "int8", {"quantization": {"method": method}}
        else:
            static_qdq(model_file, out_file, calibration, params, ctx.target)
            precision = "int8"
            meta = {"quantization": {"method": "qdq", "activation_type": params.activation_type, "weight_type": params.weight_type}}
        return precision, meta


@contextlib.contextmanager
def _logs_into(log: logging.Logger):
    """Send what onnxruntime's quantizers log (to the root logger, at INFO) into the node's log."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = list(log.handlers)
    stream = _LogStream(log)
    try:
        with contextlib.redirect_stdout(stream):  # INC's gptq/rtn print progress bars
            yield
    finally:
        root.handlers, level = saved
        root.setLevel(level)


class _LogStream:
    def __init__(self, log: logging.Logger):
        self.log = log

    def write(self, text: str) -> int:
        for line in text.replace("\r", "\n").splitlines():
            if line.strip():
                self.log.info("%s", line.strip())
        return len(text)

    def flush(self) -> None:
        pass


def resolve_method(params: QuantizeParams, target: Any, kind: str | None = None) -> str | None:
    """The method `auto` stands for on `target`; `kind` is the input's, where known (at run time)."""
    if params.method != "auto":
        return params.method
    if target.quant_format == "qdq":
        return "qdq"
    if target.quant_format == "dynamic":
        # int8_dynamic quantizes activations with one scale per tensor, which a decoder's outlier features
        # defeat (SmolLM2-135M: top-1 0.0-0.6 against fp32); its weights take int8 per block instead
        return "rtn" if kind == "genai-model" else "int8_dynamic"
    if target.quant_format == "weight_only" or target.precision == "int4":
        return "affine" if target.device == "cpu" else "rtn"
    if target.precision == "int8":
        return "int8_dynamic"
    return None


def _model_file(folder: Path) -> Path:
    import json

    config = folder / "genai_config.json"
    if config.exists():
        return folder / json.loads(config.read_text())["model"]["decoder"].get("filename", "model.onnx")
    if (folder / "model.onnx").exists():
        return folder / "model.onnx"
    found = sorted(folder.glob("*.onnx"))
    if not found:
        raise OnnxError(f"no .onnx file in {folder}")
    return found[0]


def _check_quantizable(model_file: Path) -> None:
    """Refuse a model with no float MatMul weights left, with a message that says why."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    from slimops.passes._onnx.affine import is_side_path

    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and any(i in initializers for i in n.input)
               and not is_side_path(n)]
    nbits = sum(n.op_type == "MatMulNBits" for n in model.graph.node)
    if not matmuls:
        already = f" it is already quantized ({nbits} MatMulNBits nodes); export at fp32 (onnx: {{precision: fp32}}) before quantizing," if nbits else ""
        raise OnnxError(f"{model_file.name} has no MatMul with constant weights to quantize;{already} or drop this pass")


def _copy_companions(source: Path, dest: Path, model_name: str) -> None:
    """Everything beside the model (genai_config.json, tokenizer, chat template, config.json)."""
    for item in source.iterdir():
        if item.name in (model_name, model_name + ".data") or item.suffix in (".onnx",) or item.name.endswith(".onnx.data"):
            continue
        if item.is_file():
            shutil.copy2(item, dest / item.name)


def dynamic_int8(model_file: Path, out_file: Path, exclude: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # A scale per output column: on all-MiniLM-L6-v2 one scale per tensor left a mean cosine of 0.961
    # with the fp32 vectors, per column 0.991, at about the same speed (12.3 against 12.9 ms, 64 tokens).
    quantize_dynamic(load_model(model_file), str(out_file), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                     per_channel=True, nodes_to_exclude=exclude or None, use_external_data_format=True)


def static_qdq(model_file: Path, out_file: Path, calibration: list[dict] | None, params: QuantizeParams, target: Any) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize, quantize_static

    activation = QuantType.QUInt16 if params.activation_type == "uint16" else QuantType.QUInt8
    weight = QuantType.QInt8 if params.weight_type == "int8" else QuantType.QUInt8
    reader = CalibrationReader(calibration or [])
    if target.device == "npu":
        from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

        model = load_model(model_file)
        config = get_qnn_qdq_config(model, reader, activation_type=activation, weight_type=weight,
                                    per_channel=params.per_channel, nodes_to_exclude=params.nodes_to_exclude or None)
        config.use_external_data_format = True
        quantize(model, str(out_file), config)
        return
    quantize_static(load_model(model_file), str(out_file), reader, quant_format=QuantFormat.QDQ, per_channel=params.per_channel,
                    activation_type=activation, weight_type=weight, nodes_to_exclude=params.nodes_to_exclude or None,
                    use_external_data_format=True, extra_options={"ActivationSymmetric": False})


# -- calibration --------------------------------------------------------------------------------------------


def calibration_texts(ctx: PassContext, tokenizer) -> list[str]:
    """Texts of `calibration_samples` examples of the calibration data set, formatted as in training."""
    from slimops.passes._data import has_split, load_split, render

    params = ctx.params
    name = params.calibration_data
    spec = ctx.data[name]
    split = params.calibration_split or next((s for s in ("train", "eval", "test") if has_split(spec, s)), "train")
    rows = load_split(spec, split, name)[: params.calibration_samples]
    texts = []
    for row in rows:
        prompt, response = render(row, spec, tokenizer)
        texts.append(prompt + response)
    return texts


def calibration_inputs(ctx: PassContext, source_dir: Path, model_file: Path) -> list[dict]:
    """Model inputs for calibration: one dict of numpy arrays per example, batch 1."""
    import json

    import numpy as np
    import onnx
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source_dir))
    texts = calibration_texts(ctx, tokenizer)
    model = onnx.load(str(model_file), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    head_size = None
    if (source_dir / "genai_config.json").exists():
        head_size = json.loads((source_dir / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    items = []
    for text in texts:
        ids = tokenizer(text)["input_ids"][: ctx.params.max_seq_len] or [0]
        x = np.asarray([ids], dtype=np.int64)
        feed = {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x),
                "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
        item = {k: v for k, v in feed.items() if k in inputs}
        for name, info in inputs.items():
            if name.startswith("past_key_values"):
                dims = info.type.tensor_type.shape.dim
                heads = dims[1].dim_value or 1
                elem = info.type.tensor_type.elem_type
                dtype = np.float16 if elem == onnx.TensorProto.FLOAT16 else np.float32
                item[name] = np.zeros((1, heads, 0, head_size or dims[3].dim_value), dtype=dtype)
        items.append(item)
    return items
