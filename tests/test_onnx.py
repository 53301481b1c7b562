"""ONNX passes on tiny models: export (builder and torch.onnx), every quantization method, the
optimizer, parity checks that pass and one that must fail, and what a missing provider does.

The tiny llama is trained for a few seconds on four sentences so that its next-token
predictions are confident, as a real model's are: parity on an untrained random model measures
noise. Its head size is 16 (GroupQueryAttention's minimum) and its vocabulary differs from every
hidden width (the builder finds lm_head by its output size). Builder runs are shared across
tests through one cache folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slimops
from slimops.errors import PassError, PlanError

import onnxruntime  # noqa: E402

from assets import CORPUS, PLAIN_CHAT_TEMPLATE, lora_adapter, quiet, run_broken_chain, tiny_bert_classifier, tiny_trained_llama, write_pipeline


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-assets")
    (root / "data.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in CORPUS))
    return {
        "root": root,
        "llama": tiny_trained_llama(root / "llama"),
        "bert": tiny_bert_classifier(root / "bert"),
        "cache": root / "cache",
    }


def op_types(model_file: Path) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load(str(model_file), load_external_data=False).graph.node]


# -- export -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(assets, tmp_path_factory):
    """One run: the llama exported at fp32 (for the quantizers) and at int4 by the builder."""
    folder = tmp_path_factory.mktemp("export")
    path = write_pipeline(folder, assets, """\
        targets: {cpu: cpu, laptop: cpu-int4}
        passes:
          export: {type: onnx}
        """)
    return slimops.run(path, display=quiet())


def test_decoder_export_is_a_genai_folder_that_matches_pytorch(exported):
    fp32 = exported["export@cpu"]
    folder = Path(fp32.path)
    assert fp32.kind == "genai-model"
    assert {"model.onnx", "genai_config.json", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in folder.iterdir()}
    assert fp32.meta["precision"] == "fp32"
    assert fp32.meta["chat_template"] == PLAIN_CHAT_TEMPLATE
    assert fp32.metrics["parity_top1"] == 1.0
    assert fp32.metrics["parity_agreement"] == 1.0
    assert fp32.metrics["parity_max_logit_diff"] < 1e-3
    assert fp32.meta["parity"]["providers"][0] == "CPUExecutionProvider"


def test_int4_target_gets_matmulnbits_within_thresholds(exported):
    int4 = exported["export@laptop"]
    assert int4.meta["precision"] == "int4"
    # affine by default on CPUs; block size and accuracy level from the cpu-int4 profile's settings
    assert int4.meta["quantization"]["method"] == "affine"
    assert (int4.meta["quantization"]["block_size"], int4.meta["quantization"]["accuracy_level"]) == (32, 4)
    assert "MatMulNBits" in op_types(Path(int4.path) / "model.onnx")
    assert int4.metrics["parity_top1"] >= 0.8
    assert int4.metrics["size_mb"] < exported["export@cpu"].metrics["size_mb"]


def genai_threads(folder) -> object:
    options = json.loads((Path(folder) / "genai_config.json").read_text())["model"]["decoder"].get("session_options", {})
    return options.get("intra_op_num_threads", "unset")


def test_cpu_exports_ask_for_every_core(exported, assets, tmp_path):
    # onnxruntime-genai's own default is one thread; cpu targets ask for one per physical core (0)
    assert genai_threads(exported["export@cpu"].path) == 0
    assert genai_threads(exported["export@laptop"].path) == 0
    path = write_pipeline(tmp_path, assets, """\
        targets: {box: {extends: cpu-int4, threads: 3}}
        passes:
          export: {type: onnx, int4_method: builder, parity: {enabled: false}}
        """)
    assert genai_threads(slimops.run(path, display=quiet())["export@box"].path) == 3


def test_genai_model_generates_with_onnxruntime_genai(exported):
    import onnxruntime_genai as og

    model = og.Model(exported["export@laptop"].path)
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=24, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode("Once upon a time"))
    while not generator.is_done():
        generator.generate_next_token()
    text = tokenizer.decode(generator.get_sequence(0))
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")


# -- quantize: one row per method -------------------------------------------------------------------------

METHODS = {
    # node: (params, op that must appear, min top-1)
    "rtn": ("method: rtn", "MatMulNBits", 0.8),
    "rtn_head8": ("method: rtn, keep_lm_head_int8: true", "MatMulNBits", 0.8),
    "hqq": ("method: hqq", "MatMulNBits", 0.8),
    "k_quant": ("method: k_quant", "MatMulNBits", 0.8),
    "gptq": ("method: gptq, calibration_data: calib", "MatMulNBits", 0.7),
    "int8": ("method: int8_dynamic", "MatMulInteger", 0.9),
    "qdq": ("method: qdq, calibration_data: calib", "QuantizeLinear", 0.9),
}


@pytest.fixture(scope="module")
def quantized(assets, tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantize")
    rows = "\n".join(f"  {name}: {{type: quantize, inputs: [export], {spec}}}" for name, (spec, _, _) in METHODS.items())
    path = write_pipeline(folder, assets, "targets: {cpu: cpu}\npasses:\n  export: {type: onnx}\n" + rows + "\n")
    return slimops.run(path, display=quiet())


@pytest.mark.parametrize("name", list(METHODS))
def test_quantize_method(quantized, name):
    _, op, min_top1 = METHODS[name]
    node = quantized[f"{name}@cpu"]
    folder = Path(node.path)
    assert node.kind == "genai-model" and (folder / "genai_config.json").exists()
    assert op in op_types(folder / "model.onnx")
    assert node.metrics["parity_top1"] >= min_top1
    assert node.metrics["size_mb"] < node.metrics["input_size_mb"]
    assert node.meta["parity"]["min_top1"] == {"int4": 0.8, "int8": 0.9}[node.meta["precision"]]


def test_an_int8_dynamic_target_gives_a_decoder_int8_weights_per_block(assets, tmp_path):
    """int8_dynamic scales activations per tensor, which a decoder's outlier features defeat: on cpu-int8 a decoder
    gets weight-only int8 at accuracy level 4 (the fast CPU kernel), from the builder or from `quantize`."""
    import onnx

    from slimops.passes.quantize import QuantizeParams, resolve_method
    from slimops.targets import builtin

    path = write_pipeline(tmp_path, assets, """\
        targets: {box: cpu-int8}
        passes:
          export: {type: onnx}
          fp32: {type: onnx, precision: fp32, inputs: [model]}
          q8: {type: quantize, inputs: [fp32]}
        """)
    result = slimops.run(path, display=quiet())
    for name in ("export@box", "q8@box"):
        node = result[name]
        assert node.meta["precision"] == "int8", name
        graph = onnx.load(str(Path(node.path) / "model.onnx"), load_external_data=False).graph
        nbits = [{a.name: a.i for a in n.attribute} for n in graph.node if n.op_type == "MatMulNBits"]
        assert nbits and all(n["bits"] == 8 and n["accuracy_level"] == 4 for n in nbits), name
        assert "MatMulInteger" not in {n.op_type for n in graph.node}
    assert result["q8@box"].meta["quantization"]["method"] == "rtn"
    # this llama's embedding is not tied to its lm_head: both keep their own weights (passes/_onnx/tied.py)
    assert result["export@box"].meta["shared_embedding"] is False
    assert result["q8@box"].meta["quantization"]["shared_embedding"] is False
    # an encoder (an onnx-model) on the same target still takes int8_dynamic, per output column
    assert resolve_method(QuantizeParams(), builtin("cpu-int8"), "onnx-model") == "int8_dynamic"


def test_lm_head_kept_at_int8(quantized):
    import onnx

    def head_bits(name):
        graph = onnx.load(str(Path(quantized[f"{name}@cpu"].path) / "model.onnx"), load_external_data=False).graph
        head = [n for n in graph.node if n.op_type == "MatMulNBits"][-1]
        return next(a.i for a in head.attribute if a.name == "bits")

    assert head_bits("rtn_head8") == 8
    assert head_bits("rtn") == 4


def test_quantize_refuses_an_already_quantized_model(assets, tmp_path):
    path = write_pipeline(tmp_path, assets, """\
        targets: {laptop: cpu-int4}
        passes:
          export: {type: onnx}
          quant: {type: quantize}
        """)
    with pytest.raises(PassError, match="already quantized .*precision: fp32"):
        slimops.run(path, display=quiet())


def test_gptq_without_data_is_a_config_error(assets, tmp_path):
    path = write_pipeline(tmp_path, assets, "passes:\n  quant: {type: quantize, method: gptq}\n")
    with pytest.raises(slimops.ConfigError, match="calibration_data"):
        slimops.load_config(path)
    path = write_pipeline(tmp_path, assets, "passes:\n  quant: {type: quantize, method: affine, bits: 8}\n")
    with pytest.raises(slimops.ConfigError, match="affine is int4 only"):
        slimops.load_config(path)


# -- parity that must fail ----------------------------------------------------------------------------------

CORRUPT = '''
import shutil
from pathlib import Path
import onnx
from onnx import numpy_helper
from slimops.plugin import Artifact, Pass
from slimops.passes._onnx.files import load_model


class Corrupt(Pass):
    """Copies a genai-model and shuffles the rows of its lm_head weight."""
    name = "corrupt"
    consumes = ("genai-model",)
    per_target = True

    def run(self, ctx):
        source = Path(ctx.input.path)
        for item in source.iterdir():
            if item.suffix != ".onnx" and not item.name.endswith(".onnx.data"):
                shutil.copy2(item, ctx.output_dir / item.name)
        model = load_model(source / "model.onnx")
        for tensor in model.graph.initializer:
            if tensor.name.startswith("lm_head"):
                array = numpy_helper.to_array(tensor)
                tensor.CopyFrom(numpy_helper.from_array(array[:, ::-1].copy(), tensor.name))
        onnx.save_model(model, str(ctx.output_dir / "model.onnx"))
        return Artifact(path=ctx.output_dir, kind="genai-model", meta={"precision": "fp32"})
'''


def test_corrupted_weights_fail_the_parity_check(assets, tmp_path, cli):
    path, code, out, err = run_broken_chain(tmp_path, assets, cli, "corrupt", CORRUPT, "Corrupt")
    assert code == 1
    assert "pass 'check@cpu' failed: parity check failed against the input model: top-1 agreement" in err
    assert "Traceback" not in err
    # the same chain without the corruption passes
    path.write_text(path.read_text().replace('  broken: {type: "corrupt:Corrupt"}\n', ""))
    code, out, err = cli("run", "--config", path, "--quiet")
    assert code == 0, err


def test_parity_threshold_is_configurable(assets, tmp_path):
    path = write_pipeline(tmp_path, assets, """\
        targets: {laptop: cpu-int4}
        passes:
          export: {type: onnx, parity: {max_logit_diff: 0.000001}}
        """)
    with pytest.raises(PassError, match=r"max logit difference .* > max_logit_diff 1e-06"):
        slimops.run(path, display=quiet())


# -- providers ------------------------------------------------------------------------------------------------


def test_an_export_for_a_qdq_target_without_quantize_is_a_plan_error(assets, tmp_path):
    """QDQ targets get their int8 from a calibrated `quantize`; an `onnx` alone would ship fp32 without a word."""
    path = write_pipeline(tmp_path, assets, "targets: {npu: npu-qdq}\npasses:\n  export: {type: onnx}\n")
    with pytest.raises(PlanError, match=r"pipeline.yaml:\d+ passes.export pass 'export' \(onnx\) on target 'npu': a QDQ target gets "
                                        r"its int8 from a `quantize` pass"):
        slimops.plan(path)
    path.write_text(path.read_text().replace("export: {type: onnx}", "export: {type: onnx, precision: fp32}"))
    slimops.plan(path)  # fp32 on purpose plans


def test_missing_provider_is_a_plan_error_only_for_passes_that_run_on_the_target(assets, tmp_path):
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    writes = write_pipeline(tmp_path, assets, "targets: {gpu: cuda-fp16}\npasses:\n  export: {type: onnx}\n")
    plan = slimops.plan(writes)
    assert "export@gpu" in plan.nodes
    runs = write_pipeline(tmp_path, assets, "targets: {gpu: cuda-fp16}\npasses:\n  export: {type: onnx}\n  check: {type: parity}\n")
    with pytest.raises(PlanError, match="must run the model on target 'gpu'.*CUDAExecutionProvider"):
        slimops.plan(runs)


def test_a_session_that_falls_back_to_cpu_is_refused_by_parity_and_by_evaluate(exported):
    from slimops.passes._runtime.ort import OnnxRunner, ParityError, open_session

    model = Path(exported["export@cpu"].path) / "model.onnx"
    assert open_session(model, ["CPUExecutionProvider"]).get_providers() == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ParityError, match="asked onnxruntime for CUDAExecutionProvider but the session runs on CPUExecutionProvider"):
        open_session(model, ["CUDAExecutionProvider"])
    with pytest.raises(ParityError, match="asked onnxruntime for CUDAExecutionProvider"):  # evaluate's ONNX runner
        OnnxRunner(model, model.parent, ["CUDAExecutionProvider"])


def test_cuda_export_writes_files_and_skips_parity_here(assets, tmp_path):
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    path = write_pipeline(tmp_path, assets, "targets: {gpu: cuda-fp16}\npasses:\n  export: {type: onnx}\n")
    node = slimops.run(path, display=quiet())["export@gpu"]
    config = json.loads((Path(node.path) / "genai_config.json").read_text())
    assert "cuda" in json.dumps(config["model"]["decoder"]["session_options"]["provider_options"])
    assert genai_threads(node.path) == "unset"  # threads are a CPU matter; the GPU runtime keeps its default
    assert node.meta["precision"] == "fp16"
    assert node.meta["parity"] == "skipped: this onnxruntime lacks CUDAExecutionProvider"
    strict = write_pipeline(tmp_path, assets, "targets: {gpu: cuda-fp16}\npasses:\n  export: {type: onnx, parity: {require_target: true}}\n")
    with pytest.raises(PassError, match="cannot check parity on the target"):
        slimops.run(strict, display=quiet())


# -- encoders ---------------------------------------------------------------------------------------------------


def test_encoder_exports_with_dynamic_axes_and_matches_pytorch(assets, tmp_path):
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    path = write_pipeline(tmp_path, assets, """\
        targets: {cpu: cpu}
        passes:
          export: {type: onnx}
          fused: {type: optimize}
          int8: {type: quantize, method: int8_dynamic}
        """)
    path.write_text(path.read_text().replace(str(assets["llama"]), str(assets["bert"])))
    result = slimops.run(path, display=quiet())
    export = result["export@cpu"]
    assert export.kind == "onnx-model" and export.meta["task"] == "text-classification"
    assert export.metrics["parity_top1"] == 1.0

    reference = AutoModelForSequenceClassification.from_pretrained(assets["bert"]).eval()
    ids = torch.randint(4, 40, (3, 11))  # a batch and length the export never saw
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
    session = onnxruntime.InferenceSession(str(Path(export.path) / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones((3, 11), np.int64), "token_type_ids": np.zeros((3, 11), np.int64)}
    got = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})[0]
    assert np.abs(got - expected).max() < 1e-4

    fused = result["fused@cpu"]
    assert fused.metrics["fused_ops"] > 0 and "SkipLayerNormalization" in op_types(Path(fused.path) / "model.onnx")
    assert fused.metrics["parity_top1"] == 1.0
    assert "MatMulInteger" in op_types(Path(result["int8@cpu"].path) / "model.onnx")


def test_an_encoders_vectors_are_checked_by_cosine_similarity(assets, tmp_path):
    """The argmax of a hidden vector means nothing: an embedding model's parity is the cosine of its vectors."""
    import onnx
    from onnx import numpy_helper

    from slimops.passes.parity import ParityError, ParityParams, check
    from slimops.plugin import Artifact
    from slimops.targets import builtin

    from assets import tiny_bert

    encoder = tiny_bert(tmp_path / "encoder")
    path = write_pipeline(tmp_path, assets, """\
        targets: {cpu: cpu}
        passes:
          export: {type: onnx}
          int8: {type: quantize, method: int8_dynamic}
        """)
    path.write_text(path.read_text().replace(str(assets["llama"]), str(encoder)))
    result = slimops.run(path, display=quiet())
    export, int8 = result["export@cpu"], result["int8@cpu"]
    assert export.meta["task"] == "feature-extraction"
    assert export.metrics["parity_cosine_min"] > 0.9999 and "parity_top1" not in export.metrics
    assert int8.meta["parity"]["min_cosine"] == 0.98 and "min_top1" not in int8.meta["parity"]
    assert int8.metrics["parity_cosine"] >= 0.98
    model = onnx.load(str(Path(int8.path) / "model.onnx"))
    sizes = {t.name: numpy_helper.to_array(t).size for t in model.graph.initializer}
    weight_zero_points = [sizes[n.input[3]] for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert weight_zero_points and all(size > 1 for size in weight_zero_points)  # per output column, not one per tensor

    # the same export with its word embeddings reversed (a random model's layers barely move the residual stream,
    # so a broken layer would not show) fails on cosine, with advice for an encoder
    broken = onnx.load(str(Path(export.path) / "model.onnx"))
    weight = next(t for t in broken.graph.initializer if t.name.endswith("word_embeddings.weight"))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight)[::-1].copy(), weight.name))
    (tmp_path / "broken").mkdir()
    onnx.save_model(broken, str(tmp_path / "broken" / "model.onnx"))
    with pytest.raises(ParityError, match=r"mean cosine similarity 0\.\d+ < min_cosine 0\.999 .*a higher precision"):
        check(Artifact(encoder, "hf-model"), Artifact(tmp_path / "broken", "onnx-model"), ParityParams(), builtin("cpu"), "fp32")


def test_optimize_refuses_builder_output(assets, tmp_path, exported):
    path = write_pipeline(tmp_path, assets, "targets: {cpu: cpu}\npasses:\n  export: {type: onnx}\n  fused: {type: optimize}\n")
    with pytest.raises(PassError, match="already fuses it"):
        slimops.run(path, display=quiet())


# -- multi-adapter ------------------------------------------------------------------------------------------------


def test_generate_adapter_makes_one_base_and_an_adapter_file_each(assets, tmp_path):
    import onnxruntime_genai as og

    lora_adapter(assets["llama"], tmp_path / "tone", rank=8, seed=1)
    lora_adapter(assets["llama"], tmp_path / "legal", rank=4, seed=2)  # another rank: the rank axis is symbolic
    path = write_pipeline(tmp_path, assets, """\
        targets: {cpu: cpu}
        passes:
          multi: {type: generate_adapter, adapters: {tone: tone, legal: legal}}
        """)
    node = slimops.run(path, display=quiet())["multi@cpu"]
    folder = Path(node.path)
    assert node.meta["adapters"] == {"tone": "adapters/tone.onnx_adapter", "legal": "adapters/legal.onnx_adapter"}
    assert genai_threads(folder) == 0  # a cpu target's multi-adapter model asks for every core too
    for suffix in ("", "_tone", "_legal"):  # the base alone, then each adapter against PEFT
        assert node.metrics[f"parity_top1{suffix}"] == 1.0
        assert node.metrics[f"parity_max_logit_diff{suffix}"] < 1e-3

    model = og.Model(str(folder))
    adapters = og.Adapters(model)
    for name in ("tone", "legal"):
        adapters.load(str(folder / node.meta["adapters"][name]), name)

    def last_logits(active):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=32)
        generator = og.Generator(model, params)
        if active:
            generator.set_active_adapter(adapters, active)
        generator.append_tokens([40, 41, 42])
        return generator.get_output("logits")[0, -1]

    base, tone, legal = last_logits(None), last_logits("tone"), last_logits("legal")
    assert abs(base - tone).max() > 1e-2 and abs(tone - legal).max() > 1e-2


def test_an_int4_cpu_base_is_affine_with_float_lora_branches(assets, tmp_path):
    """On a CPU int4 target the shared base is affine int4 (rtn's grid put SmolLM2 at parity 0.5); the LoRA
    branches still read the adapter's weights in float, so each adapter keeps parity with PEFT."""
    import onnx

    lora_adapter(assets["llama"], tmp_path / "tone", rank=8, seed=1)
    path = write_pipeline(tmp_path, assets, """\
        targets: {laptop: cpu-int4}
        passes:
          multi: {type: generate_adapter, adapters: {tone: tone}}
        """)
    node = slimops.run(path, display=quiet())["multi@laptop"]
    graph = onnx.load(str(Path(node.path) / "model.onnx"), load_external_data=False).graph
    nodes = list(graph.node)
    assert node.meta["precision"] == "int4"
    assert any(n.op_type == "MatMulNBits" for n in nodes) and any(n.name.endswith("/affine_xU") for n in nodes)
    lora = [n for n in nodes if "/lora" in n.name and n.op_type == "MatMul"]
    inputs = {i.name for i in graph.input}
    assert lora and all(n.input[1] in inputs for n in lora)  # the branches read the adapter's weights
    assert node.metrics["parity_top1"] >= 0.8 and node.metrics["parity_top1_tone"] >= 0.8
    # what onnxruntime plans buffers from says the adapter's rank is dynamic: a static 8 there made a rank-4
    # adapter's base share a buffer with an affine block sum of width 4, and fail
    products = {n.output[0] for n in nodes if any(".lora_A." in name for name in n.input)}
    infos = [i for i in graph.value_info if i.name in products]
    assert infos and all(i.type.tensor_type.shape.dim[-1].dim_param == "lora_rank" for i in infos)
    assert not any(i.name in inputs for i in graph.value_info)


# -- templates and CLI shortcuts ---------------------------------------------------------------------------------

TEMPLATES = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["int4-cpu", "npu-qdq", "cuda-fp16", "multi-adapter"])
def test_template_plans_here(name):
    first_lines = (TEMPLATES / f"{name}.yaml").read_text().splitlines()[:2]
    assert first_lines[0] == "# yaml-language-server: $schema=../schemas/pipeline.schema.json"
    assert first_lines[1].startswith("# ") and len(first_lines[1]) > 10
    plan = slimops.plan(TEMPLATES / f"{name}.yaml")
    kinds = {node.pass_name for node in plan.order()}
    assert kinds & {"onnx", "quantize", "generate_adapter"}


def test_npu_target_gets_qnn_qdq_and_records_the_skipped_check(assets, tmp_path):
    path = write_pipeline(tmp_path, assets, """\
        targets: {npu: npu-qdq}
        passes:
          export: {type: onnx, task: text-classification}
          quant: {type: quantize, calibration_data: calib}
        """)
    path.write_text(path.read_text().replace(str(assets["llama"]), str(assets["bert"])))
    node = slimops.run(path, display=quiet())["quant@npu"]
    assert node.meta["quantization"]["method"] == "qdq"
    assert "QuantizeLinear" in op_types(Path(node.path) / "model.onnx")
    if "QNNExecutionProvider" not in onnxruntime.get_available_providers():
        assert node.meta["parity"] == "skipped: this onnxruntime lacks QNNExecutionProvider"


SHORTCUTS = [
    ("optimize",),
    ("optimize", "--device", "cuda"),
    ("optimize", "--adapter_path", "{adapter}"),
    ("quantize", "--algorithm", "hqq", "--block_size", "64", "--keep_lm_head_int8"),
    ("quantize", "--algorithm", "gptq", "--calibration_data", "{data}"),
    ("generate-adapter", "--adapter_path", "tone={adapter}", "--precision", "int4"),
]


@pytest.mark.parametrize("argv", SHORTCUTS, ids=[" ".join(a) for a in SHORTCUTS])
def test_shortcut_emits_a_pipeline_that_plans(assets, tmp_path, cli, argv):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    args = [a.format(adapter=adapter, data=assets["root"] / "data.jsonl") for a in argv]
    code, out, err = cli(*args, "--model_name_or_path", assets["llama"], "--emit-config")
    assert code == 0, err
    assert out.startswith(f"# Written by 'slimops {argv[0]}'")
    path = tmp_path / "emitted.yaml"
    path.write_text(out)
    plan = slimops.plan(path)
    last = plan.order()[-1]
    expected = {"optimize": "onnx", "quantize": "quantize", "generate-adapter": "generate_adapter"}[argv[0]]
    expected = "generate_adapter" if "--adapter_path" in argv else expected
    assert last.pass_name == expected
    if argv[0] == "quantize":
        assert last.config.params.method == argv[2]


def test_optimize_shortcut_quantizes_a_registered_encoder(cli):
    """`minilm-l6` names the packaged encoder: exported, fused and quantized, not planned as a GGUF decoder."""
    import yaml

    code, out, err = cli("optimize", "--model_name_or_path", "minilm-l6", "--precision", "int8", "--emit-config")
    assert code == 0, err
    passes = yaml.safe_load(out)["passes"]
    assert [p["type"] for p in passes.values()] == ["onnx", "optimize", "quantize"]


def test_shortcut_flag_errors_are_messages(assets, cli, tmp_path):
    code, out, err = cli("quantize", "--model_name_or_path", assets["llama"], "--algorithm", "qdq", "--emit-config")
    assert code == 2
    assert "slimops quantize --calibration_data: qdq calibrates on data" in err and "Traceback" not in err
    code, out, err = cli("generate-adapter", "-m", assets["llama"], "--adapter_path", f"a={tmp_path}", "--adapter_path", f"a={tmp_path}/b",
                         "--emit-config")
    assert code == 2 and "two adapters are named 'a'; name each one" in err  # not the first one dropped


def test_shortcut_quantize_runs_and_writes_its_pipeline(assets, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("quantize", "-m", assets["llama"], "--algorithm", "rtn", "-o", "q", "-q")
    assert code == 0, err
    folder = tmp_path / "q" / "cpu" / "quantize"
    assert (tmp_path / "q" / "pipeline.yaml").exists() and (folder / "genai_config.json").exists()
    assert "MatMulNBits" in op_types(folder / "model.onnx")
    assert f"quantize: genai-model in {folder}" in err


def test_a_failed_shortcut_says_where_its_pipeline_is(assets, tmp_path, cli, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(assets["llama"], broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] + 1}))
    # a whole model that plans, and that the builder cannot load: its MLP weights are not the shape config.json says
    code, out, err = cli("quantize", "-m", broken, "--algorithm", "rtn", "-o", "q", "-q")
    assert code == 1
    assert "error: pass 'export@cpu' failed" in err and "Traceback" not in err
    assert "the pipeline is q/pipeline.yaml: change it there" in err and "slimops run --config q/pipeline.yaml" in err
