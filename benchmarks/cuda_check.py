"""CUDA check: the fine-tuning passes (lora, dora, qlora, full) and merge_adapter on a GPU,
through the real engine (`slimops.run` on a pipeline YAML), on two random-weight llamas.

    python benchmarks/cuda_check.py [--out DIR] [--models tiny,smol] [--methods lora,dora,qlora,full]
    python benchmarks/cuda_check.py --write-doc DIR    # DIR/results.json -> docs/benchmarks.md

Models: the tests' tiny llama (2 layers, hidden 32) trained in fp32, and a SmolLM2-135M-shaped
llama (hidden 576, 30 layers, 9 heads, 3 kv heads, intermediate 1536, vocab 49152, tied
embeddings) with random weights, trained with bf16 autocast; both use the tests' word-level
tokenizer and tone data (96 train / 24 eval rows). Each (model, method) runs in a fresh process
so that peak CUDA memory is its own and a crash or hang costs one row; a failure is recorded
with its error, never raised. Recorded per row: where the Trainer and the weights were (torch
devices), the weights' dtypes, whether the loss fell (mean of the first 3 logged losses against
the last 3), node wall seconds, train seconds, tokens/s (non-padding) and
torch.cuda.max_memory_allocated. Without CUDA it runs the same jobs on the CPU, which proves the
script, not the GPU path. Writes DIR/results.json and DIR/table.md after every job, and prints
the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

METHODS = ["lora", "dora", "qlora", "full"]
PROMPT = "<|im_start|>user\\n{phrase}<|im_end|>\\n<|im_start|>assistant\\n"
# model -> (precision, steps, batch, adapter lr, full lr, extra params)
SETTINGS = {
    "tiny": ("fp32", 16, 8, 0.01, 0.003, {"eval_steps": 8}),
    "smol": ("bf16", 30, 8, 1e-3, 1e-4, {"max_seq_len": 64, "save_steps": 1000}),
}
MODEL_NAMES = {"tiny": "tiny llama (2 layers, hidden 32)", "smol": "SmolLM2-135M-shaped llama (random weights)"}
TITLE = "CUDA fine-tuning check"


# -- assets ----------------------------------------------------------------------------------------


def smol_shaped(folder: Path) -> Path:
    """A llama of SmolLM2-135M's shape with random weights, and the tests' word-level tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from assets import build_tokenizer

    tokenizer = build_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=2048, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def build_assets(work: Path, models: list[str]) -> dict[str, Path]:
    from assets import tiny_llama, tone_rows, write_jsonl

    assets = {"data": write_jsonl(work / "tone.jsonl", tone_rows(120))}
    if "tiny" in models:
        assets["tiny"] = tiny_llama(work / "tiny")
    if "smol" in models:
        assets["smol"] = smol_shaped(work / "smol")
    return assets


def pipeline(work: Path, model_path: Path, data: Path, model: str, method: str, steps: int | None) -> Path:
    precision, default_steps, batch, lr, full_lr, extra = SETTINGS[model]
    params = {
        "type": method, "data": "tone", "max_steps": steps or default_steps, "batch_size": batch,
        "learning_rate": full_lr if method == "full" else lr, "precision": precision, **extra,
    }
    passes = f"  ft: {json.dumps(params)}\n" + ("  merge: {type: merge_adapter}\n" if method == "lora" else "")
    text = textwrap.dedent(
        f"""\
        name: cuda-check-{model}-{method}
        model: {{path: {model_path}}}
        data:
          tone:
            files: {data}
            splits: {{train: "[:96]", eval: "[96:]"}}
            prompt: "{PROMPT}"
            response: "{{tone}}"
        engine: {{cache_dir: {work}/cache, output_dir: {work}/out}}
        passes:
        """
    ) + passes
    path = work / "pipeline.yaml"
    path.write_text(text)
    return path


# -- one job, in its own process -------------------------------------------------------------------


def child(model: str, method: str, model_path: Path, data: Path, steps: int | None) -> dict:
    """Run one pipeline; return what was measured, or the error."""
    import torch

    import slimops
    import slimops.passes.finetune as finetune
    from slimops.display import RunDisplay

    captured = {}
    make_trainer = finetune._trainer

    def spy(*args, **kwargs):  # keep the Trainer, to read its device and the model's afterwards
        captured["trainer"] = make_trainer(*args, **kwargs)
        return captured["trainer"]

    finetune._trainer = spy
    work = Path(tempfile.mkdtemp(prefix=f"cuda-check-{model}-{method}-"))
    row: dict = {"model": model, "method": method, "precision": SETTINGS[model][0]}
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        result = slimops.run(pipeline(work, model_path, data, model, method, steps), display=RunDisplay(quiet=True))
    except Exception as err:  # noqa: BLE001 - every failure is a row, not a crash
        row["error"] = _error_text(err)
        result = None
    row["wall_s"] = round(time.perf_counter() - started, 2)
    row["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
    trainer = captured.get("trainer")
    if trainer is not None:
        row.update(_placement(trainer))
    if result is None:
        return row
    ft = result["ft"]
    run_json = json.loads((work / "out" / "run.json").read_text())["nodes"]
    m = ft.metrics
    row.update(steps=m["steps"], train_s=m["train_seconds"], tokens=m["tokens"], tokens_per_s=m["tokens_per_s"],
               eval_loss=m.get("eval_loss"), node_s=run_json["ft"]["seconds"])
    curve = [e["loss"] for e in json.loads((Path(ft.path) / "train_log.json").read_text()) if "loss" in e]
    if len(curve) >= 6:
        first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
        row.update(loss_first=round(first, 3), loss_last=round(last, 3), loss_falls=last < first)
    if method == "lora":
        merged = Path(result["merge"].path)
        row["merge"] = {"seconds": run_json["merge"]["seconds"], "weights_changed": _weights_differ(model_path, merged)}
    return row


def _placement(trainer) -> dict:
    """Where training ran and in which dtypes (read after training, from the Trainer's model)."""
    model = trainer.model
    trainable = Counter(str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad)
    frozen = Counter(str(p.dtype).removeprefix("torch.") for p in model.parameters() if not p.requires_grad)
    linear4 = [m for m in model.modules() if type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes")]
    out = {
        "trainer_device": str(trainer.args.device),
        "param_devices": sorted({str(p.device) for p in model.parameters()}),
        "trainable_dtypes": dict(trainable),
        "frozen_dtypes": dict(frozen),
        "bf16_autocast": bool(trainer.args.bf16),
    }
    if linear4:
        out["linear4bit_layers"] = len(linear4)
        out["compute_dtype"] = str(getattr(linear4[0], "compute_dtype", None)).removeprefix("torch.")
        out["quant_type"] = getattr(linear4[0].weight, "quant_type", None)
    return out


def _error_text(err: BaseException) -> str:
    """The error's first line, and the last line of the node's traceback when the log names one."""
    text = str(err).splitlines()[0]
    log = getattr(err, "log", None)
    if log and Path(log).is_file():
        lines = [line for line in Path(log).read_text().splitlines() if line and not line.startswith((" ", "\t"))]
        tail = [line for line in lines if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]]
        if tail and tail[-1] not in text:
            text += f" | {tail[-1]}"
    return text[:600]


def _weights_differ(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return any(not left[k].equal(right[k]) for k in left if k in right and left[k].shape == right[k].shape)


# -- the table -------------------------------------------------------------------------------------


def environment() -> dict:
    import importlib.metadata

    import torch

    env = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    for dist in ("transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = None
    return env


def _dtypes(counts: dict) -> str:
    return "+".join(sorted(counts)) if counts else "-"


def table(rows: list[dict]) -> str:
    lines = [
        "| model | method | precision | Trainer device / weights on | trainable / frozen dtypes | steps | loss first 3 → last 3 | falls | node s | train s | tokens/s | peak CUDA MiB | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        where = f"{r.get('trainer_device', '-')} / {','.join(r.get('param_devices', [])) or '-'}"
        dtypes = f"{_dtypes(r.get('trainable_dtypes', {}))} / {_dtypes(r.get('frozen_dtypes', {}))}"
        if r.get("linear4bit_layers"):
            dtypes += f" ({r['linear4bit_layers']} Linear4bit, {r.get('quant_type')}, compute {r.get('compute_dtype')})"
        precision = r["precision"] + (" autocast" if r.get("bf16_autocast") else "")
        loss = f"{r['loss_first']} → {r['loss_last']}" if "loss_first" in r else "-"
        falls = {True: "yes", False: "**no**"}.get(r.get("loss_falls"), "-")
        error = r.get("error", "").replace("|", "/") or ""
        lines.append(
            f"| {r['model']} | {r['method']} | {precision} | {where} | {dtypes} | {r.get('steps', '-')} | {loss} | {falls} | "
            f"{r.get('node_s', '-')} | {r.get('train_s', '-')} | {r.get('tokens_per_s', '-')} | {r.get('peak_cuda_mib') if r.get('peak_cuda_mib') is not None else '-'} | {error} |"
        )
        if "merge" in r:
            m = r["merge"]
            lines.append(f"| {r['model']} | merge_adapter (after lora) | - | - | - | - | - | - | {m['seconds']} | - | - | - | "
                         f"{'' if m['weights_changed'] else '**no weight changed**'} |")
    return "\n".join(lines)


def write_doc(folder: Path, note: str = "") -> str:
    from report import write_section

    results = json.loads((folder / "results.json").read_text())
    env = results["env"]
    steps = "; ".join(f"{MODEL_NAMES[m]}: {SETTINGS[m][1]} steps, batch {SETTINGS[m][2]}, {SETTINGS[m][0]}" for m in SETTINGS)
    body = (
        f"Whether each fine-tuning pass runs on a GPU through `slimops.run`. GPU: {env.get('gpu', 'none')}; torch {env['torch']} "
        f"(CUDA {env['torch_cuda']}), transformers {env['transformers']}, peft {env['peft']}, accelerate {env['accelerate']}, "
        f"bitsandbytes {env['bitsandbytes']}. Commit {results['commit']}; {results['machine']}. One run of each job, in a fresh process. "
        f"Both models have **random weights** (the SmolLM2-135M-shaped one has the real model's shape only) and the tests' "
        f"word-level tokenizer, so examples are short (about 12 tokens: tokens / (steps x batch)) and tokens/s says little about real throughput; "
        f"the losses are not comparable with the real model's. {steps}; adapters r 16 on every linear layer. "
        f"`python benchmarks/cuda_check.py`.\n\n"
        + table(results["rows"])
        + "\n\n'node s' is the pass's whole time (load, train, eval, save); 'train s' the Trainer's; peak CUDA memory is "
        "`torch.cuda.max_memory_allocated` over the job. merge_adapter loads its base without a device map, so it runs on the CPU.\n"
        + (f"\n{note.strip()}\n" if note else "")
    )
    write_section(TITLE, body)
    return body


# -- driver ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or Path(tempfile.gettempdir()) / "cuda-check"))
    parser.add_argument("--models", default="tiny,smol")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, help="override every job's max_steps (for a quick try)")
    parser.add_argument("--budget", type=float, default=330, help="seconds; jobs not started by then are recorded as skipped")
    parser.add_argument("--job-timeout", type=float, default=180)
    parser.add_argument("--commit", help="the commit, where the tree has no .git (the device machine)")
    parser.add_argument("--write-doc", type=Path, metavar="DIR", help="write DIR/results.json into docs/benchmarks.md and stop")
    parser.add_argument("--note", default="", help="with --write-doc: a paragraph appended to the section")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "METHOD", "MODEL_PATH", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_doc:
        print(write_doc(args.write_doc, args.note))
        return
    if args.child:
        model, method, model_path, data = args.child
        print(json.dumps(child(model, method, Path(model_path), Path(data), args.steps)))
        return

    from report import commit, machine

    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    models, methods = args.models.split(","), args.methods.split(",")
    work = Path(tempfile.mkdtemp(prefix="cuda-check-assets-"))
    assets = build_assets(work, models)
    print(f"assets built in {time.perf_counter() - t0:.1f} s", flush=True)
    results = {"env": environment(), "commit": args.commit or commit(), "machine": machine(), "rows": []}
    for model in models:
        for method in methods:
            left = args.budget - (time.perf_counter() - t0)
            if left < 10:
                row = {"model": model, "method": method, "precision": SETTINGS[model][0], "error": "skipped: time budget spent"}
            else:
                row = run_child(model, method, assets, args.steps, min(args.job_timeout, left))
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
            (args.out / "table.md").write_text(table(results["rows"]) + "\n")
    print(json.dumps(results["env"]))
    print(table(results["rows"]))
    print(f"total {time.perf_counter() - t0:.1f} s")


def run_child(model: str, method: str, assets: dict, steps: int | None, timeout: float) -> dict:
    command = [sys.executable, __file__, "--child", model, method, str(assets[model]), str(assets["data"])]
    if steps:
        command += ["--steps", str(steps)]
    base = {"model": model, "method": method, "precision": SETTINGS[model][0]}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-3:]
        return {**base, "error": f"exit {done.returncode}: {' / '.join(tail)}"[:600]}


if __name__ == "__main__":
    main()
