"""Model runners: one small interface over every artifact kind the `evaluate` pass measures.

- `HFRunner`: a Hugging Face folder with transformers (causal LM or sequence classifier),
  optionally with a PEFT adapter on top.
- `OnnxRunner`: an ONNX causal LM or classifier with onnxruntime; uses the KV cache when the graph
  has `past_key_values.*` inputs, and recomputes the whole sequence when it has none.
- `GenaiRunner`: an onnxruntime-genai folder.
- `open_runner(artifact, ...)`: the runner for an artifact, or a `ModelError` saying why not.
- `probe_memory(...)`: peak memory of a fresh process that loads the model and generates, so
  that what an earlier model left in this process's allocator does not hide the cost.

A runner of a causal LM offers `encode`/`decode`, `start(ids)` (logits after a prompt) and
`step(token)` (logits after one more token), so that `evaluate` drives greedy decoding and times
each token the same way for every backend. A classifier offers `classify(text)`.
Heavy libraries are imported inside the functions that use them.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from slimops.errors import ModelError

CAUSAL = "text-generation"
CLASSIFIER = "text-classification"
FEATURES = "feature-extraction"  # an encoder without a head: vectors, no labels, no next token


class HFRunner:
    """A transformers model on the CPU (or CUDA when the target says so)."""

    def __init__(self, folder: Path, adapter: Path | None = None, device: str = "cpu"):
        import torch
        import transformers

        self.torch = torch
        self.device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        config = json.loads((folder / "config.json").read_text())
        architectures = config.get("architectures") or []
        self.task = CLASSIFIER if any(a.endswith("ForSequenceClassification") for a in architectures) else CAUSAL
        if self.task == CAUSAL:
            from slimops.passes.parity import is_encoder

            if is_encoder(folder):  # loading it as a causal LM would bolt a random LM head onto it
                self.task = FEATURES
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(adapter if adapter and _has_tokenizer(adapter) else folder)
        cls = {CLASSIFIER: transformers.AutoModelForSequenceClassification, FEATURES: transformers.AutoModel}.get(
            self.task, transformers.AutoModelForCausalLM)
        model = cls.from_pretrained(folder, dtype=torch.float32)
        if adapter is not None:
            import peft

            model = peft.PeftModel.from_pretrained(model, adapter)
        self.model = model.to(self.device).eval()
        # transformers 5.x renamed the KV cache argument from past_key_values to cache
        base = model.get_base_model() if adapter is not None else model
        self._cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        self.eos_ids = _eos_ids(self.tokenizer, getattr(model, "generation_config", None))
        self.labels = {int(k): v for k, v in (self.model.config.id2label or {}).items()}
        self._past = None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def nll(self, ids: list[int]) -> tuple[float, int]:
        torch = self.torch
        with torch.no_grad():
            tensor = torch.tensor([ids], device=self.device)
            loss = self.model(input_ids=tensor, labels=tensor).loss
        return float(loss) * (len(ids) - 1), len(ids) - 1

    def start(self, ids: list[int]) -> list[float]:
        torch = self.torch
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
        self._past = _cache_of(out)
        return out.logits[0, -1]

    def step(self, token: int) -> list[float]:
        torch = self.torch
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([[token]], device=self.device), use_cache=True, **{self._cache_arg: self._past})
        self._past = _cache_of(out)
        return out.logits[0, -1]

    def classify(self, text: str) -> str:
        """The label of `text`; for an encoder without a head, only the forward pass (latency) and ""."""
        torch = self.torch
        with torch.no_grad():
            encoded = self.tokenizer(text, return_tensors="pt", truncation=True).to(self.device)
            out = self.model(**encoded)
        if self.task == FEATURES:
            return ""
        index = int(out.logits[0].argmax())
        return self.labels.get(index, str(index))

    def close(self) -> None:
        self.model = None
        self._past = None


class OnnxRunner:
    """An ONNX model with onnxruntime and a Hugging Face tokenizer found next to it or upstream."""

    def __init__(self, model_file: Path, tokenizer_dir: Path, providers: list[str], config_dir: Path | None = None):
        import numpy as np
        import onnxruntime as ort
        import transformers

        self.np = np
        available = set(ort.get_available_providers())
        usable = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(model_file), providers=usable)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        config = _read_json((config_dir or tokenizer_dir) / "config.json")
        decoder = _read_json(model_file.parent / "genai_config.json").get("model", {}).get("decoder", {})
        if decoder and "num_attention_heads" not in config:  # a genai folder read as plain ONNX
            config = {"num_key_value_heads": decoder.get("num_key_value_heads"), "num_attention_heads": decoder.get("num_attention_heads"),
                      "head_dim": decoder.get("head_size"), **config}
        self.eos_ids = _eos_ids(self.tokenizer, None, config)
        self.labels = {int(k): v for k, v in (config.get("id2label") or {}).items()}
        from slimops.passes.parity import ENCODER_TYPES

        logits_shape = self.session.get_outputs()[0].shape
        self.past_names = [name for name in self.inputs if name.startswith("past")]
        if len(logits_shape) == 2:
            self.task = CLASSIFIER
        elif config.get("model_type") in ENCODER_TYPES or (not self.past_names and "token_type_ids" in self.inputs):
            self.task = FEATURES  # a vector per token from an exported encoder
        else:
            self.task = CAUSAL
        self.present_names = [name for name in self.outputs if name.startswith("present")]
        # past_key_values.3.key <- present.3.key (by name; by position when names differ)
        by_name = [(p, p.replace("past_key_values", "present")) for p in self.past_names]
        self._pairs = by_name if all(q in self.outputs for _, q in by_name) else list(zip(self.past_names, self.present_names))
        self._config = config
        self._ids: list[int] = []
        self._past: dict[str, Any] = {}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _empty_past(self) -> dict[str, Any]:
        np = self.np
        past = {}
        heads = self._config.get("num_key_value_heads") or self._config.get("num_attention_heads")
        head_dim = self._config.get("head_dim") or (
            self._config["hidden_size"] // self._config["num_attention_heads"] if "hidden_size" in self._config else None
        )
        for name in self.past_names:
            shape = list(self.inputs[name].shape)
            if not isinstance(shape[1], int):
                shape[1] = heads
            if not isinstance(shape[3], int):
                shape[3] = head_dim
            if shape[1] is None or shape[3] is None:
                raise ModelError(f"cannot size the KV cache input '{name}': no config.json with num_attention_heads and hidden_size")
            dtype = np.float16 if "float16" in self.inputs[name].type else np.float32
            past[name] = np.zeros((1, shape[1], 0, shape[3]), dtype=dtype)
        return past

    def _feed(self, new_ids: list[int], total: int, past: dict[str, Any]) -> dict[str, Any]:
        np = self.np
        feed: dict[str, Any] = {"input_ids": np.array([new_ids], dtype=np.int64)}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(total - len(new_ids), total, dtype=np.int64)[None, :]
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros((1, len(new_ids)), dtype=np.int64)
        feed.update(past)
        return feed

    def _run(self, new_ids: list[int]) -> Any:
        """Logits (1, len, vocab) for `new_ids` appended to what came before."""
        if self.past_names:
            past = self._past or self._empty_past()
            total = len(self._ids) + len(new_ids)
            outputs = self.session.run(None, self._feed(new_ids, total, past))
            named = dict(zip(self.outputs, outputs))
            self._past = {p: named[q] for p, q in self._pairs}
            self._ids = self._ids + new_ids
            return named[self.outputs[0]]
        self._ids = self._ids + new_ids
        outputs = self.session.run(None, self._feed(self._ids, len(self._ids), {}))
        return outputs[0][:, -len(new_ids):]

    def nll(self, ids: list[int]) -> tuple[float, int]:
        np = self.np
        self._ids, self._past = [], {}
        logits = self._run(ids)[0].astype(np.float64)
        shifted = logits[:-1]
        peak = shifted.max(axis=-1, keepdims=True)
        log_probs = shifted - peak - np.log(np.exp(shifted - peak).sum(axis=-1, keepdims=True))
        targets = np.array(ids[1:])
        return float(-log_probs[np.arange(len(targets)), targets].sum()), len(targets)

    def start(self, ids: list[int]) -> Any:
        self._ids, self._past = [], {}
        return self._run(ids)[0, -1]

    def step(self, token: int) -> Any:
        return self._run([token])[0, -1]

    def classify(self, text: str) -> str:
        """The label of `text`; for an encoder without a head, only the forward pass (latency) and ""."""
        encoded = self.tokenizer(text, truncation=True)
        ids = encoded["input_ids"]
        logits = self.session.run(None, self._feed(ids, len(ids), {}))[0]
        if self.task == FEATURES:
            return ""
        index = int(logits[0].argmax())
        return self.labels.get(index, str(index))

    def close(self) -> None:
        self.session = None


class GenaiRunner:
    """An onnxruntime-genai folder; logits come from `Generator.get_logits` after each append."""

    def __init__(self, folder: Path, max_length: int):
        import numpy as np
        import onnxruntime_genai as og

        self.og = og
        self.np = np
        self.task = CAUSAL
        self.model = og.Model(str(folder))
        # the folder's HF tokenizer when it has one: the same token ids as the HF model it came
        # from (so perplexities compare), and it reads tokenizers ort-extensions does not
        self.hf_tokenizer = None
        if _has_tokenizer(folder):
            import transformers

            self.hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.tokenizer = self.hf_tokenizer or og.Tokenizer(self.model)
        config = _read_json(folder / "genai_config.json").get("model", {})
        eos = config.get("eos_token_id", [])
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.max_length = max_length
        self._generator = None

    def encode(self, text: str) -> list[int]:
        if self.hf_tokenizer is not None:
            return self.hf_tokenizer(text, add_special_tokens=True)["input_ids"]
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, ids: list[int]) -> str:
        if self.hf_tokenizer is not None:
            return self.hf_tokenizer.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(self.np.array(ids, dtype=self.np.int32))

    def _new(self, length: int) -> None:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=length, do_sample=False, batch_size=1)
        self._generator = self.og.Generator(self.model, params)

    def _append(self, ids: list[int]) -> Any:
        self._generator.append_tokens(self.np.array([ids], dtype=self.np.int32))
        return self._generator.get_logits().reshape(-1)

    def nll(self, ids: list[int]) -> tuple[float, int]:
        np = self.np
        self._new(len(ids) + 1)
        total = 0.0
        for position in range(len(ids) - 1):
            logits = self._append([ids[position]]).astype(np.float64)
            peak = logits.max()
            total += float(np.log(np.exp(logits - peak).sum()) + peak - logits[ids[position + 1]])
        return total, len(ids) - 1

    def start(self, ids: list[int]) -> Any:
        self._new(len(ids) + self.max_length + 1)
        return self._append(ids)

    def step(self, token: int) -> Any:
        return self._append([token])

    def classify(self, text: str) -> str:
        raise ModelError("an onnxruntime-genai model is a causal LM; it has no classification head")

    def close(self) -> None:
        self._generator = None
        self.model = None


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _eos_ids(tokenizer: Any, generation_config: Any = None, config: dict | None = None) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(generation_config, "eos_token_id", None), (config or {}).get("eos_token_id"), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(int(i) for i in source)
    return ids


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
            base_name = _read_json(path / "adapter_config.json").get("base_model_name_or_path", "?")
            raise ModelError(f"the adapter at {path} needs its base model ({base_name}), and no hf-model comes before it in the pipeline")
        return HFRunner(Path(base.path), adapter=path, device=device)
    if kind == "onnx-model":
        files = [path] if path.is_file() else sorted(path.glob("*.onnx"))
        if not files:
            raise ModelError(f"no .onnx file in {path}")
        model_file = next((f for f in files if f.name == "model.onnx"), files[0])
        folder = model_file.parent
        tokenizer_dir = folder if _has_tokenizer(folder) else (Path(base.path) if base is not None else None)
        if tokenizer_dir is None:
            raise ModelError(f"the ONNX model at {path} has no tokenizer next to it, and no hf-model comes before it to take one from")
        config_dir = folder if (folder / "config.json").exists() else (Path(base.path) if base is not None else tokenizer_dir)
        return OnnxRunner(model_file, tokenizer_dir, providers, config_dir)
    if kind == "genai-model":
        return GenaiRunner(path if path.is_dir() else path.parent, max_new_tokens)
    raise ModelError(f"evaluate cannot run a model of kind '{kind}'; it reads hf-model, hf-adapter, onnx-model and genai-model")


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
    done = subprocess.run([sys.executable, "-m", "slimops.passes.runners", json.dumps(request)], capture_output=True, text=True, timeout=timeout)
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
