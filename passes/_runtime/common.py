"""What the model wrappers of every backend share.

- `has_tokenizer(folder)`, `read_json(path)`: the files beside a model.
- `eos_ids(tokenizer, generation_config, config)`: every id that ends a generation.
- `empty_past(inputs, names, heads, head_dim)`: the zero-length KV cache an ONNX decoder is fed on
  its first step (the `ort` wrappers of parity and evaluate both build it here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimops.errors import ModelError


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def eos_ids(tokenizer: Any, generation_config: Any = None, config: dict | None = None) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(generation_config, "eos_token_id", None), (config or {}).get("eos_token_id"), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(int(i) for i in source)
    return ids


def empty_past(inputs: dict[str, Any], names: list[str], heads: int | None, head_dim: int | None) -> dict[str, Any]:
    """An empty KV cache: for each input in `names`, zeros of shape (1, heads, 0, head_dim).

    Args:
        inputs: the session's inputs by name (onnxruntime NodeArgs: `.shape`, `.type`).
        heads, head_dim: used where the graph leaves that dimension symbolic.

    Raises:
        ModelError: a dimension is symbolic and not given.
    """
    import numpy as np

    past = {}
    for name in names:
        shape = list(inputs[name].shape)
        if not isinstance(shape[1], int):
            shape[1] = heads
        if not isinstance(shape[3], int):
            shape[3] = head_dim
        if shape[1] is None or shape[3] is None:
            raise ModelError(f"cannot size the KV cache input '{name}': no config.json with num_attention_heads and hidden_size")
        dtype = np.float16 if "float16" in inputs[name].type else np.float32
        past[name] = np.zeros((1, shape[1], 0, shape[3]), dtype=dtype)
    return past
