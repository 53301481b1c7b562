"""Models behind small interfaces, for the passes that run them (`parity`, `evaluate`); no pass classes.

- `common`: what the backends share (tokenizer files, EOS ids, the empty KV cache of an ONNX decoder).
- `hf`: transformers models (`HFRunner` for evaluate, `TorchModel` for parity).
- `ort`: onnxruntime sessions and models (`open_session`, `OnnxRunner`, `OnnxCausalLM`, `OnnxEncoder`).
- `genai`: onnxruntime-genai models (`GenaiRunner`).
- `runners`: which model opens which artifact kind (`open_runner`, `open_model`), and `probe_memory`.
- `kvcheck`: a genai-model's KV-cache decoding checked against the same model without a cache.
- `errors`: `ParityError`, raised by the parity check and by the sessions it opens.
"""
