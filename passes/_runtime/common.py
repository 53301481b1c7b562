"""What the model wrappers of every backend share.

- `has_tokenizer(folder)`, `read_json(path)`: the files beside a model.
- `eos_ids(tokenizer, generation_config, config)`: every id that ends a generation.
- `empty_past(inputs, names, heads, head_dim, windows)`: the KV cache an ONNX decoder is fed on its
  first step, empty (the `ort` wrappers of parity and evaluate both build it here);
  `window_capacities(decoder)`: the sliding-window layers' cache sizes, from genai_config.json;
  `genai_max_length(model, wanted)`: a search max_length onnxruntime-genai can run such a model at.
- `token_logprobs(logits, targets)`: each target token's log-probability under its row of logits,
  and whether greedy decoding picks every one (the `logprobs` of the numpy runners).
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


def token_logprobs(logits: Any, targets: list[int]) -> tuple[list[float], bool]:
    """Log-softmax of each row of `logits` (len(targets), vocab) at its target, in float64.

    Returns:
        (log-probability of each target, whether each target is its row's argmax).
    """
    import numpy as np

    rows = np.asarray(logits, dtype=np.float64).reshape(len(targets), -1)
    peak = rows.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(rows - peak).sum(axis=-1)) + peak[:, 0]
    picked = rows[np.arange(len(targets)), targets]
    return [float(v) for v in picked - log_norm], bool((rows.argmax(axis=-1) == np.asarray(targets)).all())


def window_capacities(decoder: dict[str, Any]) -> dict[int, int]:
    """layer -> the size of its KV cache buffer, for the sliding-window layers of a genai decoder.

    The builder gives those layers (Gemma 2 and 3) a ring of `window_size` positions (plus
    `cache_slack`) that the attention kernel indexes itself: an empty cache is that many zeros, not
    zero positions (onnxruntime refuses a smaller buffer); the attention mask says how many are used.
    """
    window = decoder.get("sliding_window") or {}
    if not window.get("window_size"):
        return {}
    return {int(layer): int(window["window_size"]) + int(window.get("cache_slack") or 0) for layer in window.get("layers", [])}


def genai_max_length(model: dict[str, Any], wanted: int) -> int:
    """`wanted`, raised to the sliding window's buffer for a model that has one (within its context).

    Args:
        model: the `model` section of genai_config.json.

    onnxruntime-genai sizes a sliding layer's cache as the smaller of the window and max_length,
    and onnxruntime's attention kernel then refuses any buffer smaller than the window: a short
    generation of Gemma 2 or 3 (max_length below 4096 or 512) fails unless max_length is raised.
    Callers stop on their own count of tokens, so a larger max_length changes nothing else.
    """
    windows = window_capacities(model.get("decoder", {}))
    if not windows:
        return wanted
    context = int(model.get("context_length") or 0) or max(windows.values())
    return max(wanted, min(max(windows.values()), context))


def empty_past(inputs: dict[str, Any], names: list[str], heads: int | None, head_dim: int | None,
               windows: dict[int, int] | None = None) -> dict[str, Any]:
    """An empty KV cache: for each input in `names`, zeros of shape (1, heads, 0, head_dim).

    Args:
        inputs: the session's inputs by name (onnxruntime NodeArgs: `.shape`, `.type`).
        heads, head_dim: used where the graph leaves that dimension symbolic.
        windows: layer -> buffer size for sliding-window layers (`window_capacities`); their
            inputs (`past_key_values.<layer>.*`) get that many zero positions instead of none.

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
        layer = name.split(".")[1] if name.count(".") >= 2 else ""
        length = (windows or {}).get(int(layer), 0) if layer.isdigit() else 0
        past[name] = np.zeros((1, shape[1], length, shape[3]), dtype=dtype)
    return past
