"""Which model opens which artifact, for the passes that run models; and a model's peak memory.

- `open_runner(artifact, ...)`: the `evaluate` runner for an artifact (`HFRunner`, `OnnxRunner`,
  `GenaiRunner`), or a `ModelError` saying why not.
- `open_model(artifact, providers)`: the `parity` model (`logits(ids)`) for an artifact; an onnx-model
  decoder (one with `past_key_values.*` inputs) gets an `OnnxRunner`.
- `probe_memory(...)`: peak memory of a fresh process that loads the model and generates, so
  that what an earlier model left in this process's allocator does not hide the cost.

A runner of a causal LM offers `encode`/`decode`, `start(ids)` (logits after a prompt) and
`step(token)` (logits after one more token), so that `evaluate` drives greedy decoding and times
each token the same way for every backend; `logprobs(context, continuation)` scores a continuation
token by token (lm-evaluation-harness tasks, `slimops.passes._lm_eval`), and `context_length` is
the longest sequence the model takes (None where its files do not say). A classifier offers `classify(text)`.
Heavy libraries are imported inside the functions that use them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimops.errors import ModelError
from slimops.kinds import CLASSIFIER, is_encoder
from slimops.passes._runtime.common import has_tokenizer, read_json
from slimops.passes._runtime.errors import ParityError
from slimops.passes._runtime.genai import GenaiRunner
from slimops.passes._runtime.hf import HFRunner, TorchModel
from slimops.passes._runtime.ort import OnnxCausalLM, OnnxEncoder, OnnxRunner


def open_runner(artifact: Any, base: Any, providers: list[str], device: str, max_new_tokens: int) -> Any:
    """The runner for an artifact of kind hf-model, hf-adapter, onnx-model or genai-model.

    Args:
        artifact: what to evaluate.
        base: the nearest upstream hf-model, for an adapter's base or an ONNX model's tokenizer.
        providers: ONNX Runtime execution providers, in order of preference.
        device: the target's device, for transformers models.
        max_new_tokens: the longest generation, for runners that size buffers up front.

    Raises:
        ModelError: the kind is not one evaluate reads, or a needed upstream model is missing.
    """
    path = Path(artifact.path)
    kind = artifact.kind
    if kind == "hf-model":
        return HFRunner(path, device=device)
    if kind == "hf-adapter":
        if base is None:
            base_name = read_json(path / "adapter_config.json").get("base_model_name_or_path", "?")
            raise ModelError(f"the adapter at {path} needs its base model ({base_name}), and no hf-model comes before it in the pipeline")
        return HFRunner(Path(base.path), adapter=path, device=device)
    if kind == "onnx-model":
        files = [path] if path.is_file() else sorted(path.glob("*.onnx"))
        if not files:
            raise ModelError(f"no .onnx file in {path}")
        model_file = next((f for f in files if f.name == "model.onnx"), files[0])
        folder = model_file.parent
        tokenizer_dir = folder if has_tokenizer(folder) else (Path(base.path) if base is not None else None)
        if tokenizer_dir is None:
            raise ModelError(f"the ONNX model at {path} has no tokenizer next to it, and no hf-model comes before it to take one from")
        config_dir = folder if (folder / "config.json").exists() else (Path(base.path) if base is not None else tokenizer_dir)
        return OnnxRunner(model_file, tokenizer_dir, providers, config_dir)
    if kind == "genai-model":
        return GenaiRunner(path if path.is_dir() else path.parent, max_new_tokens)
    raise ModelError(f"evaluate cannot run a model of kind '{kind}'; it reads hf-model, hf-adapter, onnx-model and genai-model")


def open_model(artifact: Any, providers: list[str], adapter: Path | None = None):
    """A `logits(ids)` model over an hf-model, genai-model or onnx-model artifact.

    Args:
        adapter: a PEFT folder (hf-model) or a .onnx_adapter file (genai-model) to apply.
    """
    path = Path(artifact.path)
    if artifact.kind == "genai-model":
        return OnnxCausalLM(path, providers, adapter)
    if artifact.kind == "onnx-model":
        model_file = path if path.is_file() else path / "model.onnx"
        if path.is_dir() and (path / "genai_config.json").exists():
            return OnnxCausalLM(path, providers)
        if _has_kv_inputs(model_file):  # a decoder exported by torch.onnx (passes/_onnx/torch_decoder.py)
            if not has_tokenizer(model_file.parent):
                raise ParityError(f"the ONNX decoder at {path} has no tokenizer files beside it")
            return OnnxRunner(model_file, model_file.parent, providers)
        return OnnxEncoder(model_file, providers)
    if artifact.kind == "hf-model":
        return TorchModel(path, encoder=is_encoder(path), adapter=adapter)
    raise ParityError(f"parity cannot read a {artifact.kind} artifact")


def _has_kv_inputs(model_file: Path) -> bool:
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    return any(i.name.startswith("past_key_values") for i in graph.input)


def probe_memory(artifact: Any, base: Any, providers: list[str], device: str, max_new_tokens: int, prompt: str, timeout: float = 600) -> float:
    """Resident memory (MiB) a fresh Python process adds to load `artifact` and answer `prompt`.

    The child imports the libraries first and measures from there, so the figure is the model's
    weights, buffers and activations, not torch itself.

    Raises:
        ModelError: the child failed (its last error line is in the message).
    """
    import subprocess
    import sys

    request = {
        "path": str(artifact.path), "kind": artifact.kind, "base": str(base.path) if base is not None else None,
        "providers": providers, "device": device, "max_new_tokens": max_new_tokens, "prompt": prompt,
    }
    done = subprocess.run([sys.executable, "-m", "slimops.passes._runtime.runners", json.dumps(request)], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"measuring peak memory in a child process failed: {last}")
    return float(json.loads(lines[-1])["peak_mb"])


def _probe_main(request: dict[str, Any]) -> None:
    import threading
    from types import SimpleNamespace

    import psutil

    kind = request["kind"]
    if kind in ("hf-model", "hf-adapter"):
        import torch  # noqa: F401  (imported before the baseline is taken)
        import transformers  # noqa: F401
    else:
        import onnxruntime  # noqa: F401
        import transformers  # noqa: F401
        if kind == "genai-model":
            import onnxruntime_genai  # noqa: F401
    process = psutil.Process()
    base_rss = process.memory_info().rss
    peak = [base_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    artifact = SimpleNamespace(path=request["path"], kind=kind)
    base = SimpleNamespace(path=request["base"], kind="hf-model") if request["base"] else None
    runner = open_runner(artifact, base, request["providers"], request["device"], request["max_new_tokens"])
    if runner.task == CLASSIFIER:
        runner.classify(request["prompt"])
    else:
        logits = runner.start(runner.encode(request["prompt"]))
        for _ in range(request["max_new_tokens"] - 1):
            logits = runner.step(int(logits.argmax()))
    stop.set()
    thread.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    print(json.dumps({"peak_mb": (peak[0] - base_rss) / 2**20}), flush=True)


if __name__ == "__main__":
    import os
    import sys

    _probe_main(json.loads(sys.argv[1]))
    os._exit(0)  # the figure is printed; tearing down torch would add about a second and a half
