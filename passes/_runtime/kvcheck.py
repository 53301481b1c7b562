"""The cache path of the parity check: a genai-model decoded by onnxruntime-genai, as deployed.

`check` in `slimops.passes.parity` compares models by recomputing the whole sequence each step,
which never reads a KV cache. Here the same prompts are decoded step by step by onnxruntime-genai
(its cache, the folder's genai_config.json), and each cached token is judged against what the
same model recomputed without a cache would pick: a cache wired wrong shows up as tokens the
uncached model ranks far below its top-1; a near tie flipped by the two paths' rounding does not.
"""

from __future__ import annotations

import json
from pathlib import Path

from slimops.passes._runtime.errors import ParityError
from slimops.plugin import Artifact


def genai_greedy(folder: Path, token_lists: list[list[int]], new_tokens: int, adapter: Path | None = None) -> list[list[int]]:
    """Greedy tokens from onnxruntime-genai: a prompt pass, then one cached step per token.

    Args:
        folder: a genai-model folder; its genai_config.json wires the cache.
        adapter: a .onnx_adapter file to activate (og.Adapters).

    Returns:
        the new tokens of each prompt; shorter than `new_tokens` when it stopped at an EOS token (the last).
    """
    import numpy as np
    import onnxruntime_genai as og

    from slimops.passes._runtime.common import genai_max_length

    config = json.loads((folder / "genai_config.json").read_text())["model"]
    model = og.Model(str(folder))
    adapters = None
    if adapter is not None:
        adapters = og.Adapters(model)
        adapters.load(str(adapter), "parity")
    generated = []
    for ids in token_lists:
        params = og.GeneratorParams(model)
        # plain argmax, whatever the folder's `search` section says: the uncached side has no
        # minimum length (which masks EOS) and no repetition penalties
        params.set_search_options(max_length=genai_max_length(config, len(ids) + new_tokens), min_length=0, do_sample=False,
                                  num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0)
        generator = og.Generator(model, params)
        if adapters is not None:
            generator.set_active_adapter(adapters, "parity")
        generator.append_tokens(np.asarray([ids], dtype=np.int32))
        while not generator.is_done() and len(generator.get_sequence(0)) < len(ids) + new_tokens:
            generator.generate_next_token()
        tokens = [int(t) for t in generator.get_sequence(0)[len(ids):]]
        if len(tokens) < new_tokens:  # it stopped at EOS, which the sequence leaves out
            last = int(generator.get_next_tokens()[0])
            tokens += [] if tokens and tokens[-1] == last else [last]
        generated.append(tokens)
    return generated


def kv_agreement(candidate, folder: Path, token_lists: list[list[int]], uncached_tokens: list[list[int]], new_tokens: int,
                 near_tie: float, adapter: Path | None = None) -> tuple[float, float]:
    """How far onnxruntime-genai's cached decoding follows the same model recomputed without a cache.

    Per prompt: the share of onnxruntime-genai's greedy tokens before the first one that the uncached
    model, given the same history, ranks more than `near_tie` logits below its top-1 (1.0 when
    it stopped at EOS with every token agreeing); averaged over the prompts.

    Args:
        candidate: the uncached model (`logits(ids)`), the same files as `folder`.
        uncached_tokens: its greedy tokens per prompt (from `compare`); where the cached tokens are
            the same, no further recompute is needed.

    Returns:
        (agreement, exact): `exact` counts only tokens identical to `uncached_tokens`.

    Raises:
        ParityError: onnxruntime-genai failed to load or run the folder.
    """
    if hasattr(candidate, "cached_greedy"):  # an onnx-model decoder (OnnxRunner) feeds its own past/present back
        eos, cached_tokens = candidate.eos_ids, candidate.cached_greedy(token_lists, new_tokens)
    else:
        eos = json.loads((folder / "genai_config.json").read_text())["model"].get("eos_token_id", [])
        eos = set(eos if isinstance(eos, list) else [eos])
        try:
            cached_tokens = genai_greedy(folder, token_lists, new_tokens, adapter)
        except Exception as err:  # the message of onnxruntime-genai is the useful part
            raise ParityError(f"onnxruntime-genai cannot decode the model with its cache: {err}") from None

    def share(kept: int, cached: list[int]) -> float:
        done = kept == len(cached) and (kept == new_tokens or bool(cached) and cached[-1] in eos)
        return 1.0 if done else kept / new_tokens

    agree, exact = [], []
    for ids, plain, cached in zip(token_lists, uncached_tokens, cached_tokens):
        same = next((k for k, (a, b) in enumerate(zip(plain, cached)) if a != b), min(len(plain), len(cached)))
        exact.append(share(same, cached))
        kept = same
        if same < len(cached):  # judge the rest on the cached history: a near tie may flip, nothing more
            rows = candidate.logits(ids + cached)[len(ids) - 1:]
            kept = next((k for k, token in enumerate(cached) if rows[k].max() - rows[k][token] > near_tie), len(cached))
        agree.append(share(kept, cached))
    return sum(agree) / len(agree), sum(exact) / len(exact)


def kv_skip_reason(candidate: Artifact, providers: list[str]) -> str | None:
    """Why the cached decoding cannot be checked here, or None."""
    if candidate.kind != "genai-model":
        return f"a {candidate.kind} artifact is not run by onnxruntime-genai"
    if providers[0] != "CPUExecutionProvider":
        return f"cached decoding is checked on CPU targets only; this target runs on {providers[0]}"
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return "onnxruntime-genai is not installed"
    return None
