"""transformers models: a Hugging Face folder in PyTorch.

- `HFRunner`: the `evaluate` interface (`encode`/`decode`, `start`/`step`, `nll`, `logprobs`, `classify`),
  causal LM, classifier or encoder, optionally with a PEFT adapter on top.
- `TorchModel`: the `parity` interface (`logits(ids)`), in fp32 on the CPU: the reference of an export.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from slimops.kinds import CAUSAL, FEATURES, auto_model_class, model_task
from slimops.passes._runtime.common import eos_ids, has_tokenizer


class HFRunner:
    """A transformers model on the CPU (or CUDA when the target says so)."""

    def __init__(self, folder: Path, adapter: Path | None = None, device: str = "cpu"):
        import torch
        import transformers

        self.torch = torch
        self.device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        self.task = model_task(folder)  # an encoder loaded as a causal LM would get a random LM head
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(adapter if adapter and has_tokenizer(adapter) else folder)
        model = auto_model_class(self.task).from_pretrained(folder, dtype=torch.float32)
        if adapter is not None:
            import peft

            model = peft.PeftModel.from_pretrained(model, adapter)
        self.model = model.to(self.device).eval()
        # transformers 5.x renamed the KV cache argument from past_key_values to cache
        base = model.get_base_model() if adapter is not None else model
        self._cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        self.eos_ids = eos_ids(self.tokenizer, getattr(model, "generation_config", None))
        self.labels = {int(k): v for k, v in (self.model.config.id2label or {}).items()}
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self._past = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def nll(self, ids: list[int]) -> tuple[float, int]:
        torch = self.torch
        with torch.no_grad():
            tensor = torch.tensor([ids], device=self.device)
            loss = self.model(input_ids=tensor, labels=tensor).loss
        return float(loss) * (len(ids) - 1), len(ids) - 1

    def logprobs(self, context: list[int], continuation: list[int]) -> tuple[list[float], bool]:
        """Each continuation token's log-probability after `context` (not empty) and the tokens before it,
        from one forward pass; and whether greedy decoding would produce the whole continuation."""
        torch = self.torch
        ids = context + continuation
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0, len(context) - 1 : len(ids) - 1]
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        targets = torch.tensor(continuation, device=self.device)
        picked = log_probs.gather(1, targets[:, None])[:, 0]
        return picked.tolist(), bool((log_probs.argmax(dim=-1) == targets).all())

    def start(self, ids: list[int], max_new_tokens: int | None = None) -> list[float]:
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


class TorchModel:
    """A Hugging Face model folder in PyTorch fp32, the reference of an export."""

    def __init__(self, folder: Path, encoder: bool, adapter: Path | None = None):
        import torch

        self.torch = torch
        cls = auto_model_class(model_task(folder) if encoder else CAUSAL)
        self.model = cls.from_pretrained(str(folder), dtype=torch.float32).eval()
        if adapter is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter)).eval()
        self.encoder = encoder
        self.providers = ["torch-cpu"]

    def logits(self, ids: list[int]):
        torch = self.torch
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        tensor = out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state
        return tensor[0].float().numpy()


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
