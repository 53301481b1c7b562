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
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_speed import convert, one  # noqa: E402  (the same pipeline and run, with processes set)
from report import commit, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = convert(Path(tmp))
        runs = {n: one(model, Path(tmp) / f"p{n}", args.steps, f"precision: fp32, processes: {n}") for n in args.processes}
    base = runs[args.processes[0]]["tokens_per_s"]
    rows = ["| processes | real tokens/s | vs first | train s | wall s | tokens | train loss |", "|---|---|---|---|---|---|---|"]
    for n, m in runs.items():
        rows.append(f"| {n} | {m['tokens_per_s']:.0f} | {m['tokens_per_s'] / base:.2f}x | {m['train_seconds']:.1f} | {m['wall']:.1f} "
                    f"| {m['tokens']} | {m['train_loss']} |")
    print(f"LoRA on SmolLM2-135M, batch 8, max_seq_len 64, {args.steps} steps, fp32. Commit {commit()}; {machine()}.\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
