"""The model families slimops is tested on, and what the planner says of a model outside them.

- `FAMILIES`: family -> (the models users know it by, its config.json `model_type`s, its GGUF
  architecture names); every row passes tests/test_families.py, and docs/families.md lists them.
- `family_issue(path, kind)`: for the pipeline's input model, (severity, message) when its
  architecture is not a tested family: "error" for one no pass can serve (not a causal LM, not an
  encoder), "warning" for a causal LM of another family, which may work. None for a tested one.

Only config.json and the first bytes of a GGUF file are read: no torch, no transformers.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from slimops.kinds import ENCODER_TYPES

FAMILIES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "llama": ("Llama 2, Llama 3.x, SmolLM2", ("llama",), ("llama",)),
    "qwen2": ("Qwen2, Qwen2.5", ("qwen2",), ("qwen2",)),
    "qwen3": ("Qwen3", ("qwen3",), ("qwen3",)),
    "phi3": ("Phi-3, Phi-3.5 mini, Phi-4 mini", ("phi3",), ("phi3",)),
    "mistral": ("Mistral 7B", ("mistral",), ("llama",)),  # llama.cpp writes Mistral as a llama
    "gemma2": ("Gemma 2", ("gemma2",), ("gemma2",)),
    "gemma3": ("Gemma 3 text models (270M, 1B)", ("gemma3_text",), ("gemma3",)),
    "gpt2": ("GPT-2, DialoGPT", ("gpt2",), ("gpt2",)),
}
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def family_names() -> str:
    return ", ".join(f"{name} ({known})" for name, (known, _, _) in FAMILIES.items())


def family_issue(path: Path, kind: str) -> tuple[str, str] | None:
    """(severity, message) for a model outside the tested families, or None; see the module docstring."""
    if kind == "gguf":
        architecture = gguf_architecture(path)
        if architecture is None or any(architecture in names for _, _, names in FAMILIES.values()):
            return None
        return "warning", (f"its GGUF architecture '{architecture}' is not among the families slimops is tested on "
                           f"({family_names()}); transformers may still convert it")
    if kind != "hf-model":
        return None
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type in ENCODER_TYPES or any(model_type in types for _, types, _ in FAMILIES.values()):
        return None
    named = f"'{model_type}' ({', '.join(architectures) or 'no architectures'})"
    if any(a.endswith(CAUSAL_SUFFIXES) for a in architectures):
        return "warning", (f"model type {named} is not among the families slimops is tested on ({family_names()}); "
                           "its passes may still work, and a failure names the step")
    return "error", (f"model type {named} is neither a causal language model nor an encoder, so no slimops pass can "
                     f"serve it; the families that work: {family_names()}, and encoders ({', '.join(sorted(ENCODER_TYPES))})")


def gguf_architecture(path: Path) -> str | None:
    """`general.architecture` from a GGUF file's header (llama.cpp writes it first), or None."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if not found:
            return None
        path = found[0]
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    if head[:4] != b"GGUF" or len(head) < 24:
        return None
    offset = 24  # magic, version (u32), tensor count (u64), key-value count (u64)
    for _ in range(8):  # the first few keys; the architecture is among them
        try:
            (length,) = struct.unpack_from("<Q", head, offset)
            key = head[offset + 8: offset + 8 + length].decode()
            offset += 8 + length
            (value_type,) = struct.unpack_from("<I", head, offset)
            offset += 4
            if value_type != 8:  # only string values are skipped over here
                return None
            (size,) = struct.unpack_from("<Q", head, offset)
            value = head[offset + 8: offset + 8 + size].decode()
            offset += 8 + size
        except (struct.error, UnicodeDecodeError):
            return None
        if key == "general.architecture":
            return value
    return None
