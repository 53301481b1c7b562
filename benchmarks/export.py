"""Export: SmolLM2-135M to int4 ONNX with slimops, against running the builder by hand, and the
int4 model's decode speed (onnxruntime-genai) against PyTorch fp32 `generate`.

    python benchmarks/export.py [--tokens 128] [--repeats 3] [--work DIR]

1. `slimops run`, cold cache, of `model: smollm2-135m` -> onnx (cpu-int4: the builder's int4), and
   -> onnx fp32 -> quantize (rtn asymmetric as in configs/int4-cpu.yaml, and hqq; lm_head int8):
   the GGUF is converted to an HF folder once (from_gguf); every model is parity-checked.
2. The same builder call run directly on that HF folder (`python -m onnxruntime_genai.models.builder
   -p int4 -e cpu`, with the cpu-int4 block size and accuracy level).
3. Greedy decode of `--tokens` tokens after a short prompt: onnxruntime-genai on each int4 model vs
   transformers `generate` in fp32 (KV cache on both); tokens/s of the decode phase, median of
   `--repeats`.
The table goes into docs/benchmarks.md under "Export".
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import commit, machine, write_section  # noqa: E402

PROMPT = "The capital of France is"
PIPELINE = """\
name: export-bench
model: smollm2-135m
targets: {laptop: cpu-int4}
passes:
  export: {type: onnx, parity: {min_top1: 0.0}}     # the builder's own int4 (rtn), recorded, never failed
  fp32: {type: onnx, precision: fp32, inputs: [model]}
  rtn: {type: quantize, method: rtn, symmetric: false, keep_lm_head_int8: true, parity: {min_top1: 0.0}}
  hqq: {type: quantize, method: hqq, keep_lm_head_int8: true, inputs: [fp32], parity: {min_top1: 0.0}}
engine: {cache_dir: cache, output_dir: out}
"""


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def slimops_run(work: Path) -> tuple[float, dict]:
    (work / "pipeline.yaml").write_text(PIPELINE)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slimops.cli", "run", "--config", "pipeline.yaml", "-q"], cwd=work, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    return seconds, json.loads((work / "out" / "run.json").read_text())["nodes"]


def builder_direct(hf: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", "int4",
                    "-e", "cpu", "-c", str(out.parent / "builder-cache"), "--extra_options", "block_size=32", "accuracy_level=4",
                    "hf_token=false"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def genai_decode(folder: Path, tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) for greedy generation of `tokens` tokens."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    ids = tokenizer.encode(PROMPT)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + tokens, min_length=len(ids) + tokens, do_sample=False)
    generator = og.Generator(model, params)
    t0 = time.perf_counter()
    generator.append_tokens(ids)
    generator.generate_next_token()
    t1 = time.perf_counter()
    produced = 1
    while not generator.is_done():
        generator.generate_next_token()
        produced += 1
    t2 = time.perf_counter()
    return t1 - t0, (produced - 1) / (t2 - t1)


def torch_decode(folder: Path, tokens: int, threads: int | None = None) -> tuple[float, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        model.generate(**ids, max_new_tokens=2, do_sample=False)  # warm-up: the first call pays for lazy set-up
        t0 = time.perf_counter()
        model.generate(**ids, max_new_tokens=1, do_sample=False)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        total = time.perf_counter() - t0
    produced = out.shape[1] - ids["input_ids"].shape[1]
    return first, (produced - 1) / max(total - first, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, help="keep the work folder here (default: a temp folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="slimops-export-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "cache", ignore_errors=True)
    shutil.rmtree(work / "out", ignore_errors=True)

    run_seconds, nodes = slimops_run(work)
    hf = Path(nodes["model.from_gguf"]["path"])
    onnx_dir = Path(nodes["export@laptop"]["path"])
    export = nodes["export@laptop"]
    direct = builder_direct(hf, work / "direct")

    rtn, hqq = nodes["rtn@laptop"], nodes["hqq@laptop"]
    rtn_dir, hqq_dir = Path(rtn["path"]), Path(hqq["path"])
    runs = {
        "builder int4": [genai_decode(onnx_dir, args.tokens) for _ in range(args.repeats)],
        "rtn int4": [genai_decode(rtn_dir, args.tokens) for _ in range(args.repeats)],
        "hqq int4": [genai_decode(hqq_dir, args.tokens) for _ in range(args.repeats)],
        "PyTorch fp32": [torch_decode(hf, args.tokens) for _ in range(args.repeats)],
        "PyTorch fp32, 1 thread": [torch_decode(hf, args.tokens, threads=1) for _ in range(args.repeats)],
    }
    tps = {name: statistics.median(r[1] for r in values) for name, values in runs.items()}
    ttft = {name: statistics.median(r[0] for r in values) * 1000 for name, values in runs.items()}

    def parity(metrics):
        return f"{metrics['parity_top1']:.3f} / {metrics['parity_agreement']:.3f} / {metrics['parity_max_logit_diff']:.3g}"

    rows = [
        ("`slimops run` cold, whole process (from_gguf, 2 exports, 2 quantizes, 4 parity checks)", f"{run_seconds:.1f} s"),
        ("  from_gguf node (GGUF -> HF fp32)", f"{nodes['model.from_gguf']['seconds']:.1f} s"),
        ("  onnx node, int4 by the builder (builder + parity check)", f"{export['seconds']:.1f} s"),
        ("  of which the builder subprocess", f"{export['metrics']['build_seconds']:.1f} s"),
        ("builder run directly on the same HF folder, int4", f"{direct:.1f} s"),
        ("  onnx node fp32 / quantize node rtn / quantize node hqq (each with parity)",
         f"{nodes['fp32@laptop']['seconds']:.1f} s / {rtn['seconds']:.1f} s / {hqq['seconds']:.1f} s"),
        (f"decode tok/s ({args.tokens} tokens, median of {args.repeats}): " + " / ".join(runs), " / ".join(f"{tps[n]:.1f}" for n in runs)),
        ("decode speed-up over the faster PyTorch fp32 row: builder int4 / rtn int4 / hqq int4",
         " / ".join(f"{tps[n] / max(tps['PyTorch fp32'], tps['PyTorch fp32, 1 thread']):.1f}x" for n in ("builder int4", "rtn int4", "hqq int4"))),
        ("time to first token (ms): " + " / ".join(runs), " / ".join(f"{ttft[n]:.0f}" for n in runs)),
        ("size on disk (MB): HF fp32 / builder int4 / rtn int4 / hqq int4",
         f"{size_mb(hf):.0f} / {size_mb(onnx_dir):.0f} / {size_mb(rtn_dir):.0f} / {size_mb(hqq_dir):.0f}"),
        ("parity vs fp32 PyTorch, builder int4 (sym, lm_head int4): top-1 / greedy agreement / max logit diff", parity(export["metrics"])),
        ("parity vs the fp32 ONNX, rtn int4 (asym, lm_head int8): same", parity(rtn["metrics"])),
        ("parity vs the fp32 ONNX, hqq int4 (lm_head int8): same", parity(hqq["metrics"])),
        ("parity, fp32 ONNX vs PyTorch: top-1 / greedy agreement / max logit diff", parity(nodes["fp32@laptop"]["metrics"])),
    ]
    body = (
        f"`python benchmarks/export.py --tokens {args.tokens} --repeats {args.repeats}` at commit `{commit()}` on {machine()}, "
        "shared with other work while it ran: timings vary between runs, PyTorch's threads most (hence the 1-thread row).\n"
        "SmolLM2-135M from the bundled GGUF, target `cpu-int4` (block 32, accuracy level 4).\n\n"
        "| what | value |\n| --- | --- |\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    )
    write_section("Export", body)
    print(body)


if __name__ == "__main__":
    main()
