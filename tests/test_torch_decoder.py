"""GPT-2, which the onnxruntime-genai model builder does not build, exported through torch.onnx with a
KV cache (passes/_onnx/torch_decoder.py) as an onnx-model, and what reads it: parity (with its KV
check), quantize and evaluate; and a LoRA merged into GPT-2's Conv1D layers, exported the same way.

The tiny GPT-2 of tests/families.py (hidden 64, 2 layers, 4 heads) is fit to CORPUS for a few
seconds, so that its predictions are confident and parity measures the export rather than noise.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

import slimops
from slimops.plugin import Artifact

from assets import CORPUS, PLAIN_CHAT_TEMPLATE, quiet, tone_rows, write_jsonl
from families import tiny_family

# prompt -> the word after it in CORPUS: the tiny GPT-2 gets the first three right and the last two wrong
QA = [("def add(a,", "b):"), ("Once upon a time there was a small cat that sat on the", "mat."),
      ("one two three four five six seven eight", "nine"), ("The capital of France is", "Paris,"), ("Once upon a time there was a", "small")]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2-assets")
    write_jsonl(root / "qa.jsonl", [{"q": "unused", "a": "x"}] + [{"q": q, "a": a} for q, a in QA])
    write_jsonl(root / "tone.jsonl", tone_rows(48))
    return {"root": root, "gpt2": tiny_family("gpt2", root / "gpt2"), "cache": root / "cache"}


def write(folder: Path, assets, passes: str, targets: str = "{cpu: cpu, laptop: cpu-int4}") -> Path:
    root = assets["root"]
    head = f"""\
        name: gpt2
        model: {{path: {assets['gpt2']}}}
        data:
          qa: {{files: {root / 'qa.jsonl'}, splits: {{train: "[:1]", eval: "[1:]"}}, prompt: "{{q}}", response: " {{a}}"}}
          tone: {{files: {root / 'tone.jsonl'}, splits: {{train: "[:40]", eval: "[40:]"}}, prompt: "<|im_start|>user\\n{{phrase}}<|im_end|>\\n<|im_start|>assistant\\n", response: "{{tone}}"}}
        targets: {targets}
        engine: {{cache_dir: {assets['cache']}, output_dir: out}}
        passes:
        """
    path = folder / "pipeline.yaml"
    path.write_text(textwrap.dedent(head) + textwrap.indent(textwrap.dedent(passes).strip() + "\n", "  "))
    return path


@pytest.fixture(scope="module")
def run(assets, tmp_path_factory):
    """One run: GPT-2 exported for a CPU (fp32) and for cpu-int4; the fp32 export quantized (rtn) and evaluated."""
    path = write(tmp_path_factory.mktemp("gpt2-run"), assets, """\
        export: {type: onnx}
        quant: {type: quantize, method: rtn, bits: 4, inputs: [export], targets: [cpu]}
        eval: {type: evaluate, data: qa, metrics: [perplexity, accuracy], max_new_tokens: 4, inputs: [export], targets: [cpu]}
        """)
    return slimops.run(path, display=quiet())


def op_types(folder: Path) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node]


def test_the_builders_architectures_come_from_its_own_source():
    from slimops.passes._onnx.builder import builder_architectures, builder_refusal

    assert {"LlamaForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM"} <= builder_architectures()
    assert builder_refusal({"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "num_attention_heads": 9}) is None
    assert "does not build GPT2LMHeadModel" in builder_refusal({"architectures": ["GPT2LMHeadModel"]})
    # GroupQueryAttention takes heads of a multiple of 16 only, read from head_dim or hidden / heads
    assert "heads are 8 wide" in builder_refusal({"architectures": ["LlamaForCausalLM"], "hidden_size": 32, "num_attention_heads": 4})
    assert "heads are 24 wide" in builder_refusal({"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
                                                   "head_dim": 24})


def test_a_llama_with_narrow_heads_exports_through_torch_onnx(assets, tmp_path):
    from assets import tiny_llama

    llama = tiny_llama(tmp_path / "llama")  # hidden 32 over 4 heads: 8 wide, which GroupQueryAttention refuses
    path = write(tmp_path, {**assets, "gpt2": llama}, "export: {type: onnx}", targets="{cpu: cpu}")
    export = slimops.run(path, display=quiet())["export@cpu"]
    assert export.kind == "onnx-model" and export.meta["kv_cache"]["head_dim"] == 8
    assert export.metrics["parity_top1"] == 1.0 and export.metrics["parity_kv_agreement"] == 1.0


def test_gpt2_exports_through_torch_onnx_as_an_onnx_model_that_matches_pytorch(run):
    fp32 = run["export@cpu"]
    folder = Path(fp32.path)
    assert fp32.kind == "onnx-model"
    assert {"model.onnx", "model.onnx.data", "config.json", "generation_config.json", "tokenizer.json",
            "chat_template.jinja"} <= {p.name for p in folder.iterdir()}
    assert (folder / "model.onnx").stat().st_size < 200_000  # the weights are in model.onnx.data
    assert fp32.meta["precision"] == "fp32" and fp32.meta["task"] == "text-generation"
    assert fp32.meta["chat_template"] == PLAIN_CHAT_TEMPLATE
    assert fp32.meta["kv_cache"] == {"layers": 2, "kv_heads": 4, "head_dim": 16}
    assert fp32.meta["inputs"][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert fp32.metrics["parity_top1"] == 1.0
    assert fp32.metrics["parity_agreement"] == 1.0
    assert fp32.metrics["parity_max_logit_diff"] < 1e-3
    assert fp32.metrics["parity_kv_agreement"] == 1.0  # the graph's own past/present, fed back by onnxruntime
    assert fp32.meta["parity"]["kv_exact_agreement"] == 1.0
    # Conv1D's addmm became plain MatMuls over constant weights, which the quantizers look for
    assert "Gemm" not in op_types(folder)


def test_logits_with_the_kv_cache_equal_logits_without_it(run, assets):
    import onnxruntime
    import torch
    from transformers import AutoModelForCausalLM

    from slimops.passes._runtime.ort import OnnxRunner

    folder = Path(run["export@cpu"].path)
    runner = OnnxRunner(folder / "model.onnx", folder, ["CPUExecutionProvider"], folder)
    ids = runner.encode(CORPUS[2])
    whole = runner.logits(ids)  # one pass from an empty cache
    rows = [runner.start(ids[:4])]
    rows += [runner.step(token) for token in ids[4:]]
    cached = np.stack([np.asarray(row) for row in rows])
    assert np.abs(cached - whole[3:]).max() < 1e-4
    reference = AutoModelForCausalLM.from_pretrained(assets["gpt2"]).eval()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(whole - expected).max() < 1e-4

    # batch, sequence and past are dynamic: two rows, one left-padded, as transformers computes them
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    past = {i.name: np.zeros((2, 4, 0, 16), np.float32) for i in session.get_inputs() if i.name.startswith("past_key_values")}
    assert session.get_inputs()[3].shape[0] == "batch" and isinstance(session.get_inputs()[3].shape[2], str)
    batch = np.array([[0, 0] + ids[:5], ids[:7]])
    mask = np.array([[0, 0] + [1] * 5, [1] * 7])
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    logits = session.run(["logits"], {"input_ids": batch, "attention_mask": mask, "position_ids": positions, **past})[0]
    with torch.no_grad():
        padded = reference(input_ids=torch.tensor(batch), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions)).logits
    assert np.abs(logits[:, 2:] - padded[:, 2:].numpy()).max() < 1e-4


def test_an_int4_target_gets_matmulnbits_within_thresholds(run):
    int4 = run["export@laptop"]
    assert int4.kind == "onnx-model" and int4.meta["precision"] == "int4"
    assert int4.meta["quantization"]["method"] == "affine"  # the CPU default: lm_head int8, shared with the embedding
    assert int4.meta["quantization"]["matmuls_int4"] == 8 and int4.meta["quantization"]["shared_embedding"]
    assert "MatMulNBits" in op_types(Path(int4.path))
    assert int4.metrics["parity_top1"] >= 0.9
    assert int4.metrics["parity_kv_agreement"] >= 0.9
    assert int4.metrics["size_mb"] < run["export@cpu"].metrics["size_mb"]


def test_quantize_takes_the_fp32_export_to_rtn_int4(run):
    quant = run["quant@cpu"]
    assert quant.kind == "onnx-model" and quant.meta["precision"] == "int4"
    assert quant.meta["quantization"]["method"] == "rtn"
    ops = op_types(Path(quant.path))
    assert ops.count("MatMulNBits") == 9  # 4 linear layers in each of 2 blocks, and the lm_head
    assert "tokenizer.json" in {p.name for p in Path(quant.path).iterdir()}
    assert quant.metrics["parity_top1"] >= 0.8
    assert "parity_kv_agreement" in quant.metrics


def test_evaluate_reads_the_export_as_pytorch_does(run):
    before, after = run["eval@cpu"].metrics["before"], run["eval@cpu"].metrics["after"]
    assert after["perplexity"] == pytest.approx(before["perplexity"], rel=1e-4)
    assert after["accuracy"] == before["accuracy"] == pytest.approx(0.6)  # generated through the KV cache


def test_a_cache_wired_wrong_fails_the_kv_check(run, assets, tmp_path):
    import onnx

    from slimops.passes.parity import ParityError, ParityParams, check
    from slimops.targets import builtin

    broken = tmp_path / "broken"
    shutil.copytree(run["export@cpu"].path, broken)
    model = onnx.load(str(broken / "model.onnx"), load_external_data=False)
    swap = {"past_key_values.0.key": "past_key_values.0.value", "past_key_values.0.value": "past_key_values.0.key"}
    for node in model.graph.node:  # layer 0 reads its past keys as values and its past values as keys
        node.input[:] = [swap.get(name, name) for name in node.input]
    onnx.save(model, str(broken / "model.onnx"))  # same shapes: the first, uncached, step is still right
    with pytest.raises(ParityError, match="KV-cache check failed: onnxruntime, feeding the graph's present") as failed:
        check(Artifact(assets["gpt2"], "hf-model"), Artifact(broken, "onnx-model"), ParityParams(), builtin("cpu"), "fp32")
    assert "top-1" not in str(failed.value)  # recomputed without a cache, the model is still right


def test_a_lora_on_gpt2s_conv1d_merges_and_exports(assets, tmp_path):
    path = write(tmp_path, assets, """\
        ft: {type: lora, data: tone, max_steps: 2, batch_size: 4, target_modules: [c_attn, c_proj]}
        merge: {type: merge_adapter}
        export: {type: onnx, inputs: [merge]}
        """, targets="{cpu: cpu}")
    result = slimops.run(path, display=quiet())
    export = result["export@cpu"]
    assert json.loads((Path(result["ft"].path) / "adapter_config.json").read_text())["target_modules"] in (
        ["c_attn", "c_proj"], ["c_proj", "c_attn"])
    assert export.kind == "onnx-model" and export.meta["merged_from"]
    assert export.metrics["parity_top1"] == 1.0 and export.metrics["parity_kv_agreement"] == 1.0
