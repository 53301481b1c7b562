"""Causal LMs the onnxruntime-genai model builder cannot build (GPT-2, DialoGPT), exported through torch.onnx.

- `export_decoder(source, out, params, precision, ctx)`: an onnx-model folder with a KV cache in
  the layout `OnnxRunner` reads: inputs `input_ids`, `attention_mask` (batch, past + sequence),
  `position_ids` (when the model takes them), `past_key_values.{i}.key` / `.value` (batch, kv_heads,
  past_sequence, head_dim); outputs `logits`, `present.{i}.key` / `.value`. Batch, sequence and
  past axes are dynamic; the first step feeds a past of length 0. Beside model.onnx (weights in
  model.onnx.data): config.json, generation_config.json, the tokenizer files.
- `constant_matmuls(model)`: every linear layer as a MatMul over a constant [K, N] weight and a tied
  lm_head laid out as the model builder lays it (MatMul over the weight, the embedding a Gather over
  its Transpose), which is what the quantizers (`weight_only.weight_only`, `affine`, `tied`) look for.
- The dynamo exporter by default (what the encoders use; it traces the cache built from the past
  tensors as plain tensors); `exporter: torchscript` traces the same wrapper, faster, and also works.
- Precision: fp32; fp16 converted after export (inputs and outputs, the cache too, stay fp32); int4 and
  int8 quantized from the fp32 export by the quantize pass's own code: affine int4 on a CPU (lm_head
  int8, shared with the tied embedding), else round-to-nearest MatMulNBits (`weight_only.weight_only`).
"""

from __future__ import annotations

import inspect
import shutil
import time
from pathlib import Path
from typing import Any

from slimops.passes._onnx.files import OnnxError, copy_tokenizer, save_model
from slimops.plugin import Artifact, PassContext

PAST, PRESENT = "past_key_values", "present"


def export_decoder(source: Path, out: Path, params: Any, precision: str, ctx: PassContext) -> Artifact:
    """Export the causal LM in `source` to `out/model.onnx` at `precision`.

    Args:
        params: the onnx pass's params (exporter, opset; block_size, accuracy_level, symmetric,
            keep_lm_head_int8, int4_method for int4/int8).
        ctx: the pass's context: its target, log, progress and work_dir (where the fp32 export goes).

    Returns:
        an onnx-model whose meta has precision, task, inputs, output, kv_cache (layers, kv_heads,
        head_dim) and, when quantized, quantization; metrics: build_seconds (as the builder's exports have).

    Raises:
        OnnxError: the model's cache is not one this export lays out, or torch.onnx failed.
    """
    import torch
    from transformers import AutoModelForCausalLM

    log, target = ctx.log, ctx.target
    started = time.perf_counter()
    ctx.progress.update(0, 3, "loading")
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).eval()
    layout = cache_layout(model)
    raw = ctx.work_dir / "torch-onnx"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    ctx.progress.update(1, 3, f"torch.onnx.export ({params.exporter})")
    names = _trace(model, layout, raw / "model.onnx", params)
    del model
    import onnx

    graph = onnx.load(str(raw / "model.onnx"))
    for node in graph.graph.node:  # the exporter's stack traces and FX names: this machine's paths, most of the file
        del node.metadata_props[:]
    rewritten = constant_matmuls(graph)
    log.info("torch.onnx (%s): %d layers, %d kv heads of %d; %d linear layers made plain MatMuls", params.exporter,
             layout["layers"], layout["kv_heads"], layout["head_dim"], rewritten)
    meta: dict[str, Any] = {"task": "text-generation", "exporter": params.exporter, "inputs": names, "output": "logits",
                            "kv_cache": layout}
    exported = precision
    if precision == "bf16":
        exported = "fp16"
        log.info("torch.onnx decoders convert to fp16, not bf16: exporting fp16")
    if exported == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        graph = convert_float_to_float16(graph, keep_io_types=True)
    if exported in ("int4", "int8"):
        ctx.progress.update(2, 3, f"quantizing to {exported}")
        if ctx.input.meta.get("merged_from") and exported == "int4":
            log.warning("this model was merged from an adapter: int4 of merged weights may round the fine-tuning away "
                        "(the LoRA side path of affine int4 follows the model builder's layout only); export at fp32 or int8 to keep it")
        fp32_file = raw / "fp32.onnx"
        save_model(graph, fp32_file)
        del graph
        meta["quantization"] = _quantize(fp32_file, out / "model.onnx", params, exported, target, log)
    else:
        save_model(graph, out / "model.onnx")
    shutil.rmtree(raw, ignore_errors=True)
    for name in ("config.json", "generation_config.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    copy_tokenizer(source, out)
    meta["precision"] = exported
    return Artifact(path=out, kind="onnx-model", meta=meta, metrics={"build_seconds": round(time.perf_counter() - started, 2)})


def cache_layout(model) -> dict[str, int]:
    """Layers, kv heads and head size of the model's KV cache, read from one forward pass.

    Raises:
        OnnxError: the cache is not one plain key/value pair per layer (sliding windows, say).
    """
    import torch

    with torch.no_grad():
        output = model(input_ids=torch.zeros(1, 2, dtype=torch.long), use_cache=True)
    cache = _cache_of(output)
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers or []}) or [type(cache).__name__]
        raise OnnxError(f"torch.onnx export lays out a cache of one key/value pair per layer; this model's is {', '.join(kinds)}")
    shapes = {tuple(layer.keys.shape[1::2]) for layer in layers} | {tuple(layer.values.shape[1::2]) for layer in layers}
    if len(shapes) != 1:
        raise OnnxError(f"torch.onnx export needs one key/value shape for every layer; this model has {sorted(shapes)}")
    heads, head_dim = shapes.pop()
    return {"layers": len(layers), "kv_heads": int(heads), "head_dim": int(head_dim)}


def _cache_of(output) -> Any:
    """The cache a transformers forward returns: `cache` since transformers 5, `past_key_values` before."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _trace(model, layout: dict[str, int], model_file: Path, params: Any) -> list[str]:
    """torch.onnx.export of `model` behind flat tensor inputs and outputs; returns the input names."""
    import torch
    from transformers import DynamicCache

    forward = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in forward else "past_key_values"  # transformers 5 renamed it
    with_positions = "position_ids" in forward
    layers = layout["layers"]
    past_names = [f"{PAST}.{i}.{part}" for i in range(layers) for part in ("key", "value")]
    names = ["input_ids", "attention_mask"] + (["position_ids"] if with_positions else []) + past_names
    outputs = ["logits"] + [name.replace(PAST, PRESENT) for name in past_names]

    class Flat(torch.nn.Module):
        """input_ids, attention_mask[, position_ids], then each layer's past key and value -> logits, presents."""

        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, *args):
            ids, mask, *rest = args
            positions = rest.pop(0) if with_positions else None
            cache = DynamicCache(config=self.model.config)
            for i in range(layers):
                cache.update(rest[2 * i], rest[2 * i + 1], i)
            extra = {"position_ids": positions} if with_positions else {}
            result = self.model(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_arg: cache}, **extra)
            present = _cache_of(result)
            return (result.logits, *[t for layer in present.layers for t in (layer.keys, layer.values)])

    # distinct sizes (batch 2, 3 new tokens after 5 cached) so that no axis is taken for another
    batch, new, cached = 2, 3, 5
    example = [torch.ones(batch, new, dtype=torch.long), torch.ones(batch, cached + new, dtype=torch.long)]
    if with_positions:
        example.append(torch.arange(cached, cached + new).expand(batch, new).contiguous())
    example += [torch.zeros(batch, layout["kv_heads"], cached, layout["head_dim"]) for _ in past_names]
    wrapper = Flat(model).eval()
    longest = int(getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 0) or 4096)
    try:
        if params.exporter == "dynamo":
            Dim = torch.export.Dim
            b, s = Dim("batch", min=1, max=1024), Dim("sequence", min=1, max=longest)
            p, t = Dim("past_sequence", min=0, max=longest - 1), Dim("total_sequence", min=1, max=longest)
            shapes = [{0: b, 1: s}, {0: b, 1: t}] + ([{0: b, 1: s}] if with_positions else []) + [{0: b, 2: p} for _ in past_names]
            with torch.no_grad():
                program = torch.onnx.export(wrapper, tuple(example), dynamic_shapes=(tuple(shapes),), input_names=names,
                                            output_names=outputs, opset_version=max(params.opset, 18), dynamo=True, verbose=False)
            program.save(str(model_file), external_data=True)
        else:
            axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
                    "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
            axes.update({n: {0: "batch", 2: "past_sequence"} for n in past_names})
            axes.update({n: {0: "batch", 2: "total_sequence"} for n in outputs[1:]})
            with torch.no_grad():
                torch.onnx.export(wrapper, tuple(example), str(model_file), input_names=names, output_names=outputs,
                                  dynamic_axes={k: v for k, v in axes.items() if k in names + outputs}, opset_version=params.opset,
                                  dynamo=False)
    except Exception as err:
        raise OnnxError(f"torch.onnx ({params.exporter}) could not export {type(model).__name__} with a KV cache: {_summary(err)}; "
                        f"try exporter: {'torchscript' if params.exporter == 'dynamo' else 'dynamo'}") from None
    return names


def _summary(err: Exception) -> str:
    """The line of torch.onnx's long report that says what failed (after its '## Exception summary')."""
    text = str(err).strip()
    _, found, rest = text.partition("## Exception summary")
    lines = [line.strip() for line in (rest if found else text).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def constant_matmuls(model) -> int:
    """Rewrite `model` (an onnx ModelProto, weights loaded) in place; returns how many nodes changed.

    - Gemm(x, W[, b]) with alpha = beta = 1 and x untransposed (GPT-2's Conv1D is an addmm) becomes
      MatMul(x, W) [+ b], W transposed into [K, N] where transB asks for it and nothing else reads W.
    - MatMul(x, Transpose(W)) over an initializer (a tied lm_head reading the embedding table) becomes
      MatMul(x, W^T) with W^T stored instead of W, and whatever read W (the embedding's Gather) reads
      Transpose(W^T): still one table on disk, which onnxruntime transposes once when it loads.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    producer = {output: node for node in graph.node for output in node.output}
    changed, head = 0, []
    for node in list(graph.node):
        if node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
                continue
            weight = node.input[1]
            if attrs.get("transB", 0):
                if readers[weight] != 1:
                    continue
                array = numpy_helper.to_array(inits[weight]).T
                inits[weight].CopyFrom(numpy_helper.from_array(array.copy(), weight))
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            product = node.output[0] + "/matmul" if bias else node.output[0]
            nodes = [helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name + "/MatMul")]
            if bias:
                nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=node.name + "/bias"))
            position = list(graph.node).index(node)
            graph.node.remove(node)
            for offset, new in enumerate(nodes):
                graph.node.insert(position + offset, new)
            changed += 1
        elif node.op_type == "MatMul" and node.input[1] in producer:
            transpose = producer[node.input[1]]
            table = transpose.input[0] if transpose.op_type == "Transpose" else None
            perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), [1, 0])
            if table not in inits or len(inits[table].dims) != 2 or perm != [1, 0]:
                continue
            stored = table + ".transposed"
            array = numpy_helper.to_array(inits[table]).T.copy()
            graph.initializer.remove(inits[table])
            graph.initializer.append(numpy_helper.from_array(array, stored))
            inits[stored] = graph.initializer[-1]
            node.input[1] = stored
            readers[transpose.output[0]] -= 1
            if readers[transpose.output[0]] == 0:
                graph.node.remove(transpose)
                readers[table] -= 1
            if readers[table]:  # the embedding's lookup, say: the table again, through one Transpose
                head.append(helper.make_node("Transpose", [stored], [table], perm=[1, 0], name=table + "/Transpose"))
            del inits[table]
            changed += 1
    for offset, node in enumerate(head):
        graph.node.insert(offset, node)
    return changed


def _quantize(fp32_file: Path, out_file: Path, params: Any, precision: str, target: Any, log) -> dict[str, Any]:
    """int4/int8 weights from the fp32 export, by the quantize pass's code; returns its `quantization` meta."""
    settings = dict((target.settings or {}).get("quantize", {}))
    if precision == "int4" and target.device == "cpu" and params.int4_method == "affine":
        from slimops.passes._onnx.affine import options_for, rewrite_file

        options = options_for(params, settings)
        try:
            report = rewrite_file(fp32_file, out_file, **options)
        except ValueError as err:  # round-to-nearest int4 takes any MatMul graph
            log.warning("affine int4 cannot rewrite this graph (%s): round-to-nearest int4 instead", err)
        else:
            log.info("affine int4: %d MatMuls int4, lm_head int8: %s, embedding shared: %s", report.quantized,
                     report.lm_head is not None, report.shared_embedding)
            return {**report.as_meta(), "block_size": options["block"], "accuracy_level": options["accuracy_level"]}
    from slimops.passes._onnx.weight_only import weight_only, weight_only_options

    options = weight_only_options(params, target, 4 if precision == "int4" else 8)
    lm_head = bool(params.keep_lm_head_int8) and precision == "int4"
    shared = weight_only(fp32_file, out_file, "rtn", options, lm_head, [], None, log, share_embedding=target.device == "cpu")
    log.info("rtn %s: MatMulNBits, lm_head int8: %s, embedding shared: %s", precision, lm_head, shared is not None)
    return {"method": "rtn", **options, "keep_lm_head_int8": lm_head, "shared_embedding": shared is not None}
