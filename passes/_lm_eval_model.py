"""slimops' model for lm-evaluation-harness: its three request types answered by a slimops runner.

- `runner_lm(runner, max_gen_toks, progress)`: an `lm_eval.api.model.TemplateLM` over a runner of
  `slimops.passes._runtime` (`HFRunner`, `OnnxRunner`, `GenaiRunner`), so that one class scores a
  PyTorch model, an ONNX export and an onnxruntime-genai folder alike, on the target's execution
  providers: `loglikelihood` (through the runner's `logprobs`), `loglikelihood_rolling` (the
  harness's own token windows) and `generate_until` (greedy, through `start`/`step`).

It follows the harness's `hf` model where the two could differ, so scores compare with published
ones: tokens as the tokenizer adds them by default, an empty context scored after the BOS token
(EOS when there is none), contexts cut from the left to fit, stop strings matched on the text with
its special tokens and cut from the answer. lm_eval is imported inside `runner_lm`, never at
module import.
"""

from __future__ import annotations

from typing import Any

from slimops.errors import ModelError
from slimops.kinds import CAUSAL

DEFAULT_CONTEXT = 2048  # the longest sequence, where a model's files do not say


def runner_lm(runner: Any, max_gen_toks: int, progress: Any = None) -> Any:
    """An lm-eval model (TemplateLM) that answers every request with `runner`.

    Args:
        runner: a causal-LM runner from `slimops.passes._runtime.runners.open_runner`.
        max_gen_toks: the longest generation, where a task's generation_kwargs do not say.
        progress: something with `.update(done, total, text)` (the pass's `ctx.progress`), or None.

    Raises:
        ModelError: the runner is not a causal LM, or it has no end-of-text token.
    """
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    if runner.task != CAUSAL:
        raise ModelError(f"lm_eval tasks need a causal language model; this one is a {runner.task} model")

    class RunnerLM(TemplateLM):
        backend = "causal"

        def __init__(self) -> None:
            super().__init__()
            self.runner = runner
            self.tokenizer = runner.tokenizer
            self.max_gen_toks = max_gen_toks
            eos = getattr(runner.tokenizer, "eos_token_id", None)
            if not isinstance(eos, int):
                eos = min(runner.eos_ids) if runner.eos_ids else None
            if eos is None:
                raise ModelError("the model names no end-of-text token (eos_token_id), which lm_eval tasks need")
            self._eot = eos
            bos = getattr(runner.tokenizer, "bos_token_id", None)
            self._prefix = bos if isinstance(bos, int) else eos
            self._prefix_text = runner.decode([self._prefix], skip_special_tokens=False)

        @property
        def eot_token_id(self) -> int:
            return self._eot

        @property
        def prefix_token_id(self) -> int:
            return self._prefix

        @property
        def max_length(self) -> int:
            return int(runner.context_length or DEFAULT_CONTEXT)

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(runner.tokenizer, "name_or_path", "")).replace("/", "__")

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            if add_special_tokens is None:  # the tokenizer's default, unless the text carries the BOS already
                add_special_tokens = not (self._prefix_text and string.startswith(self._prefix_text))
            return runner.encode(string, add_special_tokens=add_special_tokens)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
            results = []
            for done, (key, context, continuation) in enumerate(requests, 1):
                results.append(self._score(context, continuation))
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, results[-1])
                _report(progress, done, len(requests), "lm_eval: loglikelihood")
            return results

        def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
            """Sum of the continuation's log-probabilities, and whether it is the greedy one; the sequence
            is cut from the left to the model's length, as the harness's `hf` model does."""
            ids = (context + continuation)[-(self.max_length + 1):]
            cut = max(len(ids) - len(continuation), 1)
            values, greedy = runner.logprobs(ids[:cut], ids[cut:])
            return float(sum(values)), greedy

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            results = []
            for done, request in enumerate(requests, 1):
                (string,) = request.args
                windows = get_rolling_token_windows(token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                                                    max_seq_len=self.max_length, context_len=1)
                total = sum(self._score(*make_disjoint_window(window))[0] for window in windows)
                results.append(total)
                self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
                _report(progress, done, len(requests), "lm_eval: loglikelihood_rolling")
            return results

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            eos_text = runner.decode([self._eot], skip_special_tokens=False)
            results = []
            for done, request in enumerate(requests, 1):
                context, gen_kwargs = request.args
                settings = normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks)
                until = handle_stop_sequences(settings.get("until"), eos=eos_text)
                text = self._greedy(context, until, int(settings["max_gen_toks"]))
                results.append(postprocess_generated_text(generation=text, stop=until, think_end_token=None))
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), results[-1])
                _report(progress, done, len(requests), "lm_eval: generate_until")
            return results

        def _greedy(self, context: str, until: list[str], max_new: int) -> str:
            """Greedy tokens after `context` until an EOS token, a stop string (in the text with its
            special tokens, so `<|im_end|>` counts) or `max_new` tokens; decoded without special tokens."""
            if max_new >= self.max_length:
                raise ModelError(f"a task asks for {max_new} new tokens, as many as the model's whole length ({self.max_length})")
            ids = self.tok_encode(context)[-(self.max_length - max_new):]
            logits = runner.start(ids, max_new_tokens=max_new)
            tokens: list[int] = []
            while len(tokens) < max_new:
                token = int(logits.argmax())
                if token in runner.eos_ids or token == self._eot:
                    break
                tokens.append(token)
                if len(tokens) == max_new or any(s and s in runner.decode(tokens, skip_special_tokens=False) for s in until):
                    break
                logits = runner.step(token)
            return runner.decode(tokens)

    return RunnerLM()


def _report(progress: Any, done: int, total: int, text: str) -> None:
    if progress is not None:
        progress.update(done, total, text)
