"""Tiny test assets, each built in a second or two; every test module takes its models, tokenizers and
data from here (no test module imports another).

- the tone world: a word-level tokenizer with a chat template, a 2-layer random llama, a 2-layer
  random BERT, and a small tone data set (`tone_rows`, `write_jsonl`);
- a 2-layer llama with heads of 16 (the ONNX builder's minimum) fit to `CORPUS`, a BERT
  classifier, LoRA adapters, and the ONNX tests' pipeline helpers;
- the evaluate tests' world (`EVAL_*`, `eval_llama`, `write_eval_project`, a hand-made ONNX LM);
- a tiny llama GGUF written as llama.cpp writes one, and a llama on the GGUF Q4_1/Q8_0 grids.
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


def tiny_trained_llama(folder: Path) -> Path:
    """A 2-layer llama (hidden 64, 4 heads of 16) with a byte-level BPE tokenizer, fit to CORPUS."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    assert config.vocab_size not in (64, 128)
    model = LlamaForCausalLM(config)
    rows = [tokenizer(text)["input_ids"] for text in CORPUS]
    length = max(map(len, rows))
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (length - len(row)) for row in rows])
    mask = (torch.arange(length)[None] < torch.tensor([len(row) for row in rows])[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
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


# -- a tiny llama GGUF, written the way llama.cpp's converter writes one ---------------------------------------

GGUF_LAYERS, GGUF_HIDDEN, GGUF_HEADS, GGUF_KV_HEADS, GGUF_INTERMEDIATE = 2, 64, 4, 2, 128
GGUF_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GGUF_MERGES = ["h e", "Ġ t", "Ġt he", "a t", "c at"]

GGUF_QUANTIZED = {  # HF name -> the ggml type it is stored in (gguf.GGMLQuantizationType)
    "model.layers.0.self_attn.q_proj.weight": "Q8_0",
    "model.layers.1.mlp.up_proj.weight": "Q4_1",
}


def byte_level_vocab() -> list[str]:
    """The 256 byte symbols in byte order, the merged tokens, then the special tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    return [spelling[b] for b in range(256)] + [m.replace(" ", "") for m in GGUF_MERGES] + GGUF_SPECIALS


def _gguf_name(hf_name: str) -> str:
    outside_blocks = {
        "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight",
    }
    if hf_name in outside_blocks:
        return outside_blocks[hf_name]
    layer, rest = hf_name.removeprefix("model.layers.").split(".", 1)
    blocks = {
        "input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "ffn_norm",
        "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k", "self_attn.v_proj.weight": "attn_v",
        "self_attn.o_proj.weight": "attn_output", "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up",
        "mlp.down_proj.weight": "ffn_down",
    }
    return f"blk.{layer}.{blocks[rest]}.weight"


def _rope_permute(weight, heads: int):
    """llama.cpp's Q/K row order (convert_hf_to_gguf.py `LlamaModel.permute`); transformers undoes it."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_llama_gguf(path: Path, tied: bool = True):
    """Write a 2-layer llama (hidden 64, 4 heads of 16, 2 KV heads) to `path` as GGUF.

    Returns:
        The HF model it describes (float32, eval mode): its quantized weights hold their
        dequantized values, so its logits are what a correct conversion reproduces.
    """
    import gguf
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = byte_level_vocab()
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=GGUF_HIDDEN, intermediate_size=GGUF_INTERMEDIATE, num_hidden_layers=GGUF_LAYERS,
        num_attention_heads=GGUF_HEADS, num_key_value_heads=GGUF_KV_HEADS, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=tied,
        bos_token_id=tokens.index("<|im_start|>"), eos_token_id=tokens.index("<|im_end|>"),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # Weights far from the default init, so that attention (and so the Q/K row order) moves the logits.
        for name, param in model.named_parameters():
            param.copy_(1 + 0.1 * torch.randn_like(param) if param.ndim == 1 else 0.3 * torch.randn_like(param))

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(GGUF_HIDDEN)
    writer.add_block_count(GGUF_LAYERS)
    writer.add_feed_forward_length(GGUF_INTERMEDIATE)
    writer.add_head_count(GGUF_HEADS)
    writer.add_head_count_kv(GGUF_KV_HEADS)
    writer.add_rope_dimension_count(GGUF_HIDDEN // GGUF_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in GGUF_SPECIALS else 1 for t in tokens])  # 3: control, 1: normal
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges(GGUF_MERGES)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_chat_template(PLAIN_CHAT_TEMPLATE)
    with torch.no_grad():
        for name, param in model.state_dict().items():
            if tied and name == "lm_head.weight":
                continue
            weight = param.numpy().astype("float32")
            if ".q_proj." in name:
                weight = _rope_permute(weight, GGUF_HEADS)
            elif ".k_proj." in name:
                weight = _rope_permute(weight, GGUF_KV_HEADS)
            if name not in GGUF_QUANTIZED:
                writer.add_tensor(_gguf_name(name), weight)
                continue
            qtype = gguf.GGMLQuantizationType[GGUF_QUANTIZED[name]]
            packed = gguf.quants.quantize(weight, qtype)
            writer.add_tensor(_gguf_name(name), packed, raw_dtype=qtype)
            # Quantization blocks run along a row, so the row permutation commutes with it.
            unpacked = gguf.quants.dequantize(gguf.quants.quantize(param.numpy(), qtype), qtype)
            param.copy_(torch.from_numpy(unpacked))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


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
