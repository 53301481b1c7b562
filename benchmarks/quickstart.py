"""Quickstart: `slimops run --config configs/quickstart.yaml` with a fresh cache, then all-cached reruns.

    python benchmarks/quickstart.py [--reruns 3] [--work DIR]

Copies the template and its data into a work folder, runs it once cold under `/usr/bin/time -v`
(wall time and peak RSS of the whole process), reruns it --reruns times, and writes the per-node
table with the goals into docs/benchmarks.md under "Quickstart".
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import commit, machine, write_section  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def timed_run(work: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS GB, exit code) of one `slimops run`."""
    command = ["slimops", "run", "--config", "quickstart.yaml", "-q"]
    if shutil.which("/usr/bin/time"):
        done = subprocess.run(["/usr/bin/time", "-v", *command], cwd=work, capture_output=True, text=True)
        wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", done.stderr)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
        hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
        return hours * 3600 + minutes * 60 + seconds, int(rss.group(1)) / 2**20, done.returncode
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=work, capture_output=True, text=True)
    return time.perf_counter() - t0, float("nan"), done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reruns", type=int, default=3)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="slimops-quickstart-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy2(CONFIGS / "quickstart.yaml", work / "quickstart.yaml")
    shutil.copytree(CONFIGS / "data", work / "data")

    cold, rss, code = timed_run(work)
    nodes = cold_nodes = json.loads((work / "out" / "run.json").read_text())["nodes"]  # read before the reruns rewrite it
    reruns = [timed_run(work)[0] for _ in range(args.reruns)]

    def after(node: str) -> dict:
        return nodes[node]["metrics"].get("after", {})

    ft = nodes["finetune"]["metrics"]
    base = nodes["eval.before"]["metrics"]
    torch_after, int4_after = after("eval"), after("eval_int4@laptop")
    int4 = nodes["int4@laptop"]
    rows = [
        ("`model.from_gguf`", cold_nodes["model.from_gguf"]["seconds"], "SmolLM2-135M-Instruct as an fp32 HF folder"),
        (f"`finetune` (lora r 16, alpha 32, defaults otherwise: {ft['steps']} steps of ~1024 tokens)", cold_nodes["finetune"]["seconds"],
         f"eval loss {ft.get('eval_loss', float('nan')):.3f}, {ft.get('tokens_per_s', 0):.1f} real tokens/s"),
        ("`merge`", cold_nodes["merge"]["seconds"], "merged HF model (PyTorch)"),
        ("`eval.before` (input model, PyTorch fp32)", cold_nodes["eval.before"]["seconds"],
         f"tone accuracy {base['accuracy']:.3f}, macro F1 {base['f1']:.3f}, {base['latency_p50_ms']:.1f} ms/token p50, {base['size_mb']:.0f} MB"),
        ("`eval` (fine-tuned, PyTorch fp32)", cold_nodes["eval"]["seconds"],
         f"tone accuracy {torch_after['accuracy']:.3f}, macro F1 {torch_after['f1']:.3f}, {torch_after['latency_p50_ms']:.1f} ms/token p50"),
        ("`int4@laptop` (onnx, cpu-int4: affine int4 + the LoRA beside it)", cold_nodes["int4@laptop"]["seconds"],
         f"{int4['metrics']['size_mb']:.0f} MB; parity with the merged model: top-1 {int4['metrics']['parity_top1']:.3f}"),
        ("`eval_int4@laptop` (int4 ONNX, onnxruntime-genai)", cold_nodes["eval_int4@laptop"]["seconds"],
         f"tone accuracy {int4_after['accuracy']:.3f}, macro F1 {int4_after['f1']:.3f}, {int4_after['latency_p50_ms']:.1f} ms/token p50, "
         f"{int4_after['size_mb']:.0f} MB"),
        ("whole process, cold cache", cold, f"{int(cold // 60)} min {cold % 60:.0f} s wall, peak RSS {rss:.1f} GB, exit {code}"),
        (f"rerun, all cached ({args.reruns} runs)", statistics.median(reruns), " / ".join(f"{r:.2f}" for r in reruns) + " s"),
    ]
    goals = [f"`{g['metric']}` {g['rule']}: {'met' if g['ok'] else 'MISSED'} ({g['value']:.3f})" if g.get("value") is not None
             else f"`{g['metric']}` {g['rule']}: not measured"
             for node in ("eval", "eval_int4@laptop") for g in nodes[node].get("goals", [])]
    body = (
        f"`python benchmarks/quickstart.py` (`slimops run --config configs/quickstart.yaml`, fresh cache, then "
        f"{args.reruns} all-cached reruns) at commit `{commit()}` on {machine()}.\n"
        "Tone accuracy and macro F1 on the 60 held-out phrases; latency: greedy decode of the answer, per-token p50.\n\n"
        "| node | seconds | result |\n| --- | --- | --- |\n"
        + "\n".join(f"| {name} | {seconds:.1f} | {text} |" for name, seconds, text in rows)
        + "\n\nGoals: " + "; ".join(goals) + "."
    )
    write_section("Quickstart", body)
    print(body)


if __name__ == "__main__":
    main()
