"""A tied embedding served by the int8 lm_head's bytes (passes/_onnx/tied.py), on small hand-built graphs:
a Gather over an fp32 table (or a Transpose of the lm_head's [K, N] weight, as the quantizers leave
it) and a MatMulNBits lm_head at 8 bits."""

from __future__ import annotations

import numpy as np
import pytest

import onnxruntime as ort  # noqa: E402

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from slimops.passes._onnx.affine import int8_blocks  # noqa: E402
from slimops.passes._onnx.tied import share_int8_embedding  # noqa: E402

K, N, BLOCK = 64, 40, 32


def graph(table: np.ndarray, head: np.ndarray, transposed: bool):
    """ids -> Gather(table) -> embedding; x -> MatMulNBits(head, int8) -> logits. `head` is [K, N]."""
    q, d = int8_blocks(head, BLOCK)
    inits = [numpy_helper.from_array(q, "head.q8"), numpy_helper.from_array(d.reshape(-1), "head.scales")]
    nodes = [helper.make_node("MatMulNBits", ["x", "head.q8", "head.scales"], ["logits"], name="lm_head", domain="com.microsoft",
                              K=K, N=N, bits=8, block_size=BLOCK, accuracy_level=4)]
    if transposed:  # Gather(Transpose(W)), W [K, N]: what a quantizer leaves of a tied weight
        inits.append(numpy_helper.from_array(table.T.copy(), "lm_head.weight"))
        nodes.append(helper.make_node("Transpose", ["lm_head.weight"], ["table"], name="transpose", perm=[1, 0]))
        nodes.append(helper.make_node("Gather", ["table", "ids"], ["embedding"], name="embed"))
    else:
        inits.append(numpy_helper.from_array(table, "embed.weight"))
        nodes.append(helper.make_node("Gather", ["embed.weight", "ids"], ["embedding"], name="embed"))
    g = helper.make_graph(
        nodes, "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "s"]), helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", K])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, "s", K]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "s", N])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def run(model):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[3, 0, 39, 7]], dtype=np.int64)
    x = np.random.default_rng(1).normal(size=(1, 4, K)).astype(np.float32)
    return session.run(None, {"ids": ids, "x": x})


@pytest.mark.parametrize("transposed", [False, True], ids=["table", "transposed weight"])
def test_a_tied_table_is_read_from_the_int8_head(transposed):
    w = np.random.default_rng(0).normal(size=(K, N)).astype(np.float32)
    model = graph(w.T.copy(), w, transposed)
    before = run(model)
    dropped = share_int8_embedding(model)
    assert dropped == ("lm_head.weight" if transposed else "embed.weight")
    assert not any(t.name == dropped for t in model.graph.initializer)  # the fp32 table is gone
    assert {n.op_type for n in model.graph.node} == {"MatMulNBits", "Reshape", "GatherBlockQuantized"}
    embedding, logits = run(model)
    np.testing.assert_array_equal(logits, before[1])
    q, d = int8_blocks(w, BLOCK)
    rows = ((q.astype(np.float32) - 128) * d[..., None]).reshape(N, K)
    np.testing.assert_allclose(embedding[0], rows[[3, 0, 39, 7]], rtol=1e-6, atol=1e-7)
    assert np.abs(embedding - before[0]).max() <= d.max() / 2 + 1e-6  # within half an int8 step of fp32


def test_an_untied_table_is_left_alone():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(K, N)).astype(np.float32)
    model = graph(rng.normal(size=(N, K)).astype(np.float32), w, transposed=False)
    before = model.SerializeToString()
    assert share_int8_embedding(model) is None
    assert model.SerializeToString() == before
