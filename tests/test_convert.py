"""The `from_gguf` conversion on a tiny llama GGUF (tests/assets.py writes it), so no real model is needed.

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

import torch  # noqa: E402

from assets import PLAIN_CHAT_TEMPLATE, write_tiny_llama_gguf

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
    direct = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(converted), logits(direct), rtol=0, atol=1e-5)
    # The model the file was written from: the Q/K rows are back in HF order and the Q8_0/Q4_1 weights unpacked.
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
