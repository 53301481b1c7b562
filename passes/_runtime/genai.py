"""onnxruntime-genai models: `GenaiRunner`, the `evaluate` interface over a genai-model folder.

Logits come from `Generator.get_logits` after each append; the folder's HF tokenizer is used when
it has one, so token ids (and perplexities) match the model it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimops.errors import ModelError
from slimops.kinds import CAUSAL
from slimops.passes._runtime.common import genai_max_length, has_tokenizer, read_json, token_logprobs


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
        if has_tokenizer(folder):
            import transformers

            self.hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.tokenizer = self.hf_tokenizer or og.Tokenizer(self.model)
        config = read_json(folder / "genai_config.json").get("model", {})
        self._config = config
        eos = config.get("eos_token_id", [])
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.max_length = max_length
        self.context_length = config.get("context_length")
        self._generator = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids; onnxruntime-genai's own tokenizer (a folder without HF files) ignores `add_special_tokens`."""
        if self.hf_tokenizer is not None:
            return self.hf_tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if self.hf_tokenizer is not None:
            return self.hf_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        return self.tokenizer.decode(self.np.array(ids, dtype=self.np.int32))

    def _new(self, length: int) -> None:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=genai_max_length(self._config, length), do_sample=False, batch_size=1)
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

    def logprobs(self, context: list[int], continuation: list[int]) -> tuple[list[float], bool]:
        """Each continuation token's log-probability after `context` (not empty): the context in one
        append, then one cached step per continuation token, as a generation runs; and whether greedy
        decoding would produce the whole continuation."""
        self._new(len(context) + len(continuation) + 1)
        rows = [self._append(context)]
        rows.extend(self._append([token]) for token in continuation[:-1])
        return token_logprobs(self.np.stack(rows), continuation)

    def start(self, ids: list[int], max_new_tokens: int | None = None) -> Any:
        """Logits after the prompt; the generator has room for `max_new_tokens` more (default: the runner's)."""
        self._new(len(ids) + (max_new_tokens or self.max_length) + 1)
        return self._append(ids)

    def step(self, token: int) -> Any:
        return self._append([token])

    def classify(self, text: str) -> str:
        raise ModelError("an onnxruntime-genai model is a causal LM; it has no classification head")

    def close(self) -> None:
        self._generator = None
        self.model = None

