"""onnxruntime models: sessions on a target's execution providers, and two wrappers over them.

- `target_providers(target)`, `missing_providers(providers)`, `open_session(model_path, providers)`:
  an InferenceSession that refuses to fall back to the CPU silently.
- `OnnxRunner`: the `evaluate` interface over an ONNX causal LM, classifier or encoder; uses the KV
  cache when the graph has `past_key_values.*` inputs, and recomputes the whole sequence when it has none.
  Over a decoder it is also the `parity` model of an onnx-model (`logits(ids)` from an empty cache,
  `cached_greedy` for the KV check).
- `OnnxCausalLM`, `OnnxEncoder`: the `parity` interface (`logits(ids)`); the causal LM recomputes
  the whole sequence each call (an empty KV cache), which is exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimops.kinds import CAUSAL, CLASSIFIER, ENCODER_TYPES, FEATURES
from slimops.passes._runtime.common import empty_past, eos_ids, read_json, token_logprobs, window_capacities
from slimops.passes._runtime.errors import ParityError


def target_providers(target: Any) -> list[str]:
    return list(target.execution_providers) if target is not None else ["CPUExecutionProvider"]


def missing_providers(providers: list[str]) -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in providers if p not in available]


def open_session(model_path: Path, providers: list[str]):
    """An InferenceSession on `providers` that really uses the first of them.

    Raises:
        ParityError: onnxruntime registered a different provider than asked (a silent CPU fallback).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    wanted = list(providers)
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")  # for the nodes the accelerator does not implement
    session = onnxruntime.InferenceSession(str(model_path), options, providers=wanted)
    used = session.get_providers()
    if providers[0] not in used:
        raise ParityError(
            f"asked onnxruntime for {providers[0]} but the session runs on {', '.join(used)}; "
            "the target's execution provider failed to load (check its drivers and the onnxruntime package)"
        )
    return session


class OnnxRunner:
    """An ONNX model with onnxruntime and a Hugging Face tokenizer found next to it or upstream."""

    def __init__(self, model_file: Path, tokenizer_dir: Path, providers: list[str], config_dir: Path | None = None):
        import numpy as np
        import transformers

        self.np = np
        self.session = open_session(model_file, providers)  # the target's provider, or an error: never a quiet CPU run
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        config = read_json((config_dir or tokenizer_dir) / "config.json")
        genai = read_json(model_file.parent / "genai_config.json").get("model", {})
        decoder = genai.get("decoder", {})
        self._windows = window_capacities(decoder)
        if decoder and "num_attention_heads" not in config:  # a genai folder read as plain ONNX
            config = {"num_key_value_heads": decoder.get("num_key_value_heads"), "num_attention_heads": decoder.get("num_attention_heads"),
                      "head_dim": decoder.get("head_size"), **config}
        self.eos_ids = eos_ids(self.tokenizer, None, config)
        self.labels = {int(k): v for k, v in (config.get("id2label") or {}).items()}
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
        self.context_length = config.get("max_position_embeddings") or genai.get("context_length")
        self._ids: list[int] = []
        self._past: dict[str, Any] = {}
        self.providers = self.session.get_providers()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def _empty_past(self) -> dict[str, Any]:
        heads = self._config.get("num_key_value_heads") or self._config.get("num_attention_heads")
        head_dim = self._config.get("head_dim") or (
            self._config["hidden_size"] // self._config["num_attention_heads"] if "hidden_size" in self._config else None
        )
        return empty_past(self.inputs, self.past_names, heads, head_dim, self._windows)

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

    def logprobs(self, context: list[int], continuation: list[int]) -> tuple[list[float], bool]:
        """Each continuation token's log-probability after `context` (not empty), from one run over
        the whole sequence; and whether greedy decoding would produce the whole continuation."""
        self._ids, self._past = [], {}
        ids = context + continuation
        return token_logprobs(self._run(ids)[0, len(context) - 1 : len(ids) - 1], continuation)

    def start(self, ids: list[int], max_new_tokens: int | None = None) -> Any:
        self._ids, self._past = [], {}
        return self._run(ids)[0, -1]

    def step(self, token: int) -> Any:
        return self._run([token])[0, -1]

    def logits(self, ids: list[int]) -> Any:
        """The `parity` interface: logits (len(ids), vocab) in fp32, recomputed from an empty cache."""
        self._ids, self._past = [], {}
        return self._run(list(ids))[0].astype(self.np.float32)

    def cached_greedy(self, token_lists: list[list[int]], new_tokens: int) -> list[list[int]]:
        """Greedy tokens decoded through the graph's own KV cache (the prompt, then one cached step per token),
        for the parity's KV check; a prompt's list ends early with the EOS token it stopped at.

        Raises:
            ParityError: onnxruntime failed on a cached step (a past input the graph does not take, say).
        """
        generated = []
        for ids in token_lists:
            tokens: list[int] = []
            try:
                row = self.start(list(ids))
                while len(tokens) < new_tokens:
                    tokens.append(int(row.argmax()))
                    if tokens[-1] in self.eos_ids or len(tokens) == new_tokens:
                        break
                    row = self.step(tokens[-1])
            except Exception as err:  # onnxruntime's message names the input or node
                raise ParityError(f"onnxruntime cannot decode the model with its KV cache: {err}") from None
            generated.append(tokens)
        return generated

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


class OnnxCausalLM:
    """A decoder ONNX model (the onnxruntime-genai layout: input_ids, attention_mask, past_key_values.*)."""

    def __init__(self, folder: Path, providers: list[str], adapter: Path | None = None):
        import numpy as np
        import onnxruntime

        self.np = np
        self.run_options = None
        if adapter is not None:  # a .onnx_adapter file: its LoRA weights feed the model's inputs
            self.run_options = onnxruntime.RunOptions()
            self.adapter = onnxruntime.LoraAdapter()
            self.adapter.Load(str(adapter))
            self.run_options.add_active_adapter(self.adapter)
        config = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        self.head_size = int(config["head_size"])
        self.windows = window_capacities(config)
        self.session = open_session(folder / config.get("filename", "model.onnx"), providers)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.providers = self.session.get_providers()

    def logits(self, ids: list[int]):
        np = self.np
        x = np.asarray([ids], dtype=np.int64)
        feed = {"input_ids": x}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones_like(x)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        feed.update(empty_past(self.inputs, [n for n in self.inputs if n.startswith("past_key_values")], 1, self.head_size, self.windows))
        out = self.session.run(["logits"], feed, self.run_options)[0]
        return out[0].astype(np.float32)


class OnnxEncoder:
    """An encoder ONNX model: input_ids, attention_mask (token_type_ids) -> its first output."""

    def __init__(self, model_file: Path, providers: list[str]):
        import numpy as np

        self.np = np
        self.session = open_session(model_file, providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.providers = self.session.get_providers()

    def logits(self, ids: list[int]):
        np = self.np
        x = np.asarray([ids], dtype=np.int64)
        feed = {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}
        out = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
        return out[0].astype(np.float32)

