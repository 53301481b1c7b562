"""Fine-tuning: the same LoRA job by slimops, by a plain Trainer + peft script, and by Olive.

    python benchmarks/finetune.py [--steps 30] [--olive-venv DIR]

Olive lives in its own venv, never in slimops's; make it once with
    python3 -m venv DIR && DIR/bin/pip install torch==2.13.0 && DIR/bin/pip install "olive-ai[finetune]==0.13.0" datasets

SmolLM2-135M (the registered GGUF, converted to an HF folder once, outside the timings), the
bundled tone data (90% train, 10% eval), LoRA r 16 / alpha 32 on every linear layer, batch 4,
sequences up to 128 tokens, lr 2e-4 cosine. Each job runs in a fresh process; reported: wall
time (process start to end), train time, real (non-padding) tokens/s, peak RSS, final train
loss and eval loss. The table goes into docs/benchmarks.md under "Fine-tuning".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import commit, machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "configs" / "data" / "tone.jsonl"
PIPELINE = """
name: bench-lora
model: {model}
data:
  tone:
    files: {data}
    splits: {{train: "[:90%]", eval: "[90%:]"}}
    prompt: "<|im_start|>user\\n{{phrase}}<|im_end|>\\n<|im_start|>assistant\\n"
    response: "{{tone}}"
passes:
  finetune: {{type: lora, data: tone, r: 16, alpha: 32, dropout: 0.05, batch_size: 4, max_seq_len: 128, max_steps: {steps}, learning_rate: 2.0e-4, save_steps: 1000}}
engine: {{cache_dir: {work}/cache, output_dir: {work}/out}}
"""


def convert(work: Path) -> Path:
    """The GGUF as an HF folder, by slimops's own converter (cached across benchmark runs)."""
    import slimops
    from slimops.display import RunDisplay

    config = work / "convert.yaml"
    config.write_text("name: convert\nmodel: smollm2-135m\npasses:\n  hf: {type: from_gguf}\n")
    return Path(slimops.run(config, display=RunDisplay(quiet=True))["hf"].path)


def child_slimops(model: str, steps: int) -> None:
    t0 = time.perf_counter()
    import slimops
    from slimops.display import RunDisplay

    work = Path(tempfile.mkdtemp(prefix="bench-slimops-"))
    config = work / "pipeline.yaml"
    config.write_text(textwrap.dedent(PIPELINE).format(model=model, data=DATA, steps=steps, work=work))
    node = slimops.run(config, display=RunDisplay(quiet=True))["finetune"]
    m = node.metrics
    print(json.dumps({
        "wall_s": time.perf_counter() - t0,
        "train_s": m["train_seconds"],
        "tokens": m["tokens"],
        "tokens_per_s": m["tokens_per_s"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_loss": m["train_loss"],
        "eval_loss": m["eval_loss"],
    }))


OLIVE_TEMPLATE = "<|im_start|>user\n{phrase}<|im_end|>\n<|im_start|>assistant\n{tone}<|im_end|>"


def run_olive(venv: Path, model: Path, steps: int, work: Path) -> dict:
    """`olive finetune` with the same settings, timed from outside; figures read from its log.

    Olive reports no token count, so real tokens are estimated as steps x batch x the mean
    token length of the rendered training examples (its batches are random, not length-grouped).
    """
    import re
    import shutil

    from transformers import AutoTokenizer

    out = work / "olive"
    shutil.rmtree(out, ignore_errors=True)
    command = [
        "/usr/bin/time", "-v", str(venv / "bin" / "olive"), "finetune", "-m", str(model), "-d", "json",
        "--data_files", str(DATA), "--train_split", "train[:90%]", "--eval_split", "train[90%:]",
        "--text_template", OLIVE_TEMPLATE, "--max_seq_len", "128", "--max_steps", str(steps),
        "--per_device_train_batch_size", "4", "--lora_r", "16", "--lora_alpha", "32", "--torch_dtype", "float32",
        "--learning_rate", "2e-4", "--lr_scheduler_type", "cosine", "-o", str(out), "--disable_telemetry", "--log_level", "1",
    ]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=work)
    wall = time.perf_counter() - t0
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"olive finetune failed:\n{log[-3000:]}")
    train = re.findall(r"'train_runtime': '?([\d.]+)'?", log)
    train_loss = re.findall(r"'train_loss': '?([\d.]+)'?", log)
    eval_loss = re.findall(r"'eval_loss': '?([\d.]+)'?", log)
    rss_kb = re.findall(r"Maximum resident set size \(kbytes\): (\d+)", log)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    train_rows = rows[: int(len(rows) * 0.9)]
    mean_len = sum(len(tokenizer(OLIVE_TEMPLATE.format(**r))["input_ids"]) for r in train_rows) / len(train_rows)
    tokens = int(steps * 4 * mean_len)
    train_s = float(train[-1]) if train else wall
    return {
        "wall_s": wall, "train_s": train_s, "tokens": f"~{tokens}", "tokens_per_s": tokens / train_s,
        "peak_rss_mb": int(rss_kb[-1]) / 1024 if rss_kb else float("nan"),
        "train_loss": float(train_loss[-1]) if train_loss else float("nan"),
        "eval_loss": float(eval_loss[-1]) if eval_loss else float("nan"),
        "load": f"{load_before:.1f} / {os.getloadavg()[0]:.1f}",
    }


def run_child(args: list[str]) -> dict:
    """Run one job in a fresh process; the machine's load average before and after goes with it,
    because on a shared machine other work changes the figures more than anything else."""
    load_before = os.getloadavg()[0]
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--child", choices=["slimops"])
    parser.add_argument("--model")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "slimops-bench"))
    parser.add_argument("--plain-first", action="store_true", help="run the plain script first")
    parser.add_argument("--no-write", action="store_true", help="print the table only; leave docs/benchmarks.md alone")
    parser.add_argument("--olive-venv", type=Path, help="a venv with olive-ai 0.13 (see the module docstring); omitted: Olive is not run")
    args = parser.parse_args()
    if args.child:
        child_slimops(args.model, args.steps)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = convert(work)
    jobs = {
        "slimops (lora pass)": [__file__, "--child", "slimops", "--model", str(model), "--steps", str(args.steps)],
        "plain Trainer + peft": [str(ROOT / "benchmarks" / "plain_finetune.py"), "--model", str(model), "--data", str(DATA), "--steps", str(args.steps), "--out", str(work / "plain")],
    }
    order = list(jobs)[::-1] if args.plain_first else list(jobs)
    results = {name: run_child(jobs[name]) for name in order}
    if args.olive_venv:
        results["Olive 0.13 `olive finetune`"] = run_olive(args.olive_venv, model, args.steps, work)
    rows = ["| job | wall s | train s | real tokens | real tokens/s | peak RSS MB | final train loss | eval loss | load avg before / after |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['wall_s']:.1f} | {r['train_s']:.1f} | {r['tokens']} | {r['tokens_per_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['train_loss']:.3f} | {r['eval_loss']:.3f} | {r['load']} |")
    body = (
        f"SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32 once), tone data 540 train / 60 eval, LoRA r 16 alpha 32 "
        f"all-linear, batch 4, seq <= 128, {args.steps} steps, lr 2e-4 cosine, fp32 on CPU. One run each, fresh processes, "
        f"in the order shown, on a machine shared with other work (the load column). Commit {commit()}; {machine()}. `python benchmarks/finetune.py`.\n\n" + "\n".join(rows) + "\n\n"
        "Real tokens exclude padding. slimops batches by length (no packing), the plain script pads each random batch "
        "to its longest example. Both put the loss on the response only. "
        + ("Olive (its own venv) trains on the whole templated text, with the same template, so its losses are not "
           "comparable with the response-only losses above; its real-token count is estimated (steps x batch x mean "
           "example length) because it reports none.\n" if args.olive_venv else "Olive was not measured.\n")
    )
    if not args.no_write:
        write_section("Fine-tuning", body)
    print(body)


if __name__ == "__main__":
    main()
