"""Fine-tuning side by side: `slimops finetune` with its defaults, a plain transformers + peft script, and Olive.

    python benchmarks/finetune.py [--rounds 3] [--olive-steps 120] [--olive-venv DIR] [--no-write]

One invocation, one machine: the three jobs alternate, `--rounds` times each, every job in a fresh
process; the table holds medians. All three train a LoRA adapter for SmolLM2-135M-Instruct (the
registered GGUF, converted to an HF folder once, outside the timings) on the quickstart's tone data
(the first 540 phrases; the last 60 are held out) with the quickstart's prompt:

- slimops: `slimops finetune` with no tuning flags (defaults are what most users run);
- plain: `benchmarks/plain_finetune.py`, Trainer + peft written the usual way (fp32, batches of 8
  in random order padded to their longest, r 16, alpha 32), for the same passes over the data as
  slimops's default, so the same training tokens;
- Olive 0.13: `olive finetune` with its defaults (bf16, r 64, rows of 1024 joined tokens, batch 8,
  gradient checkpointing) plus `--lora_alpha 128 --max_steps N`, the flags that make it learn on
  this data. It lives in its own venv, which this script makes once (`--olive-venv`, default under
  ~/.cache) with pip: torch 2.13.0 (CPU), olive-ai[finetune] 0.13.0, datasets, and requests, which
  Olive imports without declaring it.

Reported: wall time from process start to a saved adapter, training seconds, real (non-padding)
tokens and tokens/s, peak RSS (`/usr/bin/time`), held-out tone accuracy measured the same way for
every adapter (`benchmarks/tone_accuracy.py`, plain transformers + peft), and the model FLOP/s
reached (4 x parameters per token: forward and input gradients through the frozen base) as a
fraction of this machine's fp32 and bf16 matmul at the model's shape, measured in the same run.
The table goes into docs/benchmarks.md under "Fine-tuning".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_speed import convert, matmul_tflops, parameters  # noqa: E402
from report import commit, machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "configs" / "data" / "tone.jsonl"
PROMPT = "<|im_start|>user\nWhat is the tone of: {phrase}<|im_end|>\n<|im_start|>assistant\n"
OLIVE_TEMPLATE = PROMPT + "{tone}<|im_end|>"
OLIVE_PACKAGES = ["olive-ai[finetune]==0.13.0", "datasets", "requests"]


def timed(command: list[str], cwd: Path) -> tuple[float, float, str, str]:
    """Run `command` under /usr/bin/time -v: (wall seconds, peak RSS in MB, all its output, its stdout)."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - started
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{log[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return wall, int(rss.group(1)) / 1024 if rss else math.nan, log, done.stdout


def accuracy(model: Path, adapter: Path) -> float:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tone_accuracy.py"), "--model", str(model), "--adapter", str(adapter)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["accuracy"]


def adapter_in(folder: Path) -> Path:
    return next(folder.rglob("adapter_config.json")).parent


def run_slimops(model: Path, work: Path) -> dict:
    """`slimops finetune` from a fresh cache: its cache goes under the current directory, here `work/slimops-run`."""
    run_dir = work / "slimops-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    out = run_dir / "out"
    wall, rss, _, _ = timed([sys.executable, "-m", "slimops.cli", "finetune", "-m", str(model), "--data_files", str(DATA),
                          "--train_split", "[:90%]", "--eval_split", "[90%:]", "--prompt_template", PROMPT,
                          "--response_template", "{tone}", "--no_merge", "--quiet", "-o", str(out)], run_dir)
    metrics = json.loads((out / "run.json").read_text())["nodes"]["finetune"]["metrics"]
    return {"wall_s": wall, "train_s": metrics["train_seconds"], "tokens": metrics["tokens"], "peak_rss_mb": rss,
            "adapter": adapter_in(out)}


def run_plain(model: Path, work: Path, epochs: float) -> dict:
    out = work / "plain"
    shutil.rmtree(out, ignore_errors=True)
    wall, rss, _, stdout = timed([sys.executable, str(ROOT / "benchmarks" / "plain_finetune.py"), "--model", str(model), "--data", str(DATA),
                            "--epochs", str(epochs), "--out", str(out)], ROOT)
    result = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
    return {"wall_s": wall, "train_s": result["train_s"], "tokens": result["tokens"], "peak_rss_mb": rss, "adapter": out}


def olive_venv(venv: Path) -> Path:
    """The venv Olive runs from, made on first use: Olive never enters slimops's environment."""
    olive = venv / "bin" / "olive"
    if not olive.exists():
        print(f"making Olive's venv in {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)  # the CPU build first, as the README's setup does
        subprocess.run([*pip, *OLIVE_PACKAGES], check=True)
    return olive


def olive_tokens(model: Path, steps: int) -> int:
    """Real tokens Olive trains on in `steps` steps. Its default text preprocessing joins every
    example into one token stream cut into rows of 1024 (all real tokens, no padding), and its
    Trainer takes batches of 8 rows, the last batch of an epoch holding the rest."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    train = rows[: round(len(rows) * 0.9)]
    stream = sum(len(tokenizer(OLIVE_TEMPLATE.format(**r), add_special_tokens=False)["input_ids"]) for r in train)
    full_rows = max(1, stream // 1024)
    epoch = [min(8, full_rows - start) for start in range(0, full_rows, 8)]
    return sum(epoch[step % len(epoch)] for step in range(steps)) * 1024


def run_olive(olive: Path, model: Path, work: Path, steps: int) -> dict:
    out = work / "olive"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / ".olive-cache", ignore_errors=True)  # Olive caches runs too: each one here trains afresh
    wall, rss, log, _ = timed([str(olive), "finetune", "-m", str(model), "-d", "json", "--data_files", str(DATA),
                            "--train_split", "train[:90%]", "--eval_split", "train[90%:]", "--text_template", OLIVE_TEMPLATE,
                            "--lora_alpha", "128", "--max_steps", str(steps), "-o", str(out), "--disable_telemetry", "--log_level", "1"], work)
    runtime = re.findall(r"'train_runtime': '?([\d.]+)'?", log)
    if not runtime:
        raise SystemExit(f"olive finetune reported no train_runtime (did it train?):\n{log[-2000:]}")
    return {"wall_s": wall, "train_s": float(runtime[-1]), "tokens": olive_tokens(model, steps),
            "peak_rss_mb": rss, "adapter": adapter_in(out)}


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each job, alternating")
    parser.add_argument("--olive-steps", type=int, default=120, help="Olive's --max_steps (120 makes it learn here)")
    parser.add_argument("--olive-venv", type=Path, default=Path.home() / ".cache" / "slimops-bench" / "olive-0.13")
    parser.add_argument("--no-olive", action="store_true", help="leave Olive out")
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimops-bench-finetune"))
    parser.add_argument("--no-write", action="store_true", help="print the table only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    from slimops.passes.finetune import AdapterParams

    args.work.mkdir(parents=True, exist_ok=True)
    model = convert(args.work) if not (args.work / "convert-out" / "hf").exists() else args.work / "convert-out" / "hf"
    olive = None if args.no_olive else olive_venv(args.olive_venv)
    epochs = AdapterParams.model_fields["epochs"].default
    params = parameters(model)
    peaks = {name: matmul_tflops(name) for name in ("float32", "bfloat16")}
    jobs = {"slimops finetune (defaults)": lambda: run_slimops(model, args.work),
            f"plain Trainer + peft ({epochs:g} epoch{'s' if epochs != 1 else ''})": lambda: run_plain(model, args.work, epochs)}
    if olive:
        jobs[f"Olive 0.13 olive finetune (--max_steps {args.olive_steps})"] = lambda: run_olive(olive, model, args.work, args.olive_steps)
    runs: dict[str, list[dict]] = {name: [] for name in jobs}
    for round_ in range(args.rounds):
        for name, job in jobs.items():
            result = job()
            result["tokens_per_s"] = result["tokens"] / result["train_s"]
            result["accuracy"] = accuracy(model, result.pop("adapter"))
            runs[name].append(result)
            print(round_, name, json.dumps(result), flush=True)

    rows = ["| job | wall s to an adapter | train s | real tokens | real tokens/s | peak RSS MB | held-out accuracy "
            "(median; each run) | fraction of fp32 / bf16 matmul |", "|---|---|---|---|---|---|---|---|"]
    for name, results in runs.items():
        speed = median(results, "tokens_per_s")
        achieved = 4 * params * speed / 1e12
        each = ", ".join(f"{r['accuracy']:.3f}" for r in results)
        rows.append(f"| {name} | {median(results, 'wall_s'):.1f} | {median(results, 'train_s'):.1f} | {results[0]['tokens']} | {speed:.0f} "
                    f"| {median(results, 'peak_rss_mb'):.0f} | {median(results, 'accuracy'):.3f} ({each}) "
                    f"| {achieved / peaks['float32']:.2f} / {achieved / peaks['bfloat16']:.2f} |")
    names = list(runs)
    ratios = ""
    if olive:
        ours, theirs = runs[names[0]], runs[names[-1]]
        ratios = (f"\n\nslimops / Olive: real tokens/s {median(ours, 'tokens_per_s') / median(theirs, 'tokens_per_s'):.2f}x, "
                  f"wall time {median(ours, 'wall_s') / median(theirs, 'wall_s'):.2f}x, peak RSS {median(ours, 'peak_rss_mb') / median(theirs, 'peak_rss_mb'):.2f}x; "
                  f"Olive's median train time per step {median(theirs, 'train_s') / args.olive_steps:.1f} s.")
    body = (
        f"SmolLM2-135M-Instruct ({params / 1e6:.0f} M parameters), tone data 540 train / 60 held out, LoRA on every linear layer. "
        f"Medians of {args.rounds} alternating runs, each in a fresh process; matmul of the model's MLP shape on this machine "
        f"{peaks['float32']:.2f} TFLOP/s fp32, {peaks['bfloat16']:.2f} bf16. Commit {commit()}; {machine()}. "
        f"`python benchmarks/finetune.py --rounds {args.rounds} --olive-steps {args.olive_steps}`.\n\n" + "\n".join(rows) + ratios + "\n\n"
        "Wall time runs from the process start to the adapter on disk (model load, tokenizing, training, an eval pass where the "
        "tool makes one, saving); accuracy is measured afterwards, the same way for every adapter. Real tokens exclude padding "
        "(Olive's rows are all real tokens of the joined stream, prompts included, counted from its preprocessing rule)."
    )
    if not args.no_write:
        write_section("Fine-tuning", body)
    print(body)


if __name__ == "__main__":
    main()
