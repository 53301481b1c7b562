"""Which quantization methods are which: the facts that the quantize pass and the shortcuts share.

- `WEIGHT_ONLY`: methods that quantize the weights alone (MatMulNBits int4/int8).
- `CALIBRATED`: methods that need calibration data (a `data:` entry).

The quantize pass (`slimops.passes.quantize`) implements them; the command-line shortcuts read
these tables to know which methods they can try without data, without importing the pass.
"""

from __future__ import annotations

WEIGHT_ONLY = ("rtn", "hqq", "k_quant", "gptq")
CALIBRATED = ("gptq", "qdq")
