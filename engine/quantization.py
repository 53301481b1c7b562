"""Which quantization methods are which: the facts that the quantize pass and the shortcuts share.

- `WEIGHT_ONLY`: methods that quantize the weights alone (MatMulNBits int4/int8).
- `CALIBRATED`: methods that need calibration data (a `data:` entry).
- `BlockSize`: the type of a `block_size` key: a power of two from 16 (what MatMulNBits takes).

The quantize pass (`slimops.passes.quantize`) implements them; the command-line shortcuts read
these tables to know which methods they can try without data, without importing the pass.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _block_size(value: int) -> int:
    if value < 16 or value & (value - 1):
        raise ValueError("not a block size: MatMulNBits takes a power of two from 16 (16, 32, 64, 128, 256)")
    return value


BlockSize = Annotated[int, AfterValidator(_block_size)]

WEIGHT_ONLY = ("rtn", "hqq", "k_quant", "gptq")
CALIBRATED = ("gptq", "qdq")
