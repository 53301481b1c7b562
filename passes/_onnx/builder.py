"""The onnxruntime-genai model builder, run as a subprocess so its memory and prints stay out of slimops.

- `BUILDER_EP`, `BUILDER_PRECISIONS`: the builder's execution provider for a target device, and
  the precisions it makes for each.
- `builder_options(params, target, precision)`: its `--extra_options` from the pass's params and
  the target's settings.
- `BUILDER_MODULE`, `LAUNCHER`, `run_builder(...)`: the launch, with its progress read from its output.
- `set_runtime_threads(folder, target)`, `check_genai_loads(folder)`: the genai_config.json it
  writes, tuned for the target and checked to load.
- `builder_refusal(config)`: why the installed builder cannot make this model (its architecture, its head size), or None.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from slimops.passes._onnx.files import OnnxError
from slimops.plugin import PassContext
from slimops.targets import TargetProfile

BUILDER_EP = {"cpu": "cpu", "cuda": "cuda", "dml": "dml", "npu": "cpu"}
# (device, precision) -> what the builder supports; others fall back as noted in `builder_precision`.
BUILDER_PRECISIONS = {
    "cpu": {"fp32", "int4", "int8"},
    "cuda": {"fp32", "fp16", "bf16", "int4", "int8"},
    "dml": {"fp16", "int4"},
}


def builder_options(params: Any, target: Any, precision: str) -> dict[str, str]:
    settings = dict((target.settings or {}).get("quantize", {})) if target is not None else {}
    options: dict[str, str] = {"hf_token": "false"}
    if precision in ("int4", "int8"):
        block = params.block_size or settings.get("block_size")
        level = params.accuracy_level if params.accuracy_level is not None else settings.get("accuracy_level")
        symmetric = params.symmetric if params.symmetric is not None else settings.get("symmetric")
        if block:
            options["block_size"] = str(block)
        if level is not None:
            options["accuracy_level"] = str(level)
        if symmetric is not None:
            options["is_symmetric"] = str(bool(symmetric)).lower()
        if params.keep_lm_head_int8 and precision == "int4" and params.int4_method == "builder":
            options["matmul_mixed_precision"] = "last_matmul:int8"
    for key, value in params.extra_options.items():
        options[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return options


BUILDER_MODULE = "onnxruntime_genai.models.builder"
# `python -c LAUNCHER module args...` runs the module as __main__, as `python -m module args...`
# would. When it returns, its files are closed: the exit handlers run, the streams flush and the
# process leaves without tearing the interpreter down, which takes the builder about 1.5 s once
# torch and transformers are loaded (SmolLM2-135M here: 1.72 s against 0.18 s, the same files).
# A module that raises or calls sys.exit exits the usual way, with its own status. `install` first
# hands the builder the config fields it reads where transformers 5 writes them otherwise.
LAUNCHER = """\
import atexit, os, runpy, sys
from slimops.passes._onnx.builder_config import install
install()
module = sys.argv.pop(1)
runpy.run_module(module, run_name="__main__", alter_sys=True)
atexit._run_exitfuncs()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


def run_builder(hf_dir: Path, out_dir: Path, precision: str, ep: str, options: dict[str, str], cache_dir: Path, ctx: PassContext | None = None) -> float:
    """Run `python -m onnxruntime_genai.models.builder`; its output goes to ctx.log.

    Returns:
        wall seconds.

    Raises:
        OnnxError: the builder failed; the message carries its last lines.
    """
    import time

    options = {**window_options(hf_dir), **options}
    args = [
        "-i", str(hf_dir), "-o", str(out_dir), "-p", precision, "-e", ep, "-c", str(cache_dir),
        "--extra_options", *(f"{k}={v}" for k, v in options.items()),
    ]
    cmd = [sys.executable, "-c", LAUNCHER, BUILDER_MODULE, *args]
    layers = num_layers(hf_dir)
    total = layers + 2
    log = ctx.log if ctx else None
    if log:
        log.info("running: python -m %s %s", BUILDER_MODULE, " ".join(args))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    tail: list[str] = []
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace")
    assert process.stdout is not None
    buffer = ""
    for chunk in iter(lambda: process.stdout.read(256), ""):
        buffer += chunk
        *lines, buffer = re.split(r"[\r\n]", buffer)
        for line in lines:
            if not line.strip():
                continue
            tail = (tail + [line])[-20:]
            if log:
                log.info("builder: %s", line)
            if ctx is None:
                continue
            match = re.match(r"Reading layer (\d+)", line)
            if match:
                ctx.progress.update(int(match.group(1)) + 1, total, f"builder: layer {int(match.group(1)) + 1}/{layers}")
            elif line.startswith(("Saving GenAI config", "Saving ONNX model")):
                ctx.progress.update(layers + 1, total, "builder: saving")
    code = process.wait()
    if code != 0:
        last = next((line for line in reversed(tail) if line.strip() and not line.startswith(" ")), "no output")
        raise OnnxError(
            f"the onnxruntime-genai model builder failed (exit {code}) for {precision}/{ep}: {last.strip()}"
            + ("\n    " + "\n    ".join(t.strip() for t in tail[-6:]) if tail else "")
        )
    return time.perf_counter() - t0


def window_options(hf_dir: Path) -> dict[str, str]:
    """`windowed_kv_cache=false` for a model whose sliding window is no shorter than its context.

    The builder gives sliding-window layers a ring buffer of the window's size; onnxruntime-genai
    sizes it no larger than the context, and the attention kernel refuses a buffer smaller than the
    window, so such a model cannot run at all. A window that long never slides: the plain cache
    computes the same attention.
    """
    try:
        config = json.loads((hf_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    config = config.get("text_config", config)
    window, context = config.get("sliding_window"), config.get("max_position_embeddings")
    if isinstance(window, int) and isinstance(context, int) and window >= context:
        return {"windowed_kv_cache": "false"}
    return {}


def set_runtime_threads(folder: Path, target: TargetProfile) -> None:
    """Write the target's intra-op thread count into genai_config.json.

    Unset, onnxruntime-genai runs each operator on one thread; measured on a 2-core machine, asking
    for 0 (one per physical core of whatever machine runs the model) decodes SmolLM2-135M int4 about
    1.3x faster, and 0 stays right on a machine with more cores than the one that built it.
    """
    threads = target.runtime_threads
    config_file = folder / "genai_config.json"
    if threads is None or not config_file.exists():
        return
    config = json.loads(config_file.read_text())
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    config_file.write_text(json.dumps(config, indent=4) + "\n")


def check_genai_loads(folder: Path) -> None:
    """Fail here when onnxruntime-genai cannot open the model (a config it rejects, a node no kernel takes).

    The session is opened without graph optimizations or weight prepacking: shapes and kernels
    are still checked, in about 30 ms instead of 300-500 ms for this 135M model.
    """
    import onnxruntime_genai as og

    fast = {"graph_optimization_level": "ORT_DISABLE_ALL", "session.disable_prepacking": "1"}
    try:
        config = og.Config(str(folder))
        if hasattr(config, "overlay"):
            config.overlay(json.dumps({"model": {"decoder": {"session_options": fast}}}))
        og.Model(config)
    except Exception as err:  # the message of onnxruntime-genai is the useful part
        raise OnnxError(f"onnxruntime-genai cannot load the built model: {err}") from None


@functools.lru_cache(maxsize=1)
def builder_architectures() -> frozenset[str]:
    """The `architectures[0]` values the installed builder's `create_model` dispatches on.

    Read from its source rather than copied here, so that a newer onnxruntime-genai brings its new
    families with it; importing the module would load torch and onnx-ir, and it is run as a
    subprocess anyway. Empty when the source cannot be read or no longer has that shape.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec(BUILDER_MODULE)
        source = Path(spec.origin).read_text() if spec and spec.origin else ""
    except (ImportError, OSError, ValueError):
        return frozenset()
    body = source.partition("\ndef create_model(")[2].partition("\ndef ")[0]
    return frozenset(re.findall(r"architectures\[0\]\s*==\s*[\"'](\w+)[\"']", body))


def builder_refusal(config: dict[str, Any]) -> str | None:
    """Why the installed builder cannot make a model from this config.json (a dict), or None when it can.
    None too when its architecture list cannot be read, so that the builder itself says what it lacks."""
    known = builder_architectures()
    architectures = config.get("architectures") or []
    if known and not (architectures and architectures[0] in known):
        return f"the installed model builder does not build {(architectures or ['?'])[0]}"
    text = config.get("text_config") or config
    heads, hidden = text.get("num_attention_heads"), text.get("hidden_size")
    head_dim = text.get("head_dim") or (hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None)
    if isinstance(head_dim, int) and head_dim % 16:
        # onnxruntime's GroupQueryAttention, which every builder decoder uses, refuses the model when it first runs
        return f"its attention heads are {head_dim} wide, and onnxruntime's GroupQueryAttention needs a multiple of 16"
    return None


def num_layers(hf_dir: Path) -> int:
    try:
        config = json.loads((hf_dir / "config.json").read_text())
    except (OSError, ValueError):
        return 1
    config = config.get("text_config", config)
    return int(config.get("num_hidden_layers") or 1)

