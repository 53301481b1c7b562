"""Fine-tuning tokens/s on 1 process against `processes: 2` (torchrun, DDP, gloo on a CPU).

    python benchmarks/_ddp_bench.py [--steps 20] [--processes 1 2]

SmolLM2-135M-Instruct (the registered GGUF, converted once outside the timings) and the tone data,
LoRA r 16 on every linear layer, batch 8 (split 4 + 4 over two processes: the same global batch),
max_seq_len 64, fp32, `--steps` steps; each setting once, in a fresh process. Prints a table:
real (non-padding) tokens/s of the training loop, train and wall seconds (wall includes
torchrun's start and every rank's imports and model load), and the final loss, which should agree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_speed import DATA, convert  # noqa: E402
from report import commit, machine  # noqa: E402

PIPELINE = """
name: ddp
model: {model}
data:
  tone:
    files: {data}
    splits: {{train: "[:90%]", eval: "[90%:]"}}
    prompt: "<|im_start|>user\\nWhat is the tone of: {{phrase}}<|im_end|>\\n<|im_start|>assistant\\n"
    response: "{{tone}}"
passes:
  ft: {{type: lora, data: tone, r: 16, alpha: 32, batch_size: 8, max_seq_len: 64, max_steps: {steps}, save_steps: 100000,
        precision: fp32, processes: {processes}}}
engine: {{cache_dir: {work}/cache, output_dir: {work}/out}}
"""


def one(model: Path, work: Path, steps: int, processes: int) -> dict:
    work.mkdir(parents=True)
    config = work / "pipeline.yaml"
    config.write_text(PIPELINE.format(model=model, data=DATA, steps=steps, processes=processes, work=work))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "slimops.cli", "run", "--quiet", "--config", str(config)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return {**json.loads((work / "out" / "run.json").read_text())["nodes"]["ft"]["metrics"], "wall": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = convert(Path(tmp))
        runs = {n: one(model, Path(tmp) / f"p{n}", args.steps, n) for n in args.processes}
    base = runs[args.processes[0]]["tokens_per_s"]
    rows = ["| processes | real tokens/s | vs first | train s | wall s | tokens | train loss |", "|---|---|---|---|---|---|---|"]
    for n, m in runs.items():
        rows.append(f"| {n} | {m['tokens_per_s']:.0f} | {m['tokens_per_s'] / base:.2f}x | {m['train_seconds']:.1f} | {m['wall']:.1f} "
                    f"| {m['tokens']} | {m['train_loss']} |")
    print(f"LoRA on SmolLM2-135M, batch 8, max_seq_len 64, {args.steps} steps, fp32. Commit {commit()}; {machine()}.\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
