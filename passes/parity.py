"""Parity: does an exported or quantized model still behave like the model it came from?

- `ParityParams`: the `parity:` key of the `onnx` and `quantize` passes (thresholds, prompts).
- `check(...)`: runs the reference and the candidate on the same fixed prompts and reports
  greedy-token agreement, top-1 agreement (cosine similarity for an encoder's vectors) and the
  largest logit difference; raises `ParityError` when a threshold is missed.
- For a genai-model on a CPU target, `check` also runs `slimops.passes._runtime.kvcheck`: the same
  prompts decoded by onnxruntime-genai (its KV cache, the folder's genai_config.json: what users
  deploy), checked against what the uncached recompute would have picked.
  An onnx-model decoder (torch.onnx, `passes/_onnx/torch_decoder.py`) gets the same check on any
  target, its cached tokens decoded by onnxruntime feeding the graph's present.* back as past_key_values.*.
- The `parity` pass: the same check as a pipeline node that runs the model on the target
  itself (`executes_on_target`), for a machine that has the target's hardware.

The models compared (`OnnxCausalLM`, `OnnxEncoder`, `TorchModel`: one `logits(ids)` interface) and
the sessions they open live in `slimops.passes._runtime`, beside evaluate's runners.

Decoders are compared by recomputing the whole sequence each step (no KV cache): slower than
generation, but exact, and the prompts are short. That path never reads a cache, so a model whose
cache is wired wrong would pass it: the KV check covers the cache path against the same uncached model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slimops.passes._runtime.errors import ParityError
from slimops.kinds import CAUSAL
from slimops.passes._runtime.ort import OnnxCausalLM, OnnxRunner, missing_providers, target_providers
from slimops.passes._runtime.runners import open_model
from slimops.plugin import Artifact, Pass, PassContext

DEFAULT_MIN_TOP1 = {"fp32": 0.99, "fp16": 0.95, "bf16": 0.95, "int8": 0.9, "int4": 0.8}
DEFAULT_MIN_COSINE = {"fp32": 0.999, "fp16": 0.995, "bf16": 0.995, "int8": 0.98, "int4": 0.95}

DEFAULT_PROMPTS = (
    "The capital of France is",
    "def add(a, b):",
    "Once upon a time",
)


class ParityParams(BaseModel):
    """Thresholds and inputs of a parity check."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run the check. Off saves a few seconds per node.")
    min_top1: float | None = Field(
        None, ge=0, le=1,
        description="Least share of positions whose top-1 token (or class) matches the reference. "
        "Default by precision: fp32 0.99, fp16/bf16 0.95, int8 0.9, int4 0.8.",
    )
    min_cosine: float | None = Field(
        None, ge=-1, le=1,
        description="Encoders that give a vector per token (feature extraction): least mean cosine similarity of the "
        "reference's and the new model's vectors over every position; their top-1 (the largest hidden dimension) means "
        "nothing and is not checked. Default by precision: fp32 0.999, fp16/bf16 0.995, int8 0.98, int4 0.95.",
    )
    min_agreement: float = Field(
        0.0, ge=0, le=1,
        description="Least share of greedily generated tokens that match the reference before the first divergence.",
    )
    max_logit_diff: float | None = Field(
        None, gt=0, description="Largest allowed absolute logit difference; None only records it.",
    )
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS), description="Fixed prompts to compare on.")
    new_tokens: int = Field(8, ge=1, le=256, description="Greedy tokens generated per prompt.")
    require_target: bool = Field(
        False,
        description="Fail when this machine lacks the target's execution provider, instead of skipping the check.",
    )
    min_kv_agreement: float = Field(
        0.9, ge=0, le=1,
        description="genai-model on a CPU target, or an onnx-model decoder: least share of greedy tokens that the model, "
        "decoding with its KV cache (onnxruntime-genai for a genai-model), generates before the first one the model "
        "recomputed without a cache would not pick. A broken cache "
        "path (past/present wiring, a genai_config.json that mismatches the graph) scores about 1/new_tokens.",
    )
    kv_near_tie: float = Field(
        1.0, ge=0,
        description="A cached token that the uncached model ranks within this many logits of its top-1 still agrees. "
        "int4 kernels differ by up to ~0.5 logits between the two paths, which flips near ties; 0 demands exact tokens.",
    )


# -- the check ------------------------------------------------------------------------------------------


@dataclass
class ParityResult:
    top1: float
    agreement: float
    max_logit_diff: float
    positions: int
    providers: list[str]
    decoder: bool = True
    candidate_tokens: list[list[int]] = field(default_factory=list)  # the candidate's greedy tokens, per prompt
    kv_agreement: float | None = None
    cosine: float | None = None  # feature extraction: mean and least cosine similarity per position
    cosine_min: float | None = None

    def metrics(self) -> dict[str, Any]:
        if self.cosine is not None:
            metrics = {"parity_cosine": round(self.cosine, 5), "parity_cosine_min": round(self.cosine_min, 5)}
        else:
            metrics = {"parity_top1": round(self.top1, 4)}
        if self.decoder:
            metrics["parity_agreement"] = round(self.agreement, 4)
        metrics["parity_max_logit_diff"] = float(f"{self.max_logit_diff:.4g}")
        if self.kv_agreement is not None:
            metrics["parity_kv_agreement"] = round(self.kv_agreement, 4)
        return metrics


def greedy(model, ids: list[int], new_tokens: int) -> list[int]:
    out = list(ids)
    for _ in range(new_tokens):
        out.append(int(model.logits(out)[-1].argmax()))
    return out[len(ids):]


def compare(reference, candidate, token_lists: list[list[int]], new_tokens: int, decoder: bool) -> ParityResult:
    """Greedy agreement (decoders) and teacher-forced top-1 / max logit difference on the same tokens."""
    import numpy as np

    agree_counts, top1_hits, positions, max_diff, candidate_tokens, cosines = [], 0, 0, 0.0, [], []
    for ids in token_lists:
        sequence = list(ids)
        if decoder:
            ref_tokens = greedy(reference, ids, new_tokens)
            cand_tokens = greedy(candidate, ids, new_tokens)
            candidate_tokens.append(cand_tokens)
            prefix = 0
            for a, b in zip(ref_tokens, cand_tokens):
                if a != b:
                    break
                prefix += 1
            agree_counts.append(prefix / new_tokens)
            sequence = ids + ref_tokens
        ref = reference.logits(sequence)
        cand = candidate.logits(sequence)
        if ref.shape != cand.shape:
            raise ParityError(f"the model's output shape {cand.shape} differs from the reference's {ref.shape}")
        for name, rows, what in (("input model", ref, "its weights may hold NaN or inf: export or download it again"),
                                 ("model", cand, "an overflow at this precision? try a higher one, or check the log")):
            if not np.isfinite(rows).all():  # NaN compares as neither near nor far, so every check below would pass it
                raise ParityError(f"the {name}'s outputs hold NaN or infinite values ({int((~np.isfinite(rows)).sum())} of "
                                  f"{rows.size} on a {len(sequence)}-token prompt); {what}")
        if decoder:
            top1_hits += int((ref.argmax(-1) == cand.argmax(-1)).sum())
            positions += ref.shape[0]
        elif ref.ndim == 2 and ref.shape[0] == len(sequence):  # a vector per token: compare directions, not argmaxes
            norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1)
            cosines.extend(((ref * cand).sum(-1) / np.maximum(norms, 1e-12)).tolist())
            positions += ref.shape[0]
        else:  # class logits
            top1_hits += int(ref.argmax(-1) == cand.argmax(-1))
            positions += 1
        max_diff = max(max_diff, float(np.abs(ref - cand).max()))
    agreement = sum(agree_counts) / len(agree_counts) if agree_counts else 1.0
    return ParityResult(top1_hits / max(positions, 1), agreement, max_diff, positions, list(candidate.providers), decoder,
                        candidate_tokens, cosine=sum(cosines) / len(cosines) if cosines else None,
                        cosine_min=min(cosines) if cosines else None)


def tokenize_prompts(folder: Path, prompts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    lists = []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        lists.append(list(ids) or [tokenizer.bos_token_id or 0])
    return lists


def check(reference: Artifact, candidate: Artifact, params: ParityParams, target: Any, precision: str = "fp32", log=None,
          reference_adapter: Path | None = None, candidate_adapter: Path | None = None) -> dict[str, Any]:
    """Compare `candidate` (run on the target's providers) with `reference` (on the CPU).

    Args:
        precision: what the candidate was built at; picks the default `min_top1`.
        reference_adapter, candidate_adapter: compare with a LoRA adapter applied on both sides.

    Returns:
        metrics for the Artifact (`parity_top1`, or `parity_cosine` and `parity_cosine_min` for an encoder's
        vectors; `parity_agreement`, `parity_max_logit_diff`, and
        `parity_kv_agreement` for a genai-model on a CPU target and an onnx-model decoder) and a `parity` entry for its meta
        (providers used, thresholds, or why the check or its cached part was skipped).

    Raises:
        ParityError: a threshold was missed, or the target's provider was not the one used.
    """
    if not params.enabled:
        return {"metrics": {}, "meta": {"parity": "disabled"}}
    providers = target_providers(target)
    missing = missing_providers(providers)
    if missing:
        why = f"this onnxruntime lacks {', '.join(missing)}"
        if params.require_target:
            raise ParityError(f"cannot check parity on the target: {why}; run on a machine that has it, or set parity.require_target: false")
        if log:
            log.warning("parity check skipped: %s", why)
        return {"metrics": {}, "meta": {"parity": f"skipped: {why}"}}
    candidate_model = open_model(candidate, providers, candidate_adapter)
    onnx_decoder = isinstance(candidate_model, OnnxRunner) and candidate_model.task == CAUSAL  # torch.onnx: its own cache
    decoder = isinstance(candidate_model, OnnxCausalLM) or onnx_decoder
    reference_model = open_model(reference, ["CPUExecutionProvider"], reference_adapter)
    tokenizer_dir = Path(reference.path) if Path(reference.path).is_dir() else Path(candidate.path)
    token_lists = tokenize_prompts(tokenizer_dir, params.prompts)
    result = compare(reference_model, candidate_model, token_lists, params.new_tokens, decoder)
    kv: dict[str, Any] = {}
    if decoder:
        from slimops.passes._runtime.kvcheck import kv_agreement, kv_skip_reason

        skipped = None if onnx_decoder else kv_skip_reason(candidate, providers)
        if skipped:
            kv["kv_cache"] = f"skipped: {skipped}"
            if log:
                log.info("parity: KV cache check skipped: %s", skipped)
        else:
            result.kv_agreement, exact = kv_agreement(candidate_model, Path(candidate.path), token_lists, result.candidate_tokens,
                                                      params.new_tokens, params.kv_near_tie, candidate_adapter)
            kv.update(kv_exact_agreement=round(exact, 4), min_kv_agreement=params.min_kv_agreement, kv_near_tie=params.kv_near_tie)
    metrics = result.metrics()
    if result.cosine is not None:
        min_cosine = params.min_cosine if params.min_cosine is not None else DEFAULT_MIN_COSINE.get(precision, 0.98)
        threshold: dict[str, Any] = {"min_cosine": min_cosine}
    else:
        min_top1 = params.min_top1 if params.min_top1 is not None else DEFAULT_MIN_TOP1.get(precision, 0.9)
        threshold = {"min_top1": min_top1}
    meta = {"parity": {**metrics, "positions": result.positions, "providers": result.providers, **threshold,
                       "min_agreement": params.min_agreement, "max_logit_diff": params.max_logit_diff, **kv}}
    if log:
        log.info("parity: %s on %s", metrics, ", ".join(result.providers))
    problems = []
    if result.cosine is not None:
        if result.cosine < min_cosine:
            problems.append(f"mean cosine similarity {result.cosine:.4f} < min_cosine {min_cosine} (least {result.cosine_min:.4f})")
    elif result.top1 < min_top1:
        problems.append(f"top-1 agreement {result.top1:.3f} < min_top1 {min_top1}")
    if decoder and result.agreement < params.min_agreement:
        problems.append(f"greedy-token agreement {result.agreement:.3f} < min_agreement {params.min_agreement}")
    if params.max_logit_diff is not None and result.max_logit_diff > params.max_logit_diff:
        problems.append(f"max logit difference {result.max_logit_diff:.4g} > max_logit_diff {params.max_logit_diff}")
    failures = []
    if problems:
        gentler = ("higher precision, smaller block_size, keep_lm_head_int8, or affine int4 on a CPU: `method: affine` in "
                   "quantize, `int4_method: affine` in onnx, the defaults for cpu-int4" if decoder
                   else "a higher precision, or a smaller block_size for int4")
        failures.append(
            "parity check failed against the input model: " + "; ".join(problems)
            + f" (on {result.positions} positions, providers {', '.join(result.providers)}). "
            f"Use a gentler setting ({gentler}) or relax `parity:`."
        )
    if result.kv_agreement is not None and result.kv_agreement < params.min_kv_agreement:
        runner, wiring = (("onnxruntime, feeding the graph's present.* outputs back as its past_key_values.* inputs,",
                           "the graph's past/present pairs") if onnx_decoder else
                          ("onnxruntime-genai, decoding with its cache,", "the past/present names in genai_config.json against "
                           "the graph's inputs and outputs"))
        failures.append(
            f"KV-cache check failed: {runner} agrees with the same model recomputed "
            f"without a cache on {result.kv_agreement:.3f} of greedy tokens < min_kv_agreement {params.min_kv_agreement}. "
            f"The cache path is broken: check {wiring}, or relax `parity: {{min_kv_agreement: ...}}`."
        )
    if failures:
        raise ParityError(" ".join(failures))
    return {"metrics": metrics, "meta": meta}


class Parity(Pass):
    """Checks an ONNX model against its nearest upstream HF model, on the target's hardware."""

    name = "parity"
    version = "2"
    consumes = ("genai-model", "onnx-model")
    produces = None
    per_target = True
    executes_on_target = True
    requires = ("onnxruntime", "transformers")

    class Params(ParityParams):
        reference: str | None = Field(None, description="Upstream node to compare with (default: the nearest hf-model).")

    def run(self, ctx: PassContext) -> Artifact:
        params = ctx.params
        reference = ctx.ancestors.get(params.reference) if params.reference else ctx.nearest("hf-model")
        if reference is None:
            raise ParityError("no reference model upstream: give `reference: <node>` or start the pipeline from an HF model")
        precision = ctx.input.meta.get("precision", ctx.target.precision)
        result = check(reference, ctx.input, params.model_copy(update={"require_target": True}), ctx.target, precision, ctx.log)
        report = ctx.output_dir / "parity.json"
        report.write_text(json.dumps(result["meta"], indent=2))
        return Artifact(path=ctx.output_dir, kind="metrics", meta=result["meta"], metrics=result["metrics"])

    def output_kind(self, params, input_kinds):
        return "metrics"
