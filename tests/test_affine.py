"""Affine int4 (passes/_onnx/affine.py): a float offset per block on onnxruntime's fast int4 kernel.

Weights snapped to GGUF's Q4_1 grid (fp16 scale and min per block of 32) must come back exactly;
a tied embedding shares lm_head's int8 bytes; a merged LoRA rides beside the int4 base exactly,
where int4 of the merged weights would round it away.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

import slimops

import onnx  # noqa: E402
import onnxruntime  # noqa: E402

from slimops.passes._onnx import affine  # noqa: E402

from assets import grid_llama, q4_1


def session(model):
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def one_matmul(w: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_q4_1_weights_come_back_exactly_on_the_fast_kernel():
    rng = np.random.default_rng(0)
    w = q4_1(rng.normal(0, 0.05, (96, 64)).astype(np.float32)).T.copy()  # ONNX layout: K x N
    q, d, m = affine.affine_blocks(w, 32)
    assert np.array_equal(affine.dequantize(q, d, m), w)

    model = one_matmul(w)
    report = affine.quantize_affine(model, block=32, accuracy_level=1, lm_head_int8=False)
    assert report.quantized == 1 and report.max_block_error == 0.0
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 1 and len(nbits[0].input) == 3  # no zero points: the kernel's fast path
    x = rng.normal(0, 1, (5, 64)).astype(np.float32)
    y = session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ w, rtol=1e-4, atol=1e-4)

    # the offsets are what makes it exact: without them the result is far off
    for init in model.graph.initializer:
        if init.name.endswith(".offsets"):
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros(onnx.numpy_helper.to_array(init).shape, np.float32), init.name))
    assert np.abs(session(model).run(None, {"x": x})[0] - x @ w).max() > 1e-2


def test_a_k_that_is_not_a_multiple_of_the_block_is_padded():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.05, (80, 48)).astype(np.float32)  # K = 80: two blocks of 32 and a half one
    model = one_matmul(w)
    affine.quantize_affine(model, block=32, accuracy_level=1, lm_head_int8=False)
    x = rng.normal(0, 1, (4, 80)).astype(np.float32)
    q, d, m = affine.affine_blocks(w, 32)
    assert q.shape == (48, 3, 32)
    np.testing.assert_allclose(session(model).run(None, {"x": x})[0], x @ affine.dequantize(q, d, m, 80), rtol=2e-3, atol=2e-3)  # scales are stored fp16


def test_tied_embedding_shares_the_int8_lm_head():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    vocab, hidden = 80, 64
    head = rng.normal(0, 0.1, (hidden, vocab)).astype(np.float32)
    nodes = [  # the builder's tie: Gather(Transpose(lm_head weight)), then the hidden state through lm_head
        helper.make_node("Transpose", ["head"], ["table"], name="/embed/Transpose"),
        helper.make_node("Gather", ["table", "ids"], ["h"], name="/embed/Gather"),
        helper.make_node("MatMul", ["h", "head"], ["logits"], name="/lm_head/MatMul"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, vocab])],
                              [numpy_helper.from_array(head, "head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    report = affine.quantize_affine(model, block=32, accuracy_level=1, lm_head_int8=True)
    assert report.shared_embedding
    names = {i.name for i in model.graph.initializer}
    assert "head" not in names and "head.q8" in names
    ops = [n.op_type for n in model.graph.node]
    assert "GatherBlockQuantized" in ops and "Transpose" not in ops

    ids = np.array([[3, 17, 42]], dtype=np.int64)
    q, d = affine.int8_blocks(head, 32)
    dequant = ((q.astype(np.float32) - 128) * d[..., None]).reshape(vocab, hidden).T
    expected = dequant.T[ids[0]] @ dequant
    np.testing.assert_allclose(session(model).run(None, {"ids": ids})[0][0], expected, rtol=1e-3, atol=1e-3)


# -- through the passes: a tiny llama whose weights sit on the Q4_1 grid ------------------------------------------


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    from assets import tone_rows, write_jsonl

    root = tmp_path_factory.mktemp("affine")
    base = grid_llama(root / "base")
    write_jsonl(root / "tone.jsonl", tone_rows(48))
    (root / "pipeline.yaml").write_text(textwrap.dedent(f"""\
        name: affine
        model: {{path: {base}}}
        data: {{tone: {{type: jsonl, files: tone.jsonl, prompt: "tone of: {{phrase}}\\n", response: "{{tone}}"}}}}
        targets: {{laptop: cpu-int4}}
        passes:
          base_int4: {{type: onnx, accuracy_level: 1, inputs: [model]}}
          finetune: {{type: lora, data: tone, inputs: [model], r: 8, max_steps: 6, batch_size: 8, learning_rate: 5.0e-3, max_seq_len: 32}}
          merge: {{type: merge_adapter}}
          int4: {{type: onnx, accuracy_level: 1}}
          fp32: {{type: onnx, precision: fp32, inputs: [merge]}}
          merged_int4: {{type: quantize, method: affine, accuracy_level: 1, parity: {{min_top1: 0.0}}}}
        engine: {{cache_dir: cache, output_dir: out}}
        """))
    from slimops.display import RunDisplay

    return slimops.run(root / "pipeline.yaml", display=RunDisplay(quiet=True))


def test_int4_export_of_a_q4_1_model_matches_it(grid_run):
    node = grid_run["base_int4@laptop"]
    assert node.meta["quantization"]["method"] == "affine" and node.meta["precision"] == "int4"
    assert node.metrics["parity_top1"] == 1.0
    assert node.metrics["parity_max_logit_diff"] < 1e-3
    # int4 weights and no fp32 copy of them: well under a third of the fp32 model
    assert node.metrics["size_mb"] < 0.5 * sum(p.stat().st_size for p in Path(grid_run["model"].path).glob("*.safetensors")) / 2**20


def test_merged_lora_rides_beside_the_int4_base(grid_run):
    node = grid_run["int4@laptop"]
    assert node.meta["quantization"]["lora_side_paths"] > 0
    assert node.metrics["parity_top1"] == 1.0 and node.metrics["parity_max_logit_diff"] < 1e-3
    # the same merged model quantized as plain weights is measurably further away
    plain = grid_run["merged_int4@laptop"]
    assert plain.meta["quantization"]["lora_side_paths"] == 0
    assert plain.metrics["parity_max_logit_diff"] > 10 * node.metrics["parity_max_logit_diff"]


def test_quantize_picks_affine_for_cpu_int4_and_rtn_elsewhere():
    from slimops.passes.quantize import QuantizeParams, resolve_method
    from slimops.targets import builtin

    assert resolve_method(QuantizeParams(), builtin("cpu-int4")) == "affine"
    assert resolve_method(QuantizeParams(), builtin("cuda-int4")) == "rtn"


def test_an_adapter_it_cannot_carry_is_named(tmp_path):
    from safetensors.numpy import save_file

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True}))
    save_file({}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="DoRA"):
        affine.lora_parts(tmp_path, {})
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    save_file({"base_model.model.model.embed_tokens.lora_A.weight": np.zeros((4, 8), np.float32),
               "base_model.model.model.embed_tokens.lora_B.weight": np.zeros((8, 4), np.float32)}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="embed_tokens"):
        affine.lora_parts(tmp_path, {})
