"""Affine int4: a scale and a float offset per block of weights, at the speed of onnxruntime's int4 kernels.

A block of `block` weights along K is stored as `d * q + m` (q in 0..15; the grid of GGUF's Q4_1,
or a plain min/max grid for any other weights). onnxruntime's fast CPU int4 kernel (MatMulNBits
at accuracy level 4) accepts integer zero points only; a float zero point sends it down a path
about 20x slower. So each MatMul `x @ W` (W is K x N) becomes

    MatMulNBits(x, q, d)          # d * (q - 8): the kernel's default zero point, fast path
    + (x @ U) @ V                 # U = [block sums | LoRA A],  V = [m + 8d ; LoRA B]

The block-sum term puts the offsets back exactly. A LoRA adapter (when the model is a merged LoRA
and the base and adapter are known) rides in the same two small MatMuls: its delta, a few
thousandths of an int4 step, would otherwise be rounded away, and the fine-tuning with it.

The last MatMul (lm_head) can be kept at int8 (symmetric, per block: exact on GGUF's Q8_0); when
the embedding is the same matrix (tied, as the model builder writes it), a GatherBlockQuantized
reads the same int8 bytes, so the vocabulary is stored once.

Scales, LoRA matrices and lm_head scales are stored in fp16 and cast once when the session loads
(onnxruntime folds the casts); offsets stay fp32 so that GGUF weights come back bit for bit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LEVELS = 15  # 4 bits: q in 0..15
MIDPOINT = 8  # MatMulNBits's zero point when none is given


@dataclass
class LoraPart:
    """One adapted linear inside an ONNX MatMul: `scale * (x @ a) @ b` lands in columns [offset, offset + N)."""

    a: np.ndarray  # K x r, the scale already applied
    b: np.ndarray  # r x N
    offset: int


@dataclass
class AffineReport:
    quantized: int = 0
    skipped: list[str] = field(default_factory=list)
    lora_layers: int = 0
    lm_head: str | None = None
    shared_embedding: bool = False
    max_block_error: float = 0.0

    def as_meta(self) -> dict[str, Any]:
        return {"method": "affine", "matmuls_int4": self.quantized, "skipped": self.skipped, "lora_side_paths": self.lora_layers,
                "lm_head_int8": self.lm_head is not None, "shared_embedding": self.shared_embedding}


SIDE_PATH_SUFFIXES = ("/affine_xU", "/offsets")


def is_side_path(node) -> bool:
    """A MatMul this module added beside an int4 one (not a weight to quantize again)."""
    return node.name.endswith(SIDE_PATH_SUFFIXES)


# -- the arithmetic ----------------------------------------------------------------------------------------


def affine_blocks(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q [N, blocks, block] uint8, d [N, blocks], m [N, blocks]) with w.T ~ d * q + m per block.

    A K that is not a multiple of `block` is padded with copies of the last row, which leave the
    last block's min and max alone; the kernel never reads the padding.
    """
    w = _padded(w, block)
    k, n = w.shape
    blocks = np.ascontiguousarray(w.T, dtype=np.float32).reshape(n, k // block, block)
    low = blocks.min(axis=-1)
    step = (blocks.max(axis=-1) - low) / np.float32(LEVELS)
    step = np.where(step > 0, step, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint((blocks - low[..., None]) / step[..., None]), 0, LEVELS).astype(np.uint8)
    return q, step, low.astype(np.float32)


def _padded(w: np.ndarray, block: int) -> np.ndarray:
    extra = (-w.shape[0]) % block
    return np.concatenate([w, np.repeat(w[-1:], extra, axis=0)]) if extra else w


def dequantize(q: np.ndarray, d: np.ndarray, m: np.ndarray, k: int | None = None) -> np.ndarray:
    """The K x N matrix that `affine_blocks` stands for (the first `k` rows)."""
    n, blocks, block = q.shape
    return (q.astype(np.float32) * d[..., None] + m[..., None]).reshape(n, blocks * block).T[:k]


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Two 4-bit values per byte, low nibble first (MatMulNBits's layout)."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def int8_blocks(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per block: (q + 128 as uint8 [N, blocks, block], d [N, blocks])."""
    w = _padded(w, block)
    k, n = w.shape
    blocks = np.ascontiguousarray(w.T, dtype=np.float32).reshape(n, k // block, block)
    d = np.abs(blocks).max(axis=-1) / np.float32(127)
    d = np.where(d > 0, d, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(blocks / d[..., None]), -127, 127) + 128
    return q.astype(np.uint8), d


def block_sum_matrix(k: int, block: int) -> np.ndarray:
    """K x blocks of ones and zeros: x @ P sums x over each block."""
    p = np.zeros((k, -(-k // block)), dtype=np.float32)
    for index in range(p.shape[1]):
        p[index * block:(index + 1) * block, index] = 1.0
    return p


# -- LoRA adapters onto the builder's MatMuls --------------------------------------------------------------

_HF_LINEAR = re.compile(
    r"(?:.*\.)?layers\.(\d+)\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|qkv_proj|o_proj|gate_proj|up_proj|gate_up_proj|down_proj)$")


def lora_parts(adapter_dir: Path, weights: dict[str, tuple[int, int]]) -> dict[str, list[LoraPart]]:
    """The adapter's LoRA matrices, keyed by the ONNX MatMul weight they add to.

    `weights` maps initializer names to (K, N). Raises ValueError for an adapter this cannot
    carry exactly (DoRA, other adapter types, modules the graph has no MatMul for).
    """
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise ValueError(f"{config.get('peft_type')} adapters{' (DoRA)' if config.get('use_dora') else ''} are not plain LoRA")
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    extra = [name for name in tensors if ".lora_A." not in name and ".lora_B." not in name]
    if extra:
        raise ValueError(f"the adapter also trains {extra[0]} (modules_to_save), which is not a LoRA matrix")
    rank = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", rank))
    scale = alpha / (rank ** 0.5) if config.get("use_rslora") else alpha / rank
    parts: dict[str, list[LoraPart]] = {}
    for name, a in tensors.items():
        if ".lora_A." not in name:
            continue
        module = name.split(".lora_A.")[0]
        b = tensors[name.replace(".lora_A.", ".lora_B.")]
        match = _HF_LINEAR.match(module)
        if not match:
            raise ValueError(f"no MatMul in the graph for adapted module {module}")
        layer, group, proj = match.groups()
        if proj == "gate_up_proj":  # Phi-3's fused MLP input: the builder splits it, gate rows first (as HF's chunk(2))
            half = b.shape[0] // 2
            pieces = [("gate_proj", b[:half]), ("up_proj", b[half:])]
        else:
            pieces = [(proj, b)]
        for piece, rows in pieces:
            target, offset = _onnx_weight(int(layer), group, piece, weights, rows.shape[0])
            parts.setdefault(target, []).append(LoraPart(a=(a.T * scale).astype(np.float32), b=rows.T.astype(np.float32), offset=offset))
    return parts


def _onnx_weight(layer: int, group: str, proj: str, weights: dict[str, tuple[int, int]], n: int) -> tuple[str, int]:
    """Where the model builder put an HF linear: its own MatMul, or a slice of the packed qkv one."""
    onnx_group = "attn" if group == "self_attn" else "mlp"
    own = f"model.layers.{layer}.{onnx_group}.{proj}.MatMul.weight"
    if own in weights:
        return own, 0
    packed = f"model.layers.{layer}.attn.qkv_proj.MatMul.weight"
    if proj in ("q_proj", "k_proj", "v_proj") and packed in weights:
        _, total = weights[packed]
        q_width = total - 2 * n if proj != "q_proj" else n
        kv_width = (total - q_width) // 2
        offset = {"q_proj": 0, "k_proj": q_width, "v_proj": q_width + kv_width}[proj]
        return packed, offset
    raise ValueError(f"no MatMul in the graph for layers.{layer}.{group}.{proj}")


# -- the graph ---------------------------------------------------------------------------------------------


def quantize_affine(model, block: int = 32, accuracy_level: int | None = 4, lm_head_int8: bool = True,
                    exclude: tuple[str, ...] = (), lora_dir: Path | None = None) -> AffineReport:
    """Rewrite `model` (an onnx ModelProto with external data loaded) in place."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits
               and len(inits[n.input[1]].dims) == 2]
    shapes = {n.input[1]: tuple(inits[n.input[1]].dims) for n in matmuls}
    lm_head = matmuls[-1] if lm_head_int8 and matmuls else None
    parts = lora_parts(lora_dir, shapes) if lora_dir is not None else {}
    report = AffineReport(lm_head=lm_head.name if lm_head is not None else None)
    level = {} if accuracy_level is None else {"accuracy_level": int(accuracy_level)}

    new_inits: list = []
    added: set[str] = set()
    drop: set[str] = set()
    replaced: dict[int, list] = {}  # node index -> nodes in its place
    casts: list = []  # Cast/Concat of stored constants, folded by onnxruntime when the session loads

    def constant(name: str, array: np.ndarray, as_fp16: bool = False) -> str:
        """An initializer; fp16 ones get a Cast to fp32 that onnxruntime folds at load time."""
        if name in added:
            return name
        added.add(name)
        if not as_fp16:
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
            return name
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(array.astype(np.float16)), name + ".fp16"))
        casts.append(helper.make_node("Cast", [name + ".fp16"], [name], to=1, name=name + "/Cast"))
        return name

    index_of = {n.output[0]: i for i, n in enumerate(graph.node)}
    side_inputs: dict[str, list] = {}  # MatMul input -> the MatMul nodes reading it, to quantize
    plans: dict[str, dict[str, Any]] = {}

    for node in matmuls:
        weight = node.input[1]
        k, n = shapes[weight]
        if node is lm_head or node.name in exclude:
            if node is not lm_head:
                report.skipped.append(node.name)
            continue
        w = numpy_helper.to_array(inits[weight]).astype(np.float32)
        q, d, m = affine_blocks(w, block)
        report.max_block_error = max(report.max_block_error, float(np.abs(dequantize(q, d, m, k) - w).max() / max(float(d.max()), 1e-12)))
        plans[node.name] = {"q": pack_int4(q), "d": d, "c": (m + MIDPOINT * d).T.astype(np.float32), "k": k, "n": n}
        side_inputs.setdefault(node.input[0], []).append(node)
        if consumers.get(weight, 0) == 1:
            drop.add(weight)

    # One unit per MatMul input: the MatMuls reading it (the builder's gate and up projections, say)
    # become one MatMulNBits, one side path and one Add, split back into their outputs.
    for x, members in side_inputs.items():
        k = plans[members[0].name]["k"]
        widths = [plans[m.name]["n"] for m in members]
        starts = [sum(widths[:i]) for i in range(len(members))]
        total_n = sum(widths)
        first = members[0]
        stem = first.input[1] if len(members) == 1 else f"{first.input[1]}.merged"
        # U = [block sums | LoRA A of each member], V = [offsets ; LoRA B placed at its member's columns]
        u_pieces = [constant(f"affine.block_sums.{k}.{block}", block_sum_matrix(k, block))]
        lora_a, lora_b = [], []
        for member, column in zip(members, starts):
            for part_index, part in enumerate(parts.get(member.input[1], [])):
                u_pieces.append(constant(f"{member.input[1]}.lora_a{part_index}", part.a, as_fp16=True))
                lora_a.append(part.a.shape[1])
                lora_b.append((part, column))
            report.lora_layers += bool(parts.get(member.input[1]))
        u_name = u_pieces[0]
        if len(u_pieces) > 1:
            u_name = f"{first.name}/affine_U"
            casts.append(helper.make_node("Concat", u_pieces, [u_name], axis=1, name=u_name + "/Concat"))
        offsets = np.concatenate([plans[m.name]["c"] for m in members], axis=1)
        v_pieces = [constant(stem + ".offsets", offsets)]
        if lora_b:
            lora = np.zeros((sum(lora_a), total_n), dtype=np.float32)
            at = 0
            for part, column in lora_b:
                r = part.b.shape[0]
                lora[at:at + r, column + part.offset:column + part.offset + part.b.shape[1]] = part.b
                at += r
            v_pieces.append(constant(stem + ".lora_b", lora, as_fp16=True))
        v_name = v_pieces[0]
        if len(v_pieces) > 1:
            v_name = stem + ".affine_V"
            casts.append(helper.make_node("Concat", v_pieces, [v_name], axis=0, name=v_name + "/Concat"))

        q = np.concatenate([plans[m.name]["q"] for m in members], axis=0)
        d = np.concatenate([plans[m.name]["d"] for m in members], axis=0)
        out = first.output[0] if len(members) == 1 else f"{first.name}/merged"
        nodes = [
            helper.make_node("MatMulNBits", [x, constant(stem + ".q4", q), constant(stem + ".scales", d, as_fp16=True)], [out + "/int4"],
                             name=first.name + "/int4", domain="com.microsoft", K=k, N=total_n, bits=4, block_size=block, **level),
            helper.make_node("MatMul", [x, u_name], [f"{first.name}/affine_xU"], name=f"{first.name}/affine_xU"),
            helper.make_node("MatMul", [f"{first.name}/affine_xU", v_name], [out + "/offsets"], name=first.name + "/offsets"),
            helper.make_node("Add", [out + "/int4", out + "/offsets"], [out], name=first.name + "/add_offsets"),
        ]
        if len(members) > 1:
            sizes = constant(f"{stem}.split", np.array(widths, dtype=np.int64))
            nodes.append(helper.make_node("Split", [out, sizes], [m.output[0] for m in members], axis=-1, name=first.name + "/split"))
        replaced[index_of[first.output[0]]] = nodes
        for member in members[1:]:
            replaced[index_of[member.output[0]]] = []
        report.quantized += len(members)

    if lm_head is not None:
        _lm_head_int8(graph, lm_head, inits, consumers, block, level, constant, replaced, index_of, drop, report)

    missing = set(parts) - {n.input[1] for n in matmuls if n.name in plans}
    if missing:
        raise ValueError(f"LoRA weights for {sorted(missing)[0]}, which this graph does not quantize")

    body = []
    for i, node in enumerate(graph.node):
        body.extend(replaced.get(i, [node]))
    del graph.node[:]
    graph.node.extend(casts + body)
    kept = [i for i in graph.initializer if i.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return report


def _lm_head_int8(graph, lm_head, inits, consumers, block, level, constant, replaced, index_of, drop, report) -> None:
    from onnx import helper, numpy_helper

    weight = lm_head.input[1]
    w = numpy_helper.to_array(inits[weight]).astype(np.float32)
    k, n = w.shape
    q, d = int8_blocks(w, block)
    q_name = constant(weight + ".q8", q)
    d_name = constant(weight + ".scales", d, as_fp16=True)
    replaced[index_of[lm_head.output[0]]] = [helper.make_node(
        "MatMulNBits", [lm_head.input[0], q_name, d_name], list(lm_head.output), name=lm_head.name + "/int8",
        domain="com.microsoft", K=k, N=n, bits=8, block_size=block, **level)]
    # the embedding: the builder ties it as Gather(Transpose(lm_head weight)); a plain copy counts too
    users = 1
    for i, node in enumerate(graph.node if k % block == 0 else ()):
        tied = None
        if node.op_type == "Transpose" and node.input[0] == weight:
            gathers = [g for g in graph.node if g.op_type == "Gather" and g.input[0] == node.output[0]]
            if len(gathers) == 1 and consumers.get(node.output[0], 0) == 1:
                replaced[i] = []
                tied = gathers[0]
                users += 1
        elif node.op_type == "Gather" and node.input[0] in inits and tuple(inits[node.input[0]].dims) == (n, k):
            table = numpy_helper.to_array(inits[node.input[0]])
            if np.array_equal(table, w.T):
                tied = node
                if consumers.get(node.input[0], 0) == 1:
                    drop.add(node.input[0])
        if tied is None:
            continue
        d3 = tied.name + "/scales3"
        replaced[index_of[tied.output[0]]] = [
            helper.make_node("Unsqueeze", [d_name, constant("affine.axes.last", np.array([-1], dtype=np.int64))], [d3], name=d3),
            helper.make_node("GatherBlockQuantized", [q_name, tied.input[1], d3], [tied.output[0] + "/blocks"], name=tied.name + "/int8",
                             domain="com.microsoft", bits=8, block_size=block, gather_axis=0, quantize_axis=2),
            helper.make_node("Reshape", [tied.output[0] + "/blocks", constant(f"affine.embedding_shape.{k}", np.array([0, 0, k], dtype=np.int64))],
                             list(tied.output), name=tied.name + "/reshape"),
        ]
        report.shared_embedding = True
    if consumers.get(weight, 0) <= users:
        drop.add(weight)


def options_for(params: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """`rewrite_file` options from an `onnx` or `quantize` pass's params, else the target's quantize settings."""
    return {
        "block": int(params.block_size or settings.get("block_size", 32)),
        "accuracy_level": params.accuracy_level if params.accuracy_level is not None else settings.get("accuracy_level", 4),
        "lm_head_int8": True if params.keep_lm_head_int8 is None else params.keep_lm_head_int8,
    }


def rewrite_file(source: Path, dest: Path, **options) -> AffineReport:
    """Load `source` (external data too), rewrite it, save `dest` with its data beside it."""
    import onnx

    from slimops.passes._onnx.files import save_model

    model = onnx.load(str(source))
    report = quantize_affine(model, **options)
    save_model(model, dest)
    return report
