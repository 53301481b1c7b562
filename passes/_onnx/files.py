"""ONNX files and folders: what every ONNX pass reads and writes.

- `OnnxError`: an export or quantization step failed; the message says which and what to try.
- `load_model(model_file)`, `save_model(model, model_file)`: onnx load and save with the weights in
  `<model_file>.data` beside it, safe with the cache's hard links.
- `TOKENIZER_FILES`, `copy_tokenizer(source, dest)`, `chat_template(folder)`: the files beside a
  model that its users need.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from slimops.errors import SlimopsError


class OnnxError(SlimopsError):
    """An export or quantization step failed; the message says which and what to try."""


TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
)


def chat_template(folder: Path) -> str | None:
    """The chat template of an HF or genai folder: chat_template.jinja, else tokenizer_config.json."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    try:
        template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        return None
    return template if isinstance(template, str) else None


def copy_tokenizer(source: Path, dest: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)


def save_model(model, model_file: Path) -> None:
    """Save `model` with its weights in `<model_file>.data` beside it, replacing both files."""
    import onnx

    data = model_file.with_name(model_file.name + ".data")
    data.unlink(missing_ok=True)  # a new file, not a write through a link the cache may share
    onnx.save_model(model, str(model_file), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=1024)


def load_model(model_file: Path):
    """`onnx.load` with external data read here: the cache hard-links artifacts, and onnx's own
    loader refuses external data files that have more than one link."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(model_file), load_external_data=False)
    handles: dict[str, Any] = {}
    try:
        for tensor in _all_tensors(model):
            if not uses_external_data(tensor):
                continue
            info = ExternalDataInfo(tensor)
            location = (model_file.parent / info.location).resolve()
            if model_file.parent.resolve() not in location.parents:
                raise OnnxError(f"{model_file.name} points outside its folder for external data ({info.location})")
            handle = handles.get(info.location) or handles.setdefault(info.location, open(location, "rb"))
            handle.seek(info.offset or 0)
            tensor.raw_data = handle.read(info.length) if info.length else handle.read()
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    finally:
        for handle in handles.values():
            handle.close()
    return model


def _all_tensors(model):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t

