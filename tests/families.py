"""Tiny models of the families users fine-tune, built from each family's published config shape.

Each row keeps the fields that change how a family is built (fused projections, sliding windows,
rope layout and scaling, soft-capping, tied embeddings, q/k norms, biases) and shrinks the rest:
2 layers, hidden 64, 4 heads of 16 (the ONNX builder's minimum head size). `tiny_family` fits the
model to CORPUS for a few seconds so that its next-token predictions are confident, as a real
model's are, and parity measures the export rather than noise.

The table is also the list of supported families in docs/families.md: a family is supported when
its row passes tests/test_families.py.
"""

from __future__ import annotations

from pathlib import Path

from assets import corpus_tokenizer, fit_to_corpus

HIDDEN, HEADS, HEAD_DIM = 64, 4, 16

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# family -> (config class, model class, config fields beside the shared shape), as the published
# checkpoints set them (the model named after each row is the one whose config.json it follows)
FAMILIES: dict[str, tuple[str, str, dict]] = {
    # Llama 3.2 1B: llama3 rope scaling, tied embeddings
    "llama": ("LlamaConfig", "LlamaForCausalLM", {
        "num_key_value_heads": 2, "rope_parameters": LLAMA3_ROPE, "tie_word_embeddings": True}),
    # Qwen2.5 0.5B: biased q/k/v, tied embeddings
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {
        "num_key_value_heads": 2, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "tie_word_embeddings": True}),
    # Qwen3 0.6B: q/k RMS norms, an explicit head_dim, tied embeddings
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {
        "num_key_value_heads": 2, "head_dim": HEAD_DIM, "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}),
    # Phi-3.5 mini: fused qkv_proj and gate_up_proj, longrope scaling, untied
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {
        "num_key_value_heads": HEADS, "max_position_embeddings": 512, "original_max_position_embeddings": 128,
        "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * (HEAD_DIM // 2),
                            "long_factor": [1.5] * (HEAD_DIM // 2)},
        "tie_word_embeddings": False}),
    # Mistral 7B v0.1: grouped-query attention with a sliding window, untied
    "mistral": ("MistralConfig", "MistralForCausalLM", {
        "num_key_value_heads": 2, "sliding_window": 4096, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
    # Gemma 2 2B: alternating sliding/full layers (a window of 4096 in a context of 8192), logit
    # soft-capping, query_pre_attn_scalar, tied
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {
        "num_key_value_heads": 2, "head_dim": HEAD_DIM, "query_pre_attn_scalar": HEAD_DIM, "sliding_window": 4096,
        "max_position_embeddings": 8192,
        "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "tie_word_embeddings": True,
        "hidden_activation": "gelu_pytorch_tanh"}),
    # Gemma 3 1B (as transformers 5 saves it): rope parameters per layer type, a sliding window of
    # 512 in a context of 32768, q/k norms, tied
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "num_key_value_heads": 1, "head_dim": HEAD_DIM, "query_pre_attn_scalar": HEAD_DIM, "sliding_window": 512,
        "max_position_embeddings": 32768, "layer_types": ["sliding_attention", "full_attention"], "tie_word_embeddings": True,
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}}),
    # GPT-2 / DialoGPT: Conv1D c_attn/c_proj/c_fc, learned positions, tied
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {}),
}


def family_config(family: str, vocab_size: int, special_ids: dict, **overrides):
    import transformers

    config_class, _, fields = FAMILIES[family]
    cls = getattr(transformers, config_class)
    if family == "gpt2":
        return cls(vocab_size=vocab_size, n_embd=HIDDEN, n_layer=2, n_head=HEADS, n_positions=128, **special_ids, **overrides)
    shape = {"vocab_size": vocab_size, "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": 2,
             "num_attention_heads": HEADS, "max_position_embeddings": 128}
    return cls(**{**shape, **fields, **special_ids, **overrides})


def tiny_family(family: str, folder: Path, steps: int = 40, **overrides) -> Path:
    """A 2-layer model of `family` with a byte-level BPE tokenizer, fit to CORPUS; saved to `folder`.

    `overrides` replace fields of the family's row (a window longer than the context, say).
    """
    import torch
    import transformers

    tokenizer = corpus_tokenizer()
    special_ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    config = family_config(family, len(tokenizer), special_ids, **overrides)
    model = fit_to_corpus(getattr(transformers, FAMILIES[family][1])(config), tokenizer, steps)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
