"""Tiny test assets, each built in a second or two; every test module takes its models, tokenizers and
data from here (no test module imports another).

- the tone world: a word-level tokenizer with a chat template, a 2-layer random llama, a 2-layer
  random BERT, and a small tone data set (`tone_rows`, `write_jsonl`);
- a 2-layer llama with heads of 16 (the ONNX builder's minimum) fit to `CORPUS`, a BERT
  classifier, LoRA adapters, and the ONNX tests' pipeline helpers;
- the evaluate tests' world (`EVAL_*`, `eval_llama`, `write_eval_project`, a hand-made ONNX LM);
- a tiny GGUF of each family transformers reads (llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3, gpt2), written as
  llama.cpp's converter writes one, and a llama on the GGUF Q4_1/Q8_0 grids.
"""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import numpy as np

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


# -- a trained llama for the ONNX builder (head size 16) and a BERT classifier ----------------------------------

CORPUS = [
    "The capital of France is Paris, and the capital of Spain is Madrid.",
    "def add(a, b): return a + b",
    "Once upon a time there was a small cat that sat on the mat.",
    "one two three four five six seven eight nine ten",
]
# CHAT_TEMPLATE without the generation prompt: the trained llama's and the GGUF file's
PLAIN_CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def corpus_tokenizer():
    """A byte-level BPE tokenizer trained on CORPUS, with the plain chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def fit_to_corpus(model, tokenizer, steps: int = 40):
    """`steps` of AdamW on CORPUS (padded, loss on real tokens), so that next-token predictions are confident."""
    import torch

    rows = [tokenizer(text)["input_ids"] for text in CORPUS]
    length = max(map(len, rows))
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (length - len(row)) for row in rows])
    mask = (torch.arange(length)[None] < torch.tensor([len(row) for row in rows])[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def tiny_trained_llama(folder: Path) -> Path:
    """A 2-layer llama (hidden 64, 4 heads of 16) with a byte-level BPE tokenizer, fit to CORPUS."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = corpus_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    assert config.vocab_size not in (64, 128)
    model = fit_to_corpus(LlamaForCausalLM(config), tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_bert_classifier(folder: Path) -> Path:
    """A random 2-layer BERT with a 3-way classification head, and a word-level tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = build_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def lora_adapter(base: Path, folder: Path, rank: int, seed: int) -> Path:
    """A PEFT LoRA adapter on `base` with random (non-zero) B matrices."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0))
    for name, tensor in model.named_parameters():
        if "lora_B" in name:
            tensor.data.normal_(0, 0.2)
    model.save_pretrained(folder)
    return folder


def quiet():
    from slimops.display import RunDisplay

    return RunDisplay(quiet=True)


def write_pipeline(folder: Path, assets, body: str) -> Path:
    head = f"""\
        name: onnx-test
        model: {{path: {assets['llama']}}}
        data: {{calib: {{type: jsonl, files: {assets['root'] / 'data.jsonl'}, text: text}}}}
        engine: {{cache_dir: {assets['cache']}, output_dir: out}}
        """
    path = folder / "pipeline.yaml"
    path.write_text(textwrap.dedent(head) + textwrap.dedent(body))
    return path


def run_broken_chain(tmp_path, assets, cli, module: str, source: str, cls: str):
    """export -> a plugin pass `module:cls` (written from `source`) that breaks the model -> parity."""
    (tmp_path / f"{module}.py").write_text(source)
    path = write_pipeline(tmp_path, assets, f"""\
        targets: {{cpu: cpu}}
        passes:
          export: {{type: onnx}}
          broken: {{type: "{module}:{cls}"}}
          check: {{type: parity}}
        """)
    return path, *cli("run", "--config", path, "--quiet")


# -- the evaluate tests' world: three tones, a whitespace tokenizer, a plugin that perturbs weights --------------

EVAL_TONES = ["happy", "sad", "calm"]

EVAL_PHRASES = {
    "happy": "what a lovely sunny day",
    "sad": "i miss her so much",
    "calm": "the lake is still now",
}

EVAL_TEMPLATE = "user {phrase} assistant {tone} <|im_end|>"

# A plugin pass that makes a different model: the input's weights scaled, so before != after.
PERTURB = '''
import shutil
from pydantic import BaseModel, ConfigDict
import slimops

class Perturb(slimops.Pass):
    name = "perturb"
    consumes = ("hf-model",)
    produces = "hf-model"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        scale: float = 1.5

    def run(self, ctx):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained(ctx.input.path)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(ctx.params.scale)
        model.save_pretrained(ctx.output_dir)
        AutoTokenizer.from_pretrained(ctx.input.path).save_pretrained(ctx.output_dir)
        return slimops.Artifact(path=ctx.output_dir, kind="hf-model")

class PerTarget(Perturb):
    name = "per_target_perturb"
    per_target = True

    def run(self, ctx):
        artifact = super().run(ctx)
        (ctx.output_dir / "loss.png").write_bytes(b"PNG-" + ctx.target.precision.encode())
        return artifact

class Adapter(slimops.Pass):
    name = "adapter"
    consumes = ("hf-model",)
    produces = "hf-adapter"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def run(self, ctx):
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM
        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_pretrained(ctx.input.path)
        config = LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(ctx.output_dir)
        return slimops.Artifact(path=ctx.output_dir, kind="hf-adapter")
'''


def eval_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in EVAL_PHRASES.values() for w in text.split()} | set(EVAL_TONES) | {"user", "assistant"})
    vocab = {token: i for i, token in enumerate(["<unk>", "<pad>", "<s>", "<|im_end|>", *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def eval_llama(folder: Path, hidden: int = 32) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = eval_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def eval_rows(count: int = 9) -> list[dict]:
    return [{"phrase": EVAL_PHRASES[EVAL_TONES[i % 3]], "tone": EVAL_TONES[i % 3]} for i in range(count)]


def write_eval_project(root: Path, model: Path, evaluate: str, extra_passes: str = "", data_rows: list | None = None) -> Path:
    (root / "tone.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (data_rows or eval_rows())))
    (root / "plugin.py").write_text(PERTURB)
    passes = [f"  {line.strip()}" for line in extra_passes.strip().splitlines() if line.strip()]
    lines = [
        "name: tiny-eval",
        f'model: {{path: "{model}"}}',
        "data:",
        "  tone:",
        "    files: tone.jsonl",
        '    splits: {train: "[:3]", eval: "[3:]"}',
        f'    template: "{EVAL_TEMPLATE}"',
        "    label: tone",
        "passes:",
        *passes,
        f"  eval: {evaluate}",
    ]
    path = root / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_onnx_lm(folder: Path, vocab: int, seed: int = 0) -> tuple[Path, "object", "object"]:
    """An ONNX 'language model' with no KV cache: logits = embedding[input_ids] @ W."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(vocab, 8)).astype(np.float32)
    out = rng.normal(size=(8, vocab)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "input_ids"], ["hidden"]), helper.make_node("MatMul", ["hidden", "out"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(out, "out")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    return folder / "model.onnx", emb, out


# -- tiny GGUFs, each written the way llama.cpp's converter (convert_hf_to_gguf.py) writes its family --------

GGUF_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GGUF_MERGES = ["h e", "Ġ t", "Ġt he", "a t", "c at"]

# family -> (the `general.architecture` llama.cpp writes, fields beyond tests/families.py's row). The extra
# fields move values a GGUF states off the config class's defaults, so that a converter that drops them
# (or reads the default instead) changes the logits; they keep what llama.cpp can say about the family.
GGUF_FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {}),
    # llama.cpp converts MistralForCausalLM as a llama: only `general.name` says it is a Mistral
    "mistral": ("llama", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    # short factors other than 1, so that they reach the logits of a short input
    "phi3": ("phi3", {"rope_parameters": {
        "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0 + 0.5 * i for i in range(8)],
        "long_factor": [1.5] * 8}}),
    # a window shorter than the test input, and caps other than Gemma2Config's defaults
    "gemma2": ("gemma2", {"sliding_window": 4, "final_logit_softcapping": 15.0, "attn_logit_softcapping": 25.0}),
    # llama.cpp makes every sixth layer full attention (a pattern it does not store), so it takes six
    # layers to have one; its rope scaled as Gemma 3 4B and up scale it
    "gemma3": ("gemma3", {"num_hidden_layers": 6, "sliding_window": 4,
                          "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
                          "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                              "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}}),
    # a LayerNorm epsilon other than GPT2Config's default; n_positions (128, not 1024) is already off it
    "gpt2": ("gpt2", {"layer_norm_epsilon": 1e-3}),
}
GGUF_QUANTIZED = {  # HF name -> the ggml type it is stored in (gguf.GGMLQuantizationType); phi3 fuses these
    "model.layers.0.self_attn.q_proj.weight": "Q8_0", "model.layers.0.self_attn.qkv_proj.weight": "Q8_0",
    "model.layers.1.mlp.up_proj.weight": "Q4_1", "model.layers.1.mlp.gate_up_proj.weight": "Q4_1",
    "transformer.h.0.attn.c_attn.weight": "Q8_0", "transformer.h.1.mlp.c_fc.weight": "Q4_1",  # gpt2
}
# GPT-2's Conv1D weights, stored (in, out) in HF; llama.cpp writes them transposed, (out, in) as a linear's
GGUF_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


def byte_level_vocab() -> list[str]:
    """The 256 byte symbols in byte order, the merged tokens, then the special tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    return [spelling[b] for b in range(256)] + [m.replace(" ", "") for m in GGUF_MERGES] + GGUF_SPECIALS


def _rope_permute(weight, heads: int):
    """llama.cpp's Q/K row order (convert_hf_to_gguf.py `LlamaModel.permute`); transformers undoes it."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _llama3_rope_factors(rope: dict, head_dim: int) -> list[float]:
    """The `rope_freqs` tensor llama.cpp writes for llama3 rope scaling (`LlamaModel.generate_extra_tensors`)."""
    import math

    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * rope["rope_theta"] ** (i / head_dim)
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


def _tiny_family_model(family: str, tied: bool | None):
    """The random HF model of `family` (tests/families.py's row, plus GGUF_FAMILIES' fields), float32, eval mode."""
    import torch
    import transformers

    from families import FAMILIES, HIDDEN, HEADS, family_config

    config_class, model_class, fields = FAMILIES[family]
    tokens = byte_level_vocab()
    fields = {**fields, **GGUF_FAMILIES[family][1]}
    if tied is not None:
        fields["tie_word_embeddings"] = tied
    # a GGUF states no pad token unless the model has one
    specials = {"bos_token_id": tokens.index("<|im_start|>"), "eos_token_id": tokens.index("<|im_end|>"), "pad_token_id": None}
    if family == "gpt2":  # its config names the shape n_embd, n_layer, n_head, n_positions: tests/families.py's builder
        config = family_config(family, len(tokens), specials, **fields)
    else:
        shape = {"vocab_size": len(tokens), "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": 2,
                 "num_attention_heads": HEADS, "max_position_embeddings": 128, "rms_norm_eps": 1e-5, **specials}
        config = getattr(transformers, config_class)(**{**shape, **fields})
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        # Weights far from the default init, so that attention (and so the Q/K row order) moves the logits.
        for param in model.parameters():
            param.copy_(1 + 0.1 * torch.randn_like(param) if param.ndim == 1 else 0.3 * torch.randn_like(param))
    return model


def _write_family_metadata(writer, family: str, config) -> dict:
    """The hyperparameters llama.cpp's converter writes for `family`; returns its extra tensors (GGUF name -> array)."""
    import math

    import gguf

    if family == "gpt2":  # GPT2Model.set_gguf_parameters: LayerNorm, no rope, n_ff fixed at 4 * n_embd
        writer.add_name(f"Tiny {family.upper()}")
        writer.add_block_count(config.n_layer)
        writer.add_context_length(config.n_positions)  # n_ctx in the config.json of OpenAI's checkpoints
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return {}
    head_dim = config.head_dim if getattr(config, "head_dim", None) else config.hidden_size // config.num_attention_heads
    rope = config.rope_parameters.get("full_attention", config.rope_parameters)  # gemma3: the global layers'
    writer.add_name(f"Tiny {family.capitalize()}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if family in ("qwen3", "gemma2", "gemma3"):  # their config.json states head_dim
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    extra = {}
    if family in ("llama", "mistral"):
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
        if rope.get("rope_type") == "llama3":
            extra[gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"] = _llama3_rope_factors(rope, head_dim)
    elif family == "phi3":
        original = config.original_max_position_embeddings
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_sliding_window(config.sliding_window or 0)  # 0: not a Phi-4
        scale = config.max_position_embeddings / original
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
        extra[gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight"] = rope["long_factor"]
        extra[gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight"] = rope["short_factor"]
    elif family == "gemma2":
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
        writer.add_sliding_window(config.sliding_window)
    elif family == "gemma3":
        writer.add_sliding_window(config.sliding_window)
        if rope.get("rope_type") == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(rope["factor"])
    return extra


def write_tiny_gguf(path: Path, family: str, tied: bool | None = None):
    """Write a tiny model of `family` (a key of GGUF_FAMILIES) to `path` as llama.cpp's converter would.

    The model is tests/families.py's row (2 layers, hidden 64, 4 heads of 16) with GGUF_FAMILIES' fields; the file
    has llama.cpp's names, Q/K rows permuted for its rope layout where it permutes them (llama, mistral), gemma's
    norms stored as `1 + w`, GPT-2's Conv1D weights transposed, the two GGUF_QUANTIZED tensors in Q8_0 and Q4_1 (the rest F32), the extra tensors
    llama.cpp derives from the rope scaling, and a byte-level BPE vocabulary with merges, control tokens and a
    chat template. `tied=None` keeps the family's own tie.

    Returns:
        The HF model it describes (float32, eval mode): its quantized weights hold their
        dequantized values, so its logits are what a correct conversion reproduces.
    """
    import gguf
    import numpy
    import torch

    arch, _ = GGUF_FAMILIES[family]
    model = _tiny_family_model(family, tied)
    config, tokens = model.config, byte_level_vocab()
    writer = gguf.GGUFWriter(str(path), arch)
    extra = _write_family_metadata(writer, family, config)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in GGUF_SPECIALS else 1 for t in tokens])  # 3: control, 1: normal
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges(GGUF_MERGES)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_chat_template(PLAIN_CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), config.num_hidden_layers)
    with torch.no_grad():
        for name, param in model.state_dict().items():
            if config.tie_word_embeddings and name == "lm_head.weight":
                continue  # llama.cpp writes no output.weight for a tied model
            gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
            assert gguf_name is not None, f"gguf has no name for {name} in {arch}"
            weight = param.numpy().astype("float32")
            if arch == "llama" and ".q_proj." in name:
                weight = _rope_permute(weight, config.num_attention_heads)
            elif arch == "llama" and ".k_proj." in name:
                weight = _rope_permute(weight, config.num_key_value_heads)
            elif family.startswith("gemma") and name.endswith("norm.weight"):
                weight = weight + 1  # gemma scales by (1 + w); llama.cpp stores the scale
            elif arch == "gpt2" and name.endswith(GGUF_CONV1D):
                weight = numpy.ascontiguousarray(weight.T)
            if name not in GGUF_QUANTIZED:
                writer.add_tensor(gguf_name, weight)
                continue
            qtype = gguf.GGMLQuantizationType[GGUF_QUANTIZED[name]]
            writer.add_tensor(gguf_name, gguf.quants.quantize(weight, qtype), raw_dtype=qtype)
            if arch == "gpt2":  # blocks run along the stored (transposed) row: unpack that, then transpose back
                unpacked = gguf.quants.dequantize(gguf.quants.quantize(weight, qtype), qtype).T.copy()
            else:  # Quantization blocks run along a row, so the row permutation commutes with it.
                unpacked = gguf.quants.dequantize(gguf.quants.quantize(param.numpy(), qtype), qtype)
            param.copy_(torch.from_numpy(unpacked))
        for gguf_name, values in extra.items():
            writer.add_tensor(gguf_name, numpy.asarray(values, dtype="float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def write_tiny_llama_gguf(path: Path, tied: bool = True):
    """`write_tiny_gguf(path, "llama", tied)`: the 2-layer llama (2 KV heads, llama3 rope) the convert tests use."""
    return write_tiny_gguf(path, "llama", tied)


# -- a llama whose weights sit on the GGUF Q4_1/Q8_0 grids --------------------------------------------------

def q4_1(w: np.ndarray) -> np.ndarray:
    """`w` (out x in) on GGUF's Q4_1 grid: blocks of 32 along `in`, fp16 scale and min, as llama.cpp writes it."""
    n, k = w.shape
    blocks = w.reshape(n, k // 32, 32).astype(np.float32)
    low = blocks.min(-1, keepdims=True)
    d = ((blocks.max(-1, keepdims=True) - low) / 15).astype(np.float16).astype(np.float32)
    low = low.astype(np.float16).astype(np.float32)
    q = np.clip(np.rint((blocks - low) / np.where(d > 0, d, 1)), 0, 15)
    return (q * d + low).reshape(n, k)


def q8_0(w: np.ndarray) -> np.ndarray:
    """`w` (out x in) on GGUF's Q8_0 grid: blocks of 32 along `in`, an fp16 scale each, symmetric."""
    n, k = w.shape
    blocks = w.reshape(n, k // 32, 32).astype(np.float32)
    d = (np.abs(blocks).max(-1, keepdims=True) / 127).astype(np.float16).astype(np.float32)
    return (np.clip(np.rint(blocks / np.where(d > 0, d, 1)), -127, 127) * d).reshape(n, k)


def grid_llama(folder: Path) -> Path:
    """A 2-layer llama (hidden 64) on GGUF grids as SmolLM2's file has them: linear layers Q4_1, lm_head Q8_0."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                snap = q8_0 if name == "lm_head" else q4_1
                module.weight.copy_(torch.from_numpy(snap(module.weight.numpy())))
    model.save_pretrained(folder)
    return folder


def hide_distribution(monkeypatch, name: str) -> None:
    """Make `importlib.metadata.version(name)` say the distribution is not installed, as on a machine without it."""
    import importlib.metadata

    real = importlib.metadata.version

    def version(dist):
        if dist == name:
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
