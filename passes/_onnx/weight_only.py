"""Weight-only MatMulNBits quantization of an ONNX model, as the quantize pass and the torch.onnx decoder export use it.

- `weight_only_options(params, target, bits)`: bits, block size, symmetry and accuracy level from a
  pass's params, else the target's settings.
- `weight_only(model_file, out_file, method, options, ...)`: rtn, hqq, k_quant or gptq int4/int8
  weights; lm_head at int8 on request, and a tied embedding then reads its bytes (`tied.py`).
- `CalibrationReader`: an onnxruntime CalibrationDataReader over a list of input dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimops.passes._onnx.files import load_model, save_model


def _last_matmul(model) -> str | None:
    initializers = {i.name for i in model.graph.initializer}
    last = None
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers:
            last = node.name
    return last


def weight_only_options(params: Any, target: Any, bits: int) -> dict[str, Any]:
    """`weight_only` options from a pass's params (block_size, symmetric, accuracy_level), else the target's settings."""
    settings = dict((target.settings or {}).get("quantize", {}))
    return {
        "bits": bits,
        "block_size": params.block_size or settings.get("block_size", 32),
        "symmetric": params.symmetric if params.symmetric is not None else settings.get("symmetric", True),
        # on a CPU the kernel without int8 activations is slow: 8-bit MatMulNBits, 1.5-1.9 ms per 576x1536
        # product at levels 0 and 1 against 0.06 ms at level 4 (SmolLM2 int8: 2.3 against 93 tokens/s)
        "accuracy_level": params.accuracy_level if params.accuracy_level is not None
        else settings.get("accuracy_level", 4 if target.device == "cpu" else None),
    }


def weight_only(model_file: Path, out_file: Path, method: str, options: dict[str, Any], keep_lm_head_int8: bool,
                exclude: list[str], calibration: list[dict] | None, log, share_embedding: bool = True) -> str | None:
    """MatMulNBits quantization; lm_head at int8 takes a second pass over that one node.

    Returns:
        the fp32 embedding table dropped because it now reads the int8 lm_head (`passes/_onnx/tied.py`), or None.
    """
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq
    from onnxruntime.quantization.quant_utils import QuantFormat

    model = load_model(model_file)
    bits, block, symmetric, level = options["bits"], options["block_size"], options["symmetric"], options["accuracy_level"]
    lm_head = _last_matmul(model) if keep_lm_head_int8 and bits == 4 else None
    excluded = list(exclude) + ([lm_head] if lm_head else [])
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    algo = None
    if method == "hqq":
        algo = mnq.HQQWeightOnlyQuantConfig(block_size=block, bits=bits)
    elif method == "k_quant":
        algo = mnq.KQuantWeightOnlyQuantConfig(customized_weight_config={n: {"bits": bits, "group_size": block} for n in matmuls})
    elif method == "gptq":
        algo = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=CalibrationReader(calibration or []), block_size=block,
                                             perchannel=False)
    quantizer = mnq.MatMulNBitsQuantizer(
        model, bits=bits, block_size=block, is_symmetric=symmetric, accuracy_level=level,
        nodes_to_exclude=excluded, quant_format=QuantFormat.QOperator, algo_config=algo,
    )
    quantizer.process()
    result = quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model
    if lm_head:
        log.info("quantizing %s to int8", lm_head)
        second = mnq.MatMulNBitsQuantizer(
            result, bits=8, block_size=block, is_symmetric=symmetric, accuracy_level=level,
            nodes_to_exclude=list(exclude), nodes_to_include=[lm_head], quant_format=QuantFormat.QOperator,
        )
        second.process()
        result = second.model.model
    from slimops.passes._onnx.tied import share_int8_embedding

    shared = share_int8_embedding(result) if share_embedding else None  # an int8 lm_head's bytes serve a tied embedding too
    if shared:
        log.info("the embedding now reads the int8 lm_head's weights; dropped the fp32 table %s", shared)
    save_model(result, out_file)
    return shared


class CalibrationReader:
    """An onnxruntime CalibrationDataReader over a list of input dicts (copyable, for INC's gptq)."""

    def __init__(self, items: list[dict]):
        self.items = items
        self.position = 0

    def get_next(self):
        if self.position >= len(self.items):
            return None
        self.position += 1
        return self.items[self.position - 1]

    def rewind(self):
        self.position = 0

    def __iter__(self):
        return iter(self.items)

    def __deepcopy__(self, memo):
        return CalibrationReader(self.items)
