"""One Olive workflow config, run as it is by Olive (`olive run --config`) and by slimops (`slimops run --config`).

    python benchmarks/olive_configs.py [--rounds 3] [--steps 60] [--olive-venv DIR] [--no-write]

The file is tests/olive/lora.yaml (the walkthrough's LoRA config: r 16, lora_alpha 32, q_proj and
v_proj, a text template over the tone phrases, line-by-line rows of 64 tokens, batches of 4) with
four changes both tools see alike: `model_path` is SmolLM2-135M-Instruct as an HF folder (Olive
reads no GGUF; slimops converts the registered one once, outside the timings), `type: HfModel`
(Olive 0.13 refuses `PyTorchModel` with a `task`), `alpha: 32` for `lora_alpha: 32` (Olive 0.13
names it `alpha` and ignores `lora_alpha` without a word, training at its default 16; slimops
reads either), and `max_steps` is `--steps`. The two alternate,
`--rounds` times, each from an empty cache in a fresh process; the table holds medians.

Reported: wall time from process start to a saved adapter, the trainable parameters and final
training loss each tool logs, the adapter's settings as saved (adapter_config.json), and held-out
tone accuracy on the last 60 phrases, scored the same way for both (`benchmarks/tone_accuracy.py`).
Olive runs from its own venv (benchmarks/finetune.py makes it once: torch 2.13.0 CPU, olive-ai 0.13
with its finetune extra, datasets, requests). The table goes into docs/benchmarks.md under
"Olive workflow configs".
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune as bench  # noqa: E402
from report import commit, machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "olive" / "lora.yaml"
SETTINGS = ("r", "lora_alpha", "lora_dropout", "target_modules")


def config_for(model: Path, steps: int, folder: Path) -> Path:
    """The walkthrough's file, as both tools read it here, beside the tone data."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(bench.DATA, folder / "tone.jsonl")
    text = SOURCE.read_text().replace("smollm2-135m", str(model)).replace("type: PyTorchModel", "type: HfModel")
    text = re.sub(r"max_steps: \d+", f"max_steps: {steps}", text)
    text = text.replace("lora_alpha:", "alpha:")  # Olive 0.13 names it alpha: it ignores lora_alpha and trains at 16
    path = folder / "olive-config.yaml"
    path.write_text(text)
    return path


def settings_of(adapter: Path) -> dict:
    saved = json.loads((adapter / "adapter_config.json").read_text())
    return {key: sorted(saved[key]) if isinstance(saved[key], list) else saved[key] for key in SETTINGS}


def run_olive(olive: Path, config: Path) -> dict:
    folder = config.parent
    for stale in ("out", ".olive-cache", "models"):
        shutil.rmtree(folder / stale, ignore_errors=True)
    wall, rss, log, _ = bench.timed([str(olive), "run", "--config", config.name], folder)
    trainable = max(int(found.replace(",", "")) for found in re.findall(r"trainable params: ([\d,]+)", log))
    loss = float(re.findall(r"'train_loss': '?([\d.]+)", log)[-1])
    return {"wall_s": wall, "peak_rss_mb": rss, "trainable": trainable, "train_loss": loss, "adapter": folder / "out" / "adapter"}


def run_slimops(config: Path) -> dict:
    folder = config.parent
    for stale in ("out", ".slimops"):
        shutil.rmtree(folder / stale, ignore_errors=True)
    wall, rss, log, _ = bench.timed([sys.executable, "-m", "slimops.cli", "run", "--config", config.name, "--quiet"], folder)
    assert "an Olive workflow config; running it as the equivalent slimops pipeline" in log
    metrics = json.loads((folder / "out" / "run.json").read_text())["nodes"]["lora"]["metrics"]
    return {"wall_s": wall, "peak_rss_mb": rss, "trainable": metrics["trainable_params"], "train_loss": metrics["train_loss"],
            "adapter": bench.adapter_in(folder / "out" / "lora")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--olive-venv", type=Path, default=Path.home() / ".cache" / "slimops-bench" / "olive-0.13")
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimops-bench-olive-configs"))
    parser.add_argument("--no-write", action="store_true", help="print the table; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = bench.convert(args.work)
    olive = bench.olive_venv(args.olive_venv)
    configs = {name: config_for(model, args.steps, args.work / name) for name in ("olive", "slimops")}
    results: dict[str, list[dict]] = {"olive": [], "slimops": []}
    for round_ in range(args.rounds):
        for name, job in (("olive", lambda: run_olive(olive, configs["olive"])), ("slimops", lambda: run_slimops(configs["slimops"]))):
            result = job()
            result["accuracy"] = bench.accuracy(model, result["adapter"])
            result["settings"] = settings_of(result["adapter"])
            results[name].append(result)
            print(round_, name, json.dumps({k: v for k, v in result.items() if k != "adapter"}, default=str), flush=True)

    rows = ["| run by | wall s | peak RSS MB | trainable params | train loss | held-out accuracy | adapter saved as |",
            "|---|---|---|---|---|---|---|"]
    for name, label in (("olive", "Olive 0.13 (`olive run --config`)"), ("slimops", "slimops (`slimops run --config`)")):
        runs = results[name]
        med = {key: statistics.median(r[key] for r in runs) for key in ("wall_s", "peak_rss_mb", "train_loss", "accuracy")}
        saved = runs[0]["settings"]
        rows.append(f"| {label} | {med['wall_s']:.1f} | {med['peak_rss_mb']:.0f} | {runs[0]['trainable']:,} | {med['train_loss']:.3f} | "
                    f"{med['accuracy']:.3f} | r {saved['r']}, alpha {saved['lora_alpha']:g}, dropout {saved['lora_dropout']:g}, "
                    f"{'/'.join(saved['target_modules'])} |")
    ratio = statistics.median(r["wall_s"] for r in results["olive"]) / statistics.median(r["wall_s"] for r in results["slimops"])
    body = "\n".join([
        f"`python benchmarks/olive_configs.py --rounds {args.rounds} --steps {args.steps}` on commit {commit()}, {machine()}. "
        f"tests/olive/lora.yaml (the walkthrough's LoRA file) with an HF folder of SmolLM2-135M-Instruct as `model_path`, "
        f"`type: HfModel`, `alpha: 32` (Olive 0.13 ignores the file's `lora_alpha` and trains at 16) and `max_steps: {args.steps}`, "
        f"read by each tool as it is; medians of {args.rounds} alternating runs, "
        "each from an empty cache. Held-out accuracy: the last 60 tone phrases, scored by benchmarks/tone_accuracy.py for both.",
        "", *rows, "",
        f"Wall time, Olive over slimops: {ratio:.2f}x.",
    ])
    print(body)
    if not args.no_write:
        write_section("Olive workflow configs", body)


if __name__ == "__main__":
    main()
