"""The `from_gguf` conversion on a tiny llama GGUF written here, so no real model is needed.

The file is written the way llama.cpp's converter writes one: Q and K rows permuted for its rope
layout, one tensor in Q8_0 and one in Q4_1 (the rest F32), and a byte-level BPE vocabulary with
merges, control tokens and a chat template. The HF model it was written from, with the quantized
weights replaced by their dequantized values, is the reference the converted folder must match.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slimops
from slimops.display import RunDisplay
from slimops.errors import ModelError

import gguf  # noqa: E402
import torch  # noqa: E402

LAYERS, HIDDEN, HEADS, KV_HEADS, INTERMEDIATE = 2, 64, 4, 2, 128
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "Ġ t", "Ġt he", "a t", "c at"]
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
QUANTIZED = {  # HF name -> the ggml type it is stored in
    "model.layers.0.self_attn.q_proj.weight": gguf.GGMLQuantizationType.Q8_0,
    "model.layers.1.mlp.up_proj.weight": gguf.GGMLQuantizationType.Q4_1,
}
IDS = [[262, 256, 258, 260, 72, 259, 263, 3]]  # specials, merged tokens and single bytes


def byte_level_vocab() -> list[str]:
    """The 256 byte symbols in byte order, the merged tokens, then the special tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    return [spelling[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES] + SPECIALS


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
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = byte_level_vocab()
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128, rms_norm_eps=1e-5,
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
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control, 1: normal
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_chat_template(CHAT_TEMPLATE)
    with torch.no_grad():
        for name, param in model.state_dict().items():
            if tied and name == "lm_head.weight":
                continue
            weight = param.numpy().astype("float32")
            if ".q_proj." in name:
                weight = _rope_permute(weight, HEADS)
            elif ".k_proj." in name:
                weight = _rope_permute(weight, KV_HEADS)
            qtype = QUANTIZED.get(name)
            if qtype is None:
                writer.add_tensor(_gguf_name(name), weight)
                continue
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


READER_PLUGIN = (
    "from slimops.passes.fake import Fake\n"
    "class ReadsHf(Fake):\n"
    "    name = 'reads_hf'\n"
    "    consumes = ('hf-model',)\n"
)


def gguf_pipeline(project, model: str) -> Path:
    """A pipeline whose one pass reads an HF model, so the planner inserts `model.from_gguf`."""
    (project.root / "convert_plugin.py").write_text(READER_PLUGIN)
    return project.write(
        f"""
        name: gguf
        model: {model}
        passes:
          read: {{type: "convert_plugin:ReadsHf"}}
        """
    )


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(path of the tiny tied GGUF, the HF model it describes)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama-q8.gguf"
    return path, write_tiny_llama_gguf(path)


def logits(model):
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits


def test_run_converts_gguf_into_a_folder_that_loads_without_it(project, tiny_gguf):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, reference = tiny_gguf
    result = slimops.run(gguf_pipeline(project, str(source)), display=RunDisplay(quiet=True))
    assert list(result.nodes) == ["model", "model.from_gguf", "read"]
    folder = Path(result["model.from_gguf"].path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "quantization_config" not in config
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" not in weights.keys(), "tied embeddings are stored once"

    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    direct = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(converted), logits(direct), rtol=0, atol=1e-5)
    # The model the file was written from: the Q/K rows are back in HF order and the Q8_0/Q4_1 weights unpacked.
    torch.testing.assert_close(logits(converted), logits(reference), rtol=0, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    direct_tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    text = "<|im_start|>the cat sat on the hat<|im_end|>"
    assert tokenizer(text)["input_ids"] == direct_tokenizer(text)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("the cat")["input_ids"]) == ["t", "he", "Ġ", "cat"]
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == tokenizer.eos_token, "a GGUF without a pad token pads with EOS"



def test_untied_gguf_keeps_its_own_lm_head(tmp_path):
    """A file with an `output.weight` converts to an untied model that stores `lm_head` itself."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from slimops.passes.convert import save_gguf_as_hf

    source = tmp_path / "untied.gguf"
    reference = write_tiny_llama_gguf(source, tied=False)
    save_gguf_as_hf(source, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tie_word_embeddings"] is False
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" in weights.keys()
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    torch.testing.assert_close(logits(converted), logits(reference), rtol=0, atol=1e-5)

@pytest.mark.parametrize("keep", [100, 0.5], ids=["cut-in-metadata", "cut-in-tensor-data"])
def test_truncated_gguf_is_a_model_error_that_names_the_file(project, cli, tiny_gguf, keep):
    """An interrupted download: the run stops at `model.from_gguf` with exit 2 and the file's path."""
    data = tiny_gguf[0].read_bytes()
    broken = project.root / "broken.gguf"
    broken.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    code, _, err = cli("run", "--quiet", "--config", gguf_pipeline(project, str(broken)))
    assert code == ModelError.exit_code, err
    assert "pass 'model.from_gguf' failed: transformers cannot read" in err and str(broken) in err
    assert "Traceback" not in err
