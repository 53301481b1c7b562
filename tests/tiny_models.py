"""Tiny test assets built in a second: a word-level tokenizer with a chat template, a 2-layer
random llama, a 2-layer random BERT, and a small tone data set."""

from __future__ import annotations

import json
import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
TONES = ["happy", "sad", "angry", "calm", "fearful", "excited"]
WORDS = {
    "happy": "what a lovely sunny day with friends",
    "sad": "i miss her so much tonight alone",
    "angry": "this is unacceptable and i am furious",
    "calm": "the lake is still and quiet now",
    "fearful": "someone is standing outside in the dark",
    "excited": "we won the tickets let us go",
}


def tone_rows(count: int = 48, seed: int = 0) -> list[dict[str, str]]:
    """`count` examples {phrase, tone}, phrases drawn from each tone's own words."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        tone = TONES[index % len(TONES)]
        words = WORDS[tone].split()
        rng.shuffle(words)
        rows.append({"phrase": " ".join(words[: rng.randint(3, len(words))]), "tone": tone})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build_tokenizer(folder: Path):
    """A word-level tokenizer over the test vocabulary, with a chat template; saved to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_words = sorted({w for text in WORDS.values() for w in text.split()} | set(TONES) | {"user", "assistant", "tone", ":", "phrase"})
    vocab = {token: i for i, token in enumerate(SPECIALS + vocab_words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<|im_start|>", eos_token="<|im_end|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_llama(folder: Path, hidden: int = 32) -> Path:
    """A random 2-layer llama (hidden 32 unless given, tied embeddings) and its tokenizer, in `folder`.

    hidden=64 gives every linear layer a shape bitsandbytes can quantize to 4 bits (rows of 64 inputs).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def tiny_bert(folder: Path) -> Path:
    """A random 2-layer BERT encoder (hidden 32) and its tokenizer, in `folder`."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = build_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(folder)
    return folder
