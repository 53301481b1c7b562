"""Export: SmolLM2-135M to int4 ONNX for `cpu-int4`, against PyTorch fp32, the builder run by hand,
and (with --olive-venv) Olive 0.13's `olive auto-opt`.

    python benchmarks/export.py [--tokens 64] [--repeats 5] [--olive-venv /opt/olive-venv] [--work DIR]

1. `slimops run`, cold cache: the bundled GGUF -> HF (from_gguf) -> `onnx` four ways: on `cpu-int4`
   slimops's default (affine int4), the builder's own int4 (`int4_method: builder`) and fp32; on
   `cpu-int8` slimops's default (the builder's weight-only int8, the tied embedding read from it).
2. Engine overhead on conversion: `slimops run` of a one-node pipeline (the builder's int4 on the
   HF folder, parity check off, cold cache) against `python -m onnxruntime_genai.models.builder`
   with the same options, and that command through slimops's launcher (which skips the
   interpreter's teardown), alternating, median of --repeats (at least 5).
3. Decode: greedy, a 32-token prompt, --tokens new tokens; onnxruntime-genai for each ONNX model,
   transformers `generate` (KV cache) for PyTorch fp32; tokens/s of the decode phase, median of
   --repeats, the runs of all models interleaved.
4. Agreement with PyTorch fp32, teacher-forced: fp32's greedy continuation (--tokens tokens) of 5
   chat prompts is fed to each model; the share of positions whose argmax is fp32's.
5. Size on disk against the fp32 weights; decode speed against a memory-bandwidth bound (read
   bandwidth measured here, bytes per token ~ the model's weight bytes).
Olive runs in its own venv (`python3 -m venv DIR && DIR/bin/pip install torch==2.13.0 &&
DIR/bin/pip install "olive-ai[finetune]==0.13.0" && DIR/bin/pip install --no-deps onnxruntime-genai==0.13.2`:
Olive 0.13's ModelBuilder pass imports `onnxruntime_genai.models.quantized_model`, which 0.14 and
later lack, and with 0.15.2 it exits 0 without a model); slimops never imports it.
The table goes into docs/benchmarks.md under "Export".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import commit, machine, write_section  # noqa: E402

from slimops.sizes import size_mb  # noqa: E402  (the one measure of size on disk, as the passes report it)

PIPELINE = """\
name: export-bench
model: smollm2-135m
targets: {laptop: cpu-int4, box: cpu-int8}
passes:
  int4: {type: onnx, targets: [laptop]}                # slimops's default for cpu-int4: affine
  builder: {type: onnx, int4_method: builder, inputs: [model], targets: [laptop], parity: {min_top1: 0.0}}
  fp32: {type: onnx, precision: fp32, inputs: [model], targets: [laptop]}
  int8: {type: onnx, inputs: [model], targets: [box]}  # slimops's default for cpu-int8 decoders: weight-only int8
engine: {cache_dir: cache, output_dir: out}
"""
OVERHEAD = """\
name: overhead
model: {path: "%s"}
targets: {laptop: cpu-int4}
passes:
  builder: {type: onnx, int4_method: builder, parity: {enabled: false}}
engine: {cache_dir: cache-overhead, output_dir: out-overhead}
"""
BUILDER_ARGS = ["-p", "int4", "-e", "cpu", "--extra_options", "block_size=32", "accuracy_level=4", "hf_token=false"]
LONG_TEXT = ("The history of the city begins with a small fishing village on the river, where traders from the north "
             "and the south met every spring to exchange salt, wool and iron for grain and dried fish.")
CHAT_PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a CPU cache is.",
    "Give me three tips for learning to cook.",
    "What is the tone of: I can't believe you broke my phone again!",
    "Summarize the plot of Romeo and Juliet in two sentences.",
]


def weight_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in (".data", ".safetensors", ".onnx")) / 2**20


def bytes_per_token_mb(folder: Path) -> float:
    """Weight bytes one decode step reads: every initializer except tables only gathered from
    (an embedding read one row at a time)."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    users: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    total = 0
    for init in model.graph.initializer:
        ops = users.get(init.name, set())
        if ops and ops <= {"Gather", "GatherBlockQuantized", "Transpose"}:
            continue
        length = next((int(e.value) for e in init.external_data if e.key == "length"), None)
        total += length if length is not None else len(init.raw_data)
    return total / 2**20


def prompt_ids(hf: Path) -> list[int]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(hf)(LONG_TEXT)["input_ids"]
    assert len(ids) >= 32, len(ids)
    return ids[:32]


def genai_decode(folder: Path, ids: list[int], tokens: int) -> float:
    """Decode tokens/s of greedy generation of `tokens` tokens after `ids`."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + tokens, min_length=len(ids) + tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    generator.generate_next_token()
    t0, produced = time.perf_counter(), 1
    while not generator.is_done():
        generator.generate_next_token()
        produced += 1
    return (produced - 1) / (time.perf_counter() - t0)


def torch_decode(hf: Path, ids: list[int], tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        model.generate(x, max_new_tokens=2, do_sample=False)  # warm-up: lazy set-up
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(x, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        total = time.perf_counter() - t0
    return (out.shape[1] - len(ids) - 1) / max(total - first, 1e-9)


def teacher_forced(hf: Path, folders: dict[str, Path], tokens: int) -> dict[str, float]:
    """Share of positions where each ONNX model's argmax is fp32 PyTorch's, on fp32's own continuations."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimops.passes._runtime.ort import OnnxCausalLM

    tokenizer = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    cases = []
    for prompt in CHAT_PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt")
        ids = ids if torch.is_tensor(ids) else ids["input_ids"]
        with torch.no_grad():
            full = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            reference = model(full).logits[0].argmax(-1).numpy()
        cases.append((full[0].tolist(), ids.shape[1], reference))
    scores = {}
    for name, folder in folders.items():
        onnx_model = OnnxCausalLM(folder, ["CPUExecutionProvider"])
        shares = [float((onnx_model.logits(full)[start - 1:-1].argmax(-1) == ref[start - 1:-1]).mean()) for full, start, ref in cases]
        scores[name] = float(np.mean(shares))
    return scores


def read_bandwidth_gbs() -> float:
    """Read bandwidth with every core: torch sums a 1 GiB tensor, best of 5."""
    import torch

    x = torch.ones(2**28, dtype=torch.float32)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum().item()
        best = max(best, x.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return best


def engine_overhead(work: Path, hf: Path, repeats: int) -> tuple[float, float, float, float, float]:
    """(slimops run s, builder direct s, builder subprocess inside slimops s, slimops run minus its own builder
    subprocess s, the builder through slimops's launcher by hand s), medians.

    Both commands run as they would from an installed package, with bytecode caching on (a
    PYTHONDONTWRITEBYTECODE in this shell would make slimops's checkout recompile on every start).
    """
    (work / "overhead.yaml").write_text(OVERHEAD % hf)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    from slimops.passes._onnx.builder import BUILDER_MODULE, LAUNCHER

    ours, direct, inner, launched = [], [], [], []
    for _ in range(repeats):
        shutil.rmtree(work / "cache-overhead", ignore_errors=True)
        shutil.rmtree(work / "out-overhead", ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "slimops.cli", "run", "--config", "overhead.yaml", "-q"], cwd=work, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        ours.append(time.perf_counter() - t0)
        inner.append(json.loads((work / "out-overhead" / "run.json").read_text())["nodes"]["builder@laptop"]["metrics"]["build_seconds"])
        out = work / "direct"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), *BUILDER_ARGS[:4],
                        "-c", str(work / "direct-cache"), *BUILDER_ARGS[4:]], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=env)
        direct.append(time.perf_counter() - t0)
        shutil.rmtree(work / "direct-cache", ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", LAUNCHER, BUILDER_MODULE, "-i", str(hf), "-o", str(out), *BUILDER_ARGS[:4],
                        "-c", str(work / "direct-cache"), *BUILDER_ARGS[4:]], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=env)
        launched.append(time.perf_counter() - t0)
        shutil.rmtree(work / "direct-cache", ignore_errors=True)
    return (statistics.median(ours), statistics.median(direct), statistics.median(inner),
            statistics.median(a - b for a, b in zip(ours, inner)), statistics.median(launched))


def olive_auto_opt(venv: Path, hf: Path, out: Path) -> float:
    """`olive auto-opt` to int4 for the CPU in its own venv; wall seconds. The model folder is out/model."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([str(venv / "bin" / "olive"), "auto-opt", "--model_name_or_path", str(hf), "--output_path", str(out),
                    "--device", "cpu", "--provider", "CPUExecutionProvider", "--precision", "int4", "--use_model_builder",
                    "--log_level", "3"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=out.parent)
    return time.perf_counter() - t0


def find_genai_folder(root: Path) -> Path:
    return next(p.parent for p in sorted(root.rglob("genai_config.json")))


def with_threads(folder: Path, dest: Path, threads: int) -> Path:
    """A copy of a genai folder (weights linked, not copied) whose config asks for `threads` intra-op threads."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for item in folder.iterdir():
        if item.name != "genai_config.json":
            (dest / item.name).symlink_to(item.resolve())
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    (dest / "genai_config.json").write_text(json.dumps(config, indent=4))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--olive-venv", type=Path, help="a venv with olive-ai 0.13 (see the docstring)")
    parser.add_argument("--work", type=Path, help="keep the work folder here (default: a temp folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="slimops-export-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("cache", "out"):
        shutil.rmtree(work / name, ignore_errors=True)

    (work / "pipeline.yaml").write_text(PIPELINE)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slimops.cli", "run", "--config", "pipeline.yaml", "-q"], cwd=work, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_seconds = time.perf_counter() - t0
    nodes = json.loads((work / "out" / "run.json").read_text())["nodes"]
    hf = Path(nodes["model.from_gguf"]["path"])
    folders = {"slimops int4 (affine)": Path(nodes["int4@laptop"]["path"]), "builder int4": Path(nodes["builder@laptop"]["path"]),
               "slimops int8 (weight-only, shared embedding)": Path(nodes["int8@box"]["path"]), "fp32 ONNX": Path(nodes["fp32@laptop"]["path"])}
    olive_seconds = None
    if args.olive_venv:
        olive_seconds = olive_auto_opt(args.olive_venv, hf, work / "olive")
        folders["Olive 0.13 auto-opt int4"] = find_genai_folder(work / "olive")
        # Olive's genai_config leaves the thread count to onnxruntime-genai (one thread); slimops writes 0 (every
        # physical core) for cpu targets. The same Olive model with that one line edited, for a like-for-like runtime:
        folders["Olive 0.13 int4, threads edited to 0"] = with_threads(folders["Olive 0.13 auto-opt int4"], work / "olive-threads", 0)

    ours, direct, inner, fixed, launched = engine_overhead(work, hf, max(5, args.repeats))
    ids = prompt_ids(hf)
    speeds: dict[str, list[float]] = {name: [] for name in [*folders, "PyTorch fp32"]}
    for _ in range(args.repeats):  # interleaved, so that the machine's drift hits every model alike
        for name, folder in folders.items():
            speeds[name].append(genai_decode(folder, ids, args.tokens))
        speeds["PyTorch fp32"].append(torch_decode(hf, ids, args.tokens))
    tps = {name: statistics.median(values) for name, values in speeds.items()}
    agreement = teacher_forced(hf, {name: folder for name, folder in folders.items() if "edited" not in name}, args.tokens)
    agreement.update({name: agreement["Olive 0.13 auto-opt int4"] for name in folders if "edited" in name})
    bandwidth = read_bandwidth_gbs()
    fp32_mb = weight_mb(hf)

    rows = []
    for name, folder in folders.items():
        mb = size_mb(folder)
        bound = bandwidth * 1e9 / (bytes_per_token_mb(folder) * 2**20)
        rows.append([name, f"{tps[name]:.1f}", f"{tps[name] / tps['PyTorch fp32']:.1f}x", f"{mb:.0f}", f"{mb / fp32_mb * 100:.0f}%",
                     f"{agreement[name]:.3f}", f"{tps[name] / bound * 100:.0f}% of {bound:.0f}"])
    rows.append(["PyTorch fp32 (transformers generate)", f"{tps['PyTorch fp32']:.1f}", "1.0x", f"{fp32_mb:.0f}", "100%", "1 (itself)", ""])
    head = ["model", "decode tok/s", "vs PyTorch", "size MB", "vs fp32", "teacher-forced top-1", "bandwidth bound (tok/s)"]
    table = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows)
    affine = nodes["int4@laptop"]
    timing = [
        f"- `slimops run`, cold cache, whole process (from_gguf, four exports, four parity checks): {run_seconds:.1f} s; "
        f"from_gguf {nodes['model.from_gguf']['seconds']:.1f} s; affine int4 node {affine['seconds']:.1f} s "
        f"(builder at fp32 {affine['metrics']['build_seconds']:.1f} s, then the affine rewrite and the parity check).",
        f"- Engine overhead on conversion (builder int4, parity off, median of {max(5, args.repeats)}, alternating): "
        f"`slimops run` {ours:.1f} s against the builder run directly {direct:.1f} s: {(ours / direct - 1) * 100:+.1f}% "
        f"(the builder subprocess inside slimops: {inner:.1f} s; slimops's own time, each run minus its builder subprocess: "
        f"{fixed:.2f} s, {fixed / direct * 100:.1f}% of the direct run). slimops starts the builder through a launcher that "
        f"leaves once the builder returns, without Python's teardown of torch and transformers: the builder run that way "
        f"by hand took {launched:.1f} s, {direct - launched:.1f} s less than `python -m`.",
        f"- Read bandwidth, torch sum over 1 GiB with every core, best of 5: {bandwidth:.1f} GB/s; bytes per token: the "
        "model's initializers except tables it only gathers rows from (an untied embedding).",
    ]
    if olive_seconds is not None:
        timing.append(f"- Olive 0.13 `olive auto-opt --precision int4 --use_model_builder` (its own venv): {olive_seconds:.1f} s wall.")
    body = (
        f"`python benchmarks/export.py --tokens {args.tokens} --repeats {args.repeats}"
        f"{' --olive-venv ' + str(args.olive_venv) if args.olive_venv else ''}` at commit `{commit()}` on {machine()}.\n"
        f"SmolLM2-135M from the bundled GGUF (Q4_1 linears, Q8_0 embedding), target `cpu-int4` (block 32, accuracy level 4). "
        f"Decode: greedy, a 32-token prompt, {args.tokens} new tokens, median of {args.repeats} runs interleaved across models. "
        f"Agreement: teacher-forced top-1 against PyTorch fp32 on fp32's own {args.tokens}-token continuations of "
        f"{len(CHAT_PROMPTS)} chat prompts.\n\n" + table + "\n\n" + "\n".join(timing)
    )
    write_section("Export", body)
    print(body)


if __name__ == "__main__":
    main()
