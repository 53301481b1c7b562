"""The `from_gguf` conversion on tiny GGUFs of each family transformers reads (tests/assets.py writes them),
so no real model is needed.

Each file is written the way llama.cpp's converter writes one: its names, Q and K rows permuted for
its rope layout where it permutes them, gemma's norms stored as `1 + w`, GPT-2's Conv1D weights
transposed, the rope scaling as the extra tensors it derives, one tensor in Q8_0 and one in Q4_1 (the
rest F32), and a byte-level BPE vocabulary with merges, control tokens and a chat template. The HF model
it was written from, with the quantized weights replaced by their dequantized values, is the reference
the converted folder must match.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slimops
from slimops.display import RunDisplay
from slimops.errors import ModelError

import torch  # noqa: E402

from assets import GGUF_FAMILIES, PLAIN_CHAT_TEMPLATE, write_tiny_gguf, write_tiny_llama_gguf
from families import FAMILIES

IDS = [[262, 256, 258, 260, 72, 259, 263, 3]]  # specials, merged tokens and single bytes


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
    # The model the file was written from: the Q/K rows are back in HF order, the Q8_0/Q4_1 weights unpacked and
    # the llama3 rope scaling rebuilt from `rope_freqs` (transformers alone drops it, so its own load differs).
    torch.testing.assert_close(logits(converted), logits(reference), rtol=0, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    direct_tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    text = "<|im_start|>the cat sat on the hat<|im_end|>"
    assert tokenizer(text)["input_ids"] == direct_tokenizer(text)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("the cat")["input_ids"]) == ["t", "he", "Ġ", "cat"]
    assert tokenizer.chat_template == PLAIN_CHAT_TEMPLATE
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == tokenizer.eos_token, "a GGUF without a pad token pads with EOS"



def test_untied_gguf_keeps_its_own_lm_head(tmp_path):
    """A file with an `output.weight` converts to an untied model that stores `lm_head` itself."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from slimops.passes.from_gguf import save_gguf_as_hf

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


# -- every family transformers reads from GGUF ------------------------------------------------------------------

def convert_family(folder: Path, family: str, tied: bool | None = None):
    """(the converted folder, the reference model) for a tiny `family` GGUF converted by `save_gguf_as_hf`."""
    from slimops.passes.from_gguf import save_gguf_as_hf

    source = folder / f"tiny-{family}.gguf"
    reference = write_tiny_gguf(source, family, tied)
    save_gguf_as_hf(source, folder / "hf")
    return folder / "hf", reference


def assert_matches_reference(folder: Path, family: str, reference) -> None:
    """The folder loads without the GGUF as the family's class, ties as the reference does, and computes its logits."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(converted).__name__ == FAMILIES[family][1]
    assert converted.config.model_type == reference.config.model_type
    tied = reference.config.tie_word_embeddings
    assert converted.config.tie_word_embeddings is tied
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert ("lm_head.weight" in weights.keys()) is not tied, "a tied model stores lm_head once, as the embedding"
    torch.testing.assert_close(logits(converted), logits(reference), rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", sorted(GGUF_FAMILIES))
def test_each_gguf_family_converts_to_its_own_class_with_the_same_logits(tmp_path, family):
    """Class, tie, weights (renamed, un-permuted, un-offset, un-transposed, dequantized) and what transformers'
    reader drops: llama3 rope (`rope_freqs`), phi3 longrope factors, qwen3's head_dim, gemma's soft-caps, attention
    scale and gemma3's linear rope scaling, GPT-2's n_positions, and a Mistral that llama.cpp writes as a llama."""
    from transformers import AutoTokenizer

    folder, reference = convert_family(tmp_path, family)
    assert_matches_reference(folder, family, reference)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.convert_ids_to_tokens(tokenizer("the cat")["input_ids"]) == ["t", "he", "Ġ", "cat"]
    assert tokenizer("<|im_start|>hi<|im_end|>")["input_ids"][::3] == [reference.config.bos_token_id, reference.config.eos_token_id]
    assert tokenizer.chat_template == PLAIN_CHAT_TEMPLATE
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n"


@pytest.mark.parametrize("family, tied", [("qwen2", False), ("qwen3", False), ("phi3", True), ("mistral", True), ("gpt2", False)])
def test_a_family_converts_with_the_other_tie(tmp_path, family, tied):
    """A file's tie comes from whether it has `output.weight`, not from the family's usual choice (gemma has
    no `output.weight` in llama.cpp: always tied; transformers' GPT-2 reader takes `output.weight` aside)."""
    folder, reference = convert_family(tmp_path, family, tied)
    assert reference.config.tie_word_embeddings is tied
    assert_matches_reference(folder, family, reference)


def test_a_pipeline_converts_a_gemma3_gguf(project, tmp_path):
    """The planner's `model.from_gguf` on a non-llama family: the folder it leaves is the reference Gemma 3."""
    source = tmp_path / "tiny-gemma3.gguf"
    reference = write_tiny_gguf(source, "gemma3")
    result = slimops.run(gguf_pipeline(project, str(source)), display=RunDisplay(quiet=True))
    folder = Path(result["model.from_gguf"].path)
    assert_matches_reference(folder, "gemma3", reference)
    config = json.loads((folder / "config.json").read_text())
    assert config["sliding_window"] == 4 and config["layer_types"][-1] == "full_attention"
    assert config["rope_parameters"]["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}


def test_rope_freqs_that_no_llama3_scaling_gives_is_a_model_error(tmp_path, monkeypatch):
    """Other divisors than Llama 3's constants give: transformers has no rope type for them, so the run stops."""
    from slimops.passes.from_gguf import save_gguf_as_hf

    rope = dict(FAMILIES["llama"][2]["rope_parameters"], high_freq_factor=2.0)
    monkeypatch.setitem(GGUF_FAMILIES, "llama", ("llama", {"rope_parameters": rope}))
    source = tmp_path / "odd-rope.gguf"
    write_tiny_gguf(source, "llama")
    with pytest.raises(ModelError, match="rope_freqs tensor is not llama3 rope scaling") as caught:
        save_gguf_as_hf(source, tmp_path / "hf")
    assert str(source) in str(caught.value)
