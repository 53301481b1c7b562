"""The built-in passes, one module per family, registered here by import path.

Each line names the `type:` users write and where its class lives; the module is imported
only when a pipeline uses the pass, so heavy libraries stay out of `slimops validate`.
What several passes share lives in private packages beside them, with no pass inside: `_onnx/`
(ONNX files, the model builder, affine int4, tied embeddings), `_runtime/` (models behind one
interface, for parity and evaluate), `_adapters` (a fine-tuning method's model: the 4-bit base,
the peft wrapping), `_data` (data sets) and `_metrics` (metric functions).
"""

BUILTIN: dict[str, str] = {
    "fake": "slimops.passes.fake:Fake",
    "onnx": "slimops.passes.onnx:Onnx",
    "parity": "slimops.passes.parity:Parity",
    "quantize": "slimops.passes.quantize:Quantize",
    "optimize": "slimops.passes.optimize:Optimize",
    "generate_adapter": "slimops.passes.generate_adapter:GenerateAdapter",
    "evaluate": "slimops.passes.evaluate:Evaluate",
    "from_gguf": "slimops.passes.from_gguf:FromGguf",
    "lora": "slimops.passes.finetune:Lora",
    "dora": "slimops.passes.finetune:Dora",
    "qlora": "slimops.passes.finetune:Qlora",
    "loha": "slimops.passes.finetune:Loha",
    "lokr": "slimops.passes.finetune:Lokr",
    "ia3": "slimops.passes.finetune:Ia3",
    "full": "slimops.passes.finetune:Full",
    "merge_adapter": "slimops.passes.merge_adapter:MergeAdapter",
}
