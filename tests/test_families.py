"""Every supported family end to end, from a table (tests/families.py): a tiny model built from the
family's published config shape goes through lora -> merge_adapter -> onnx at each CPU precision
(fp32, int8, the int4 default) with its parity and KV-cache checks -> quantize -> evaluate on
PyTorch and on onnxruntime-genai, and through full fine-tuning; dora and qlora run for every
family, generate_adapter (with dora and qlora merged and exported) for llama, qwen2 and phi3.

A family is supported when its row passes here; docs/families.md lists the same rows.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

import slimops

from assets import CORPUS, quiet, tone_rows, write_jsonl
from families import FAMILIES, tiny_family

DOCS = Path(__file__).resolve().parents[1] / "docs" / "families.md"
ADAPTER_FAMILIES = ["llama", "qwen2", "phi3"]
# the modules `all-linear` must reach in each family (the fused and Conv1D ones are the cases to watch)
ADAPTED = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    write_jsonl(root / "tone.jsonl", tone_rows(48))
    write_jsonl(root / "text.jsonl", [{"text": text} for text in CORPUS])
    return {"root": root, "models": {}}


def model_of(world, family: str) -> Path:
    if family not in world["models"]:
        world["models"][family] = tiny_family(family, world["root"] / family)
    return world["models"][family]


def pipeline(world, family: str, folder: Path, targets: str, passes: str) -> Path:
    prompt = "<|im_start|>user\\n{phrase}<|im_end|>\\n<|im_start|>assistant\\n"
    root = world["root"]
    text = textwrap.dedent(f"""\
        name: family-{family}
        model: {{path: {model_of(world, family)}}}
        data:
          tone: {{files: {root / 'tone.jsonl'}, splits: {{train: "[:40]", eval: "[40:]"}}, prompt: "{prompt}", response: "{{tone}}"}}
          text: {{files: {root / 'text.jsonl'}, splits: {{train: "[:2]", eval: "[2:]"}}, text: text}}
        targets: {targets}
        engine: {{cache_dir: {root / 'cache'}, output_dir: out}}
        passes:
        """) + textwrap.indent(textwrap.dedent(passes).strip() + "\n", "  ")
    path = folder / "pipeline.yaml"
    path.write_text(text)
    return path


def adapted_modules(adapter: Path) -> set[str]:
    names = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
    return {name.rsplit(".", 1)[-1] for name in names}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_goes_through_every_cpu_pass(family, world, tmp_path):
    import onnx

    path = pipeline(world, family, tmp_path, "{cpu: cpu, int8: cpu-int8, laptop: cpu-int4}", """\
        ft: {type: lora, data: tone, max_steps: 2, batch_size: 4}
        full: {type: full, data: tone, max_steps: 2, batch_size: 4, inputs: [model]}
        merge: {type: merge_adapter, inputs: [ft]}
        eval_pt: {type: evaluate, data: text, metrics: [perplexity], inputs: [merge]}
        export: {type: onnx, inputs: [merge]}
        quant: {type: quantize, inputs: [export], targets: [cpu], method: rtn, bits: 4, block_size: 32, parity: {min_top1: 0.5}}
        eval_onnx: {type: evaluate, data: text, metrics: [perplexity], inputs: [export]}
        """)
    result = slimops.run(path, display=quiet())
    config = json.loads((Path(model_of(world, family)) / "config.json").read_text())
    tuned = json.loads((Path(result["full"].path) / "config.json").read_text())
    assert tuned["model_type"] == config["model_type"] and result["full"].metrics["steps"] == 2
    if family in ADAPTED:
        assert ADAPTED[family] <= adapted_modules(Path(result["ft"].path))
    reference = result["eval_pt"].metrics["after"]["perplexity"]
    for target in ("cpu", "int8", "laptop"):
        export = result[f"export@{target}"]
        metrics = export.metrics
        assert metrics["parity_top1"] >= 0.8, (target, metrics)
        assert metrics.get("parity_kv_agreement", 1.0) >= 0.9, (target, metrics)
        onnx_ppl = result[f"eval_onnx@{target}"].metrics["after"]["perplexity"]
        assert onnx_ppl == pytest.approx(reference, rel=0.1 if target == "cpu" else 0.5), target
    assert result["export@cpu"].metrics["parity_max_logit_diff"] < 1e-2  # fp32: the same model
    graph = onnx.load(str(Path(result["export@laptop"].path) / "model.onnx"), load_external_data=False).graph
    assert any(node.op_type == "MatMulNBits" for node in graph.node)
    assert "parity_top1" in result["quant@cpu"].metrics


@pytest.mark.parametrize("family", ADAPTER_FAMILIES)
def test_family_takes_every_adapter_method_and_serves_them_from_one_base(family, world, tmp_path):
    ft = "data: tone, max_steps: 2, batch_size: 4"
    path = pipeline(world, family, tmp_path, "{cpu: cpu, laptop: cpu-int4}", f"""\
        tone: {{type: lora, {ft}}}
        legal: {{type: lora, {ft}, inputs: [model], r: 4, seed: 1}}
        dora: {{type: dora, {ft}, inputs: [model]}}
        qlora: {{type: qlora, {ft}, inputs: [model]}}
        merge_dora: {{type: merge_adapter, inputs: [dora]}}
        export_dora: {{type: onnx, inputs: [merge_dora], targets: [cpu]}}
        merge_qlora: {{type: merge_adapter, inputs: [qlora]}}
        serve: {{type: generate_adapter, inputs: [tone, legal]}}
        """)
    result = slimops.run(path, display=quiet())
    assert json.loads((Path(result["dora"].path) / "adapter_config.json").read_text())["use_dora"] is True
    assert result["export_dora@cpu"].metrics["parity_top1"] >= 0.8
    assert (Path(result["merge_qlora"].path) / "config.json").exists()
    for target in ("cpu", "laptop"):
        serve = result[f"serve@{target}"]
        assert set(serve.meta["adapters"]) == {"tone", "legal"}
        for suffix in ("", "_tone", "_legal"):  # the base alone, then each adapter against PEFT
            assert serve.metrics[f"parity_top1{suffix}"] >= 0.8, (target, suffix, serve.metrics)


def test_multi_adapter_serving_of_a_family_the_builder_lacks_says_what_to_do_instead(world, tmp_path):
    path = pipeline(world, "gpt2", tmp_path, "{cpu: cpu}", """\
        tone: {type: lora, data: tone, max_steps: 2, batch_size: 4}
        serve: {type: generate_adapter}
        """)
    with pytest.raises(slimops.PassError, match="does not build GPT2LMHeadModel; merge each adapter"):
        slimops.run(path, display=quiet())


def test_an_adapter_affine_int4_cannot_carry_falls_back_to_the_merged_weights_on_its_own(world, tmp_path):
    """A LoRA on lm_head has no MatMul the int4 base keeps in float: the merged model is quantized
    instead, with a warning, rather than a failure that asks the user to set an option."""
    path = pipeline(world, "llama", tmp_path, "{laptop: cpu-int4}", """\
        ft: {type: lora, data: tone, max_steps: 2, batch_size: 4, target_modules: [q_proj, lm_head]}
        merge: {type: merge_adapter}
        export: {type: onnx}
        """)
    export = slimops.run(path, display=quiet())["export@laptop"]
    log = (world["root"] / "cache" / "entries" / export.key / "log.txt").read_text()
    assert "WARNING affine int4 cannot carry the adapter beside the base" in log
    assert export.meta["quantization"]["lora_side_paths"] == 0
    assert export.metrics["parity_top1"] >= 0.8


def test_a_sliding_window_no_shorter_than_the_context_exports_and_decodes(world, tmp_path):
    """Gemma 2's window of 4096 in a context of 128: the builder's ring buffer could not hold the window
    (onnxruntime refused it: 'KV cache capacity (0) must be at least local_window_size (4096)')."""
    world["models"]["gemma2-short"] = tiny_family("gemma2", world["root"] / "gemma2-short", max_position_embeddings=128)
    path = pipeline(world, "gemma2-short", tmp_path, "{cpu: cpu}", "export: {type: onnx}")
    export = slimops.run(path, display=quiet())["export@cpu"]
    assert "sliding_window" not in json.loads((Path(export.path) / "genai_config.json").read_text())["model"]["decoder"]
    assert export.metrics["parity_top1"] == 1.0 and export.metrics["parity_kv_agreement"] == 1.0


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - set(ADAPTER_FAMILIES)))
def test_the_other_families_take_dora_and_qlora(family, world, tmp_path):
    ft = "data: tone, max_steps: 2, batch_size: 4"
    path = pipeline(world, family, tmp_path, "{cpu: cpu}", f"""\
        dora: {{type: dora, {ft}}}
        qlora: {{type: qlora, {ft}, inputs: [model]}}
        merge: {{type: merge_adapter, inputs: [qlora]}}
        export: {{type: onnx, inputs: [merge]}}
        """)
    result = slimops.run(path, display=quiet())
    assert json.loads((Path(result["dora"].path) / "adapter_config.json").read_text())["use_dora"] is True
    assert result["qlora"].metrics["steps"] == 2
    assert result["export@cpu"].metrics["parity_top1"] >= 0.8


def test_the_docs_and_the_planner_list_the_families_the_table_tests():
    from slimops.families import FAMILIES as KNOWN

    rows = re.findall(r"^\| `(\w+)` \|", DOCS.read_text(), flags=re.M)
    assert sorted(rows) == sorted(FAMILIES), "docs/families.md and tests/families.py list different families"
    assert sorted(KNOWN) == sorted(FAMILIES), "slimops.families and tests/families.py list different families"


# -- a model outside the table ---------------------------------------------------------------------------------


def plan_of(tmp_path: Path, model: Path) -> "slimops.Plan":
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"name: other\nmodel: {{path: {model}}}\npasses:\n  export: {{type: onnx}}\n"
                    f"engine: {{cache_dir: {tmp_path / 'cache'}, output_dir: out}}\n")
    return slimops.plan(path)


def test_a_model_no_pass_can_serve_is_a_plan_error_naming_the_families(tmp_path):
    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}))
    with pytest.raises(slimops.PlanError) as caught:
        plan_of(tmp_path, folder)
    message = str(caught.value)
    assert "'t5' (T5ForConditionalGeneration)" in message and "neither a causal language model nor an encoder" in message
    assert all(name in message for name in FAMILIES), message


def test_a_causal_lm_of_another_family_plans_with_a_warning(tmp_path):
    folder = tmp_path / "olmo"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "olmo", "architectures": ["OlmoForCausalLM"]}))
    warnings = plan_of(tmp_path, folder).warnings
    assert any("'olmo'" in w and "not among the families slimops is tested on" in w for w in warnings), warnings


def test_a_gguf_of_another_architecture_plans_with_a_warning_and_a_tested_one_without(tmp_path):
    from assets import write_tiny_gguf

    import gguf

    other = tmp_path / "falcon.gguf"
    writer = gguf.GGUFWriter(str(other), "falcon")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert any("'falcon'" in w for w in plan_of(tmp_path, other).warnings)
    tested = tmp_path / "qwen3.gguf"
    write_tiny_gguf(tested, "qwen3")
    assert not [w for w in plan_of(tmp_path, tested).warnings if "families" in w]
