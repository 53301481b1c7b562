"""What the ONNX passes share; no pass classes live here.

- `files`: reading and writing ONNX files and their folders (`load_model`, `save_model`,
  tokenizer files, the chat template) and `OnnxError`.
- `builder`: launching the onnxruntime-genai model builder and the genai_config.json it writes.
- `affine`: affine int4 (a scale and a float offset per block) with a LoRA side path.
- `tied`: a tied embedding that reads the int8 lm_head's bytes.
- `weight_only`: MatMulNBits int4/int8 weights (rtn, hqq, k_quant, gptq).
- `builder_config`: the config fields the builder reads, where transformers 5 writes them otherwise.
- `torch_decoder`: causal LMs the builder does not build, exported by torch.onnx with a KV cache.
"""
