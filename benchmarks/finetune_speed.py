"""Fine-tuning speed by precision and batching: the lora pass on the quickstart's job, four ways.

    python benchmarks/finetune_speed.py [--steps 30] [--rounds 3]

SmolLM2-135M-Instruct (the registered GGUF, converted to an HF folder once, outside the timings),
the tone data (540 train / 60 eval), LoRA r 16 / alpha 32 on every linear layer, batch 8,
max_seq_len 64, lr 2e-4: the quickstart's settings, for `--steps` steps. Each variant runs in a
fresh process, the variants alternating, `--rounds` times; the table holds medians:

- precision fp32 or bf16 (bf16: the frozen base held in bf16, the adapter in fp32, no autocast;
  what `precision: auto` picks on a CPU with AVX512-BF16 or AMX);
- length-grouped rows of one example each, or packed rows of `max_seq_len` tokens (`packing: true`;
  a step then holds about twice the tokens).

Beside them, the machine's matmul throughput in fp32 and bf16 at the model's shapes, measured in the
same run, and the fraction of it the training reaches (6 x parameters x tokens / s, a LoRA step's
forward and backward through the frozen base). The table goes into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import commit, machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "configs" / "data" / "tone.jsonl"
VARIANTS = {
    "fp32, one example per row": "precision: fp32, packing: false",
    "fp32, packed rows": "precision: fp32, packing: true",
    "bf16 base, one example per row": "precision: bf16, packing: false",
    "bf16 base, packed rows": "precision: bf16, packing: true",
}
PIPELINE = """
name: speed
model: {model}
data:
  tone:
    files: {data}
    splits: {{train: "[:90%]", eval: "[90%:]"}}
    prompt: "<|im_start|>user\\nWhat is the tone of: {{phrase}}<|im_end|>\\n<|im_start|>assistant\\n"
    response: "{{tone}}"
passes:
  ft: {{type: lora, data: tone, r: 16, alpha: 32, batch_size: 8, max_seq_len: 64, max_steps: {steps}, save_steps: 100000, {extra}}}
engine: {{cache_dir: {work}/cache, output_dir: {work}/out}}
"""


def convert(work: Path) -> Path:
    config = work / "convert.yaml"
    config.write_text(f"name: convert\nmodel: smollm2-135m\npasses:\n  hf: {{type: from_gguf}}\n"
                      f"engine: {{cache_dir: {work}/convert-cache, output_dir: {work}/convert-out}}\n")
    subprocess.run([sys.executable, "-m", "slimops.cli", "run", "--quiet", "--config", str(config)], check=True, capture_output=True)
    return work / "convert-out" / "hf"


def parameters(model: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())


def matmul_tflops(dtype_name: str) -> float:
    """Median TFLOP/s of (512 x 576) @ (576 x 1536), the model's MLP shape at a step's tokens."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(512, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    for _ in range(20):
        a @ b
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(50):
            a @ b
        times.append((time.perf_counter() - start) / 50)
    return 2 * 512 * 576 * 1536 / statistics.median(times) / 1e12


def one(model: Path, work: Path, steps: int, extra: str) -> dict:
    work.mkdir(parents=True)
    config = work / "pipeline.yaml"
    config.write_text(PIPELINE.format(model=model, data=DATA, steps=steps, extra=extra, work=work))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "slimops.cli", "run", "--quiet", "--config", str(config)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    node = json.loads((work / "out" / "run.json").read_text())["nodes"]["ft"]
    return {**node["metrics"], "wall": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = convert(root)
        params = parameters(model)
        peaks = {name: matmul_tflops(name) for name in ("float32", "bfloat16")}
        runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for round_ in range(args.rounds):
            for index, (name, extra) in enumerate(VARIANTS.items()):
                runs[name].append(one(model, root / f"run-{round_}-{index}", args.steps, extra))
                print(name, {k: runs[name][-1][k] for k in ("tokens_per_s", "train_seconds", "eval_loss")}, flush=True)
    base = statistics.median(r["tokens_per_s"] for r in runs[next(iter(VARIANTS))])
    rows = ["| variant | real tokens/s | vs fp32 rows | train s | wall s | real tokens | eval loss | "
            "fraction of fp32 / bf16 matmul |", "|---|---|---|---|---|---|---|---|"]
    for name, results in runs.items():
        speed = statistics.median(r["tokens_per_s"] for r in results)
        achieved = 6 * params * speed / 1e12
        rows.append(f"| {name} | {speed:.0f} | {speed / base:.2f}x | {statistics.median(r['train_seconds'] for r in results):.1f} "
                    f"| {statistics.median(r['wall'] for r in results):.1f} | {results[0]['tokens']} | {results[0].get('eval_loss')} "
                    f"| {achieved / peaks['float32']:.2f} / {achieved / peaks['bfloat16']:.2f} |")
    body = (f"The lora pass on the quickstart's job (batch 8, max_seq_len 64, {args.steps} steps), four ways; medians of "
            f"{args.rounds} alternating runs in fresh processes. Matmul of the model's MLP shape on this machine: "
            f"{peaks['float32']:.2f} TFLOP/s fp32, {peaks['bfloat16']:.2f} bf16. Commit {commit()}; {machine()}. `python benchmarks/finetune_speed.py`.\n\n" + "\n".join(rows))
    write_section("Fine-tuning precision and packing", body)
    print(body)


if __name__ == "__main__":
    main()
