"""What a model folder is, decided in one place.

- `CAUSAL`, `CLASSIFIER`, `FEATURES`: the three tasks a model serves (next token, a label, a
  vector per token), named as Hugging Face names them.
- `ENCODER_TYPES`: the `model_type`s of config.json that are encoders.
- `is_encoder(folder)`: an HF folder (or an exported one that carries its config.json) is an encoder.
- `has_classifier(folder)`: its architectures name a sequence-classification head.
- `model_task(folder)`: `CLASSIFIER`, `FEATURES` (an encoder without a head) or `CAUSAL`.
- `auto_model_class(task)`: the transformers AutoModel class that loads a folder of that task.

Only config.json is read; transformers is imported by `auto_model_class` alone, when called, so
config validation that asks what a folder is stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CAUSAL = "text-generation"
CLASSIFIER = "text-classification"
FEATURES = "feature-extraction"  # an encoder without a head: vectors, no labels, no next token

ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "mpnet", "albert", "camembert", "modernbert"}


def _config(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None


def is_encoder(folder: Path) -> bool:
    """Whether an HF folder (or an exported folder carrying its config.json) is an encoder.

    A folder without a readable config.json is an encoder unless it is an onnxruntime-genai folder.
    """
    folder = Path(folder)
    config = _config(folder)
    if config is None:
        return not (folder / "genai_config.json").exists()
    architectures = config.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures):
        return False
    return config.get("model_type") in ENCODER_TYPES or any(a.endswith(("ForSequenceClassification", "Model")) for a in architectures)


def has_classifier(folder: Path) -> bool:
    """Whether the folder's config.json names a sequence-classification head."""
    config = _config(Path(folder)) or {}
    return any("SequenceClassification" in a for a in config.get("architectures") or [])


def model_task(folder: Path) -> str:
    """`CLASSIFIER` for a classification head, `FEATURES` for another encoder, else `CAUSAL`."""
    if has_classifier(folder):
        return CLASSIFIER
    return FEATURES if is_encoder(folder) else CAUSAL


def auto_model_class(task: str):
    """The transformers class that loads a model of `task`: loading an encoder as a causal LM would
    bolt a random LM head onto it, and a classifier needs its head."""
    import transformers

    return {CLASSIFIER: transformers.AutoModelForSequenceClassification, FEATURES: transformers.AutoModel}.get(
        task, transformers.AutoModelForCausalLM)
