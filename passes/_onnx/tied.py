"""A tied embedding kept once: the int8 lm_head's bytes serve the token lookup too.

Small LMs tie the input embedding to the lm_head (SmolLM2 does). After weight-only int8 (the
builder's int8, `quantize` with 8 bits, or an int8 lm_head beside int4) the lm_head is a
MatMulNBits over int8 blocks while the lookup still reads the fp32 table: 113 MB of
SmolLM2-135M's 258 MB at int8. `share_int8_embedding` points the lookup at the lm_head's bytes
through a GatherBlockQuantized, as `affine` does for its int4 models, but only where those bytes
are the table rounded to its blocks: an untied model, or one whose lm_head was fitted some other
way, is left as it is. The passes call it for CPU targets only (no GPU here to check the kernel).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

MIDPOINT = 128  # MatMulNBits's and GatherBlockQuantized's zero point for 8 bits when none is given


def share_int8_embedding(model: Any) -> str | None:
    """Rewrite `model` (an onnx ModelProto) in place.

    Returns:
        the name of the fp32 table it dropped, or None when nothing was shared.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    heads = [n for n in graph.node if n.op_type == "MatMulNBits" and n.output[0] in outputs]
    if len(heads) != 1:
        return None
    head = heads[0]
    attrs = {a.name: a.i for a in head.attribute}
    zero_points = len(head.input) > 3 and head.input[3]
    if attrs.get("bits") != 8 or zero_points or head.input[1] not in inits or head.input[2] not in inits:
        return None
    k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
    if k % block:
        return None
    blocks = k // block
    q = numpy_helper.to_array(inits[head.input[1]])
    scales = numpy_helper.to_array(inits[head.input[2]]).astype(np.float32).reshape(n, blocks)
    if q.shape != (n, blocks, block):
        return None
    producer = {output: node for node in graph.node for output in node.output}
    for gather in [g for g in graph.node if g.op_type == "Gather"]:
        if any(a.name == "axis" and a.i != 0 for a in gather.attribute):
            continue
        table_name, transpose = _table(gather.input[0], inits, producer, n, k)
        if table_name is None:
            continue
        table = numpy_helper.to_array(inits[table_name]).astype(np.float32)
        table = table.T if transpose is not None else table
        if not _rounds_to(table.reshape(n, blocks, block), q, scales):
            continue
        consumers = Counter(i for node in graph.node for i in node.input)
        shape3 = f"{gather.name}/scales_shape"
        graph.initializer.extend([
            numpy_helper.from_array(np.array([n, blocks, 1], dtype=np.int64), shape3),
            numpy_helper.from_array(np.array([0, 0, k], dtype=np.int64), f"{gather.name}/embedding_shape"),
        ])
        scales3 = f"{gather.name}/scales3"
        replacement = [
            helper.make_node("Reshape", [head.input[2], shape3], [scales3], name=scales3),
            helper.make_node("GatherBlockQuantized", [head.input[1], gather.input[1], scales3], [gather.output[0] + "/blocks"],
                             name=gather.name + "/int8", domain="com.microsoft", bits=8, block_size=block, gather_axis=0,
                             quantize_axis=2),
            helper.make_node("Reshape", [gather.output[0] + "/blocks", f"{gather.name}/embedding_shape"], list(gather.output),
                             name=gather.name + "/reshape"),
        ]
        index = list(graph.node).index(gather)
        graph.node.remove(gather)
        for offset, node in enumerate(replacement):
            graph.node.insert(index + offset, node)
        remaining = consumers[table_name] - 1  # the Gather, or the Transpose if it goes too
        if transpose is not None:
            if consumers[transpose.output[0]] == 1:
                graph.node.remove(transpose)
            else:
                remaining += 1
        if remaining == 0:
            graph.initializer.remove(inits[table_name])
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        return table_name
    return None


def _table(source: str, inits: dict, producer: dict, n: int, k: int) -> tuple[str | None, Any]:
    """The fp32 initializer a Gather reads, as [n, k] or through a Transpose of a [k, n] one."""
    if source in inits and tuple(inits[source].dims) == (n, k):
        return source, None
    node = producer.get(source)
    if node is not None and node.op_type == "Transpose" and node.input[0] in inits and tuple(inits[node.input[0]].dims) == (k, n):
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        if perm == [1, 0]:
            return node.input[0], node
    return None, None


def _rounds_to(table: np.ndarray, q: np.ndarray, scales: np.ndarray) -> bool:
    """Whether every weight of `table` [n, blocks, block] is within one step of its int8 value.

    Half a step of rounding, except where a quantizer scales by max/128 and clips the largest
    weight to 127 (onnxruntime's does): a whole step there. An untied table misses by many.
    """
    values = (q.astype(np.float32) - MIDPOINT) * scales[..., None]
    step = np.abs(scales)[..., None]  # onnxruntime's symmetric quantizer stores some scales negative
    return bool(np.all(np.abs(table - values) <= step * (1 + 1e-3) + 1e-7))


def share_in_file(model_file: Path) -> str | None:
    """`share_int8_embedding` on a saved model (its data beside it), rewritten only when it shares."""
    import onnx

    from slimops.passes._onnx.files import load_model, save_model

    graph = onnx.load(str(model_file), load_external_data=False).graph
    outputs = {o.name for o in graph.output}
    if not any(n.op_type == "MatMulNBits" and n.output[0] in outputs and any(a.name == "bits" and a.i == 8 for a in n.attribute)
               for n in graph.node):
        return None  # no int8 lm_head: nothing to read the whole file for
    model = load_model(model_file)
    dropped = share_int8_embedding(model)
    if dropped is not None:
        save_model(model, model_file)
    return dropped
