"""`from_gguf`: a format conversion the planner inserts on its own (`converts = True`).

A `.gguf` file -> a Hugging Face model folder (weights dequantized to float32,
config, tokenizer with its chat template). Runs once per GGUF file; the cache keeps the result.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from slimops.errors import ModelError
from slimops.plugin import Artifact, Pass, PassContext


class FromGguf(Pass):
    """Dequantizes a GGUF file into an HF folder that every HF-reading pass can load."""

    name = "from_gguf"
    version = "2"  # 2: the fields transformers' GGUF reader drops are restored
    consumes = ("gguf",)
    produces = "hf-model"
    converts = True
    requires = ("transformers", "gguf", "torch")

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def run(self, ctx: PassContext) -> Artifact:
        source = Path(ctx.input.path)
        if source.is_dir():
            found = sorted(source.glob("*.gguf"))
            if not found:
                raise ModelError(f"no .gguf file in {source}")
            source = found[0]
        ctx.progress.update(0, 3, f"reading {source.name}")
        save_gguf_as_hf(source, ctx.output_dir, ctx.log)
        ctx.progress.update(3, 3, "saved")
        meta = {**ctx.input.meta, "converted_from": source.name}
        return Artifact(path=ctx.output_dir, kind="hf-model", meta=meta)


def save_gguf_as_hf(gguf_file: Path, out_dir: Path, log=None) -> None:
    """Write `gguf_file` as a plain HF folder in `out_dir`.

    A model that transformers loads with `gguf_file=` is flagged as quantized and refuses
    `save_pretrained`, so the weights are moved into a fresh model built from the same config.
    Before loading, the config gets back what transformers' GGUF reader drops (`_restore_dropped_fields`).

    Raises:
        ModelError: transformers cannot read the file (unsupported architecture or quant type,
            or a file cut short), or it holds a rope scaling transformers cannot express.
    """
    import copy
    import struct

    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        reader = gguf.GGUFReader(gguf_file)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        _restore_dropped_fields(config, reader, gguf_file)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # struct.error: cut short in its metadata; RuntimeError: tensors whose shapes the config it read does not fit
    except (ValueError, KeyError, OSError, NotImplementedError, RuntimeError, struct.error) as err:
        raise ModelError(f"transformers cannot read {gguf_file}: {err} (an architecture or quantization type transformers "
                         "does not convert, or a file cut short: check it is complete)") from None
    config = copy.deepcopy(loaded.config)  # reading it from the file again costs seconds
    # The GGUF config carries a quantization block that would make the fresh model "quantized" too.
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    config = _as_mistral(config, _field(reader, "general.name") or "")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    if fresh.config.tie_word_embeddings:
        # One tensor serves both; a tied checkpoint stores only the input embedding.
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and fresh.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"{gguf_file}: weights do not fit the model its config describes (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if fresh.config.tie_word_embeddings:
        fresh.tie_weights()
    if _field(reader, "tokenizer.ggml.model") == "gpt2" and type(tokenizer).__name__ == "GemmaTokenizer":
        # A byte-level vocabulary in a Gemma file: transformers wraps it in GemmaTokenizer, which encodes it right
        # but, reloaded from the saved folder, rebuilds a sentencepiece model around it that cannot encode at all.
        tokenizer = _plain_fast_tokenizer(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if fresh.generation_config is not None and fresh.generation_config.pad_token_id is None:
        fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if log is not None:
        log.info("dequantized %s into %s (%d tensors, tied embeddings: %s)", gguf_file, out_dir, len(state), fresh.config.tie_word_embeddings)


def _plain_fast_tokenizer(tokenizer):
    """The same tokenizers backend, special tokens and chat template, in the class that saves and reloads it as is."""
    from transformers import PreTrainedTokenizerFast

    specials = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token") if getattr(tokenizer, k) is not None}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, chat_template=tokenizer.chat_template, **specials)


def _field(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _restore_dropped_fields(config, reader, gguf_file: Path) -> None:
    """Set on `config` what the file states (or llama.cpp fixes by rule) but transformers' GGUF reader leaves at
    the config class's defaults, so that the HF model computes what llama.cpp computes from the file.

    Raises:
        ModelError: a `rope_freqs` tensor that no llama3 rope scaling reproduces.
    """
    import numpy as np
    from gguf import dequantize

    arch = _field(reader, "general.architecture")
    tensors = {t.name: t for t in reader.tensors}
    values = lambda name: [float(v) for v in np.asarray(dequantize(tensors[name].data, tensors[name].tensor_type)).ravel()]  # noqa: E731
    # A file with no pad token has none: Phi3Config's default (32000) points past a smaller vocabulary.
    config.pad_token_id = _field(reader, "tokenizer.ggml.padding_token_id")
    # Qwen3's head_dim is not hidden / heads, and the reader skips its key_length (Qwen3Config defaults to 128).
    if (key_length := _field(reader, f"{arch}.attention.key_length")) is not None and hasattr(config, "head_dim"):
        config.head_dim = key_length
    theta = _field(reader, f"{arch}.rope.freq_base")
    if "rope_freqs.weight" in tensors:  # llama3 rope scaling, stored as the divisor of each frequency
        config.rope_parameters = {**config.rope_parameters, **_llama3_rope(config, theta, values("rope_freqs.weight"), gguf_file)}
    if "rope_factors_short.weight" in tensors:  # phi3 longrope
        original = _field(reader, f"{arch}.rope.scaling.original_context_length")
        config.original_max_position_embeddings = original
        config.rope_parameters = {  # the rest of what the reader set (partial_rotary_factor) stays
            **config.rope_parameters, "rope_type": "longrope", "rope_theta": theta, "original_max_position_embeddings": original,
            "short_factor": values("rope_factors_short.weight"), "long_factor": values("rope_factors_long.weight"),
            "attention_factor": _field(reader, f"{arch}.rope.scaling.attn_factor"),
        }
    if arch in ("gemma2", "gemma3"):
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):  # absent: llama.cpp's defaults are the config's
            if (cap := _field(reader, f"{arch}.{key}")) is not None:
                setattr(config, key, cap)
        # llama.cpp stores no query_pre_attn_scalar: it scales by head_dim, or by hidden / heads at 27B (46 / 62 layers).
        is_27b = config.num_hidden_layers == {"gemma2": 46, "gemma3": 62}[arch]
        config.query_pre_attn_scalar = config.hidden_size // config.num_attention_heads if is_27b else config.head_dim
    if arch == "gpt2":
        # The reader puts context_length in `n_ctx`, which GPT2Config no longer has: n_positions (the size of the
        # learned position table) stays at 1024, and the file's position_embd does not fit it.
        config.n_positions = _field(reader, f"{arch}.context_length")
        # And feed_forward_length in an attribute GPT2Config does not read; its n_inner=None means 4 * n_embd.
        if (ffn := _field(reader, f"{arch}.feed_forward_length")) is not None and ffn != 4 * config.n_embd:
            config.n_inner = ffn
    if arch == "gemma3" and _field(reader, f"{arch}.rope.scaling.type") == "linear":  # on the global layers only
        config.rope_parameters["full_attention"] = {
            "rope_type": "linear", "rope_theta": theta, "factor": _field(reader, f"{arch}.rope.scaling.factor")}


def _llama3_rope(config, theta: float, divisors: list[float], gguf_file: Path) -> dict:
    """The llama3 rope parameters whose frequencies are llama.cpp's `rope_freqs` (which it derives from them),
    with Llama 3's own constants: the file keeps only the divisors."""
    import copy

    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": theta, "factor": max(divisors), "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    trial = copy.deepcopy(config)
    trial.rope_parameters = rope
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](trial)
    dim = len(divisors) * 2
    plain = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if not torch.allclose(plain / scaled.double(), torch.tensor(divisors, dtype=torch.float64), rtol=1e-4):
        raise ModelError(f"{gguf_file}: its rope_freqs tensor is not llama3 rope scaling with Llama 3's constants, "
                         "and transformers has no rope type for other divisors; convert the model from its HF checkpoint")
    return rope


def _as_mistral(config, model_name: str):
    """A MistralConfig for a llama-architecture file named as a Mistral: llama.cpp converts Mistral as a llama, and
    transformers' own check for this matches the name only when it is exactly "mistral"."""
    from transformers import MistralConfig

    if config.model_type != "llama" or "mistral" not in model_name.lower() or config.attention_bias or config.mlp_bias:
        return config
    known = MistralConfig().to_dict()
    fields = {k: v for k, v in config.to_dict().items() if k in known and k not in ("model_type", "architectures")}
    # llama.cpp attends over the whole context for this architecture, and the file states no window.
    return MistralConfig(**{**fields, "sliding_window": None})
