"""Shortcut commands that write the pipeline for you: `slimops optimize`, `slimops quantize`,
`slimops generate-adapter` (flags in the style of Olive's CLI).

Each turns its flags into a pipeline (a model, one target, two or three passes). With
`--emit-config` it prints that YAML and stops, so it can be edited and run with `slimops run`;
otherwise it writes it to `<output_path>/pipeline.yaml` and runs it there. Nothing heavy is
imported here: the passes import their libraries when they run.

`--search` on `optimize` and `quantize` tries the quantization methods that need no calibration
data (and, for `quantize`, block sizes), each trial evaluated on `--eval_data`: perplexity and
size, so the best trials are a Pareto front.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any


from slimops.cli import shortcuts
from slimops.cli.shortcuts import add_search_flags, check_search_flags, flag_error, local_path, search_block
from slimops.config.spec import DATA_TYPES

DEFAULT_PRECISION = {"cpu": "int4", "cuda": "fp16", "dml": "int4", "npu": "int8"}
METHODS = ("affine", "rtn", "hqq", "k_quant", "gptq", "int8_dynamic", "qdq")
BLOCK_SIZES = [32, 64, 128]
OBJECTIVES = [{"metric": "perplexity", "direction": "minimize"}, {"metric": "size_mb", "direction": "minimize"}]


def add_parsers(sub) -> None:
    """Add the three shortcut subcommands to the `slimops` parser."""
    p = sub.add_parser("optimize", help="export and optimize a model for a device in one step (writes the pipeline)")
    _common(p)
    p.add_argument("--adapter_path", help="a PEFT LoRA adapter: the base gets LoRA inputs and the adapter an .onnx_adapter file")
    p.add_argument("--calibration_data", help="a .jsonl file to calibrate on (npu targets)")
    p.add_argument("--text_field", default="text", help="the field of --calibration_data and --eval_data holding the text (default: text)")
    _search_flags(
        p,
        "try the int4 methods that need no calibration data (and int8_dynamic on cpu) on a fp32/fp16 export, "
        "ranked by perplexity on --eval_data and by size (a Pareto front); needs --eval_data. --precision narrows it",
        "how many trials (default: one per method)",
    )

    p = sub.add_parser("quantize", help="quantize a model (HF or ONNX) for a device (writes the pipeline)")
    _common(p)
    p.add_argument("--algorithm", "--method", dest="method", choices=METHODS, help="default: affine for int4 on cpu, rtn for int4 elsewhere, int8_dynamic for int8, qdq for npu")
    p.add_argument("--block_size", type=int, help="int4 weights per scale (default 32)")
    p.add_argument("--keep_lm_head_int8", action="store_true", help="quantize lm_head to int8 instead of int4")
    p.add_argument("--calibration_data", help="a .jsonl file to calibrate on (gptq, qdq)")
    p.add_argument("--text_field", default="text", help="the field of --calibration_data and --eval_data holding the text (default: text)")
    _search_flags(
        p,
        "try the weight-only int4 methods that need no calibration data with block sizes 32/64/128, ranked by "
        "perplexity on --eval_data and by size (a Pareto front); needs --eval_data. --algorithm or --block_size fixes that knob",
        "how many trials (default: the whole grid, methods x 3 block sizes)",
    )

    p = sub.add_parser("generate-adapter", help="one ONNX base model with LoRA inputs and an .onnx_adapter per adapter")
    _common(p)
    p.add_argument("--adapter_path", action="append", required=True, metavar="[NAME=]PATH",
                   help="a PEFT LoRA adapter folder (repeatable); NAME defaults to the folder's name")


def _search_flags(p: argparse.ArgumentParser, search_help: str, trials_help: str) -> None:
    group = add_search_flags(p, search_help, trials_help, "how trials are picked: grid (default) tries every point, random and tpe sample --trials of them")
    group.add_argument("--eval_data", help="a text file (.jsonl, .json, .csv, .parquet, .txt) to measure each trial's perplexity on")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model_name_or_path", "-m", required=True, help="an HF folder, a .gguf or ONNX file/folder, or a registered name (smollm2-135m)")
    p.add_argument("--device", choices=["cpu", "cuda", "dml", "npu"], default="cpu", help="where the model will run (default: cpu)")
    p.add_argument("--provider", help="ONNX Runtime execution provider (default: the device's own)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8", "int4"], help="default: int4 on cpu/dml, fp16 on cuda, int8 on npu")
    p.add_argument("--output_path", "-o", default="slimops-output", help="folder for the pipeline file and its outputs")
    p.add_argument("--emit-config", action="store_true", help="print the pipeline YAML and exit without running it")
    p.add_argument("--force", action="store_true", help="replace a pipeline.yaml in the output folder that differs from this one")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary")


# -- pipelines from flags ------------------------------------------------------------------------------


def target_of(args, precision: str | None = None) -> tuple[Any, Any]:
    """The target for the flags: a built-in profile's name where one fits the device and precision
    (extended with --provider when given), else a profile of its own; and the resolved profile.
    """
    from slimops.targets import TargetProfile, profile_for

    precision = precision or args.precision or DEFAULT_PRECISION[args.device]
    name = profile_for(args.device, precision)
    if name is not None:
        spec: Any = {"extends": name, "providers": [args.provider]} if args.provider else name
    else:  # no vetted profile: the device at this precision, stored the way that device wants it
        spec = {"device": args.device, "precision": precision, **({"providers": [args.provider]} if args.provider else {})}
        if args.device == "npu":
            spec["quant_format"] = "qdq"
        elif precision in ("int4", "int8"):
            spec["quant_format"] = "weight_only"
    return spec, TargetProfile.model_validate(spec)


def _model_kind(path_text: str) -> str:
    """hf-decoder, hf-encoder, onnx or gguf, from the files (a registered name: from what it ships)."""
    from slimops.errors import ModelError
    from slimops.inputs import REGISTERED, registered_path

    path = Path(path_text)
    if not path.exists() and path_text in REGISTERED:
        try:
            path = registered_path(path_text)
        except ModelError:
            return "gguf"  # not installed: planning the pipeline says which package to install
    if not path.exists():
        return "gguf"
    if path.is_file():
        return "onnx" if path.suffix == ".onnx" else "gguf"
    if (path / "genai_config.json").exists() or (path / "model.onnx").exists():
        return "onnx"
    if not (path / "config.json").exists():
        return "gguf" if any(path.glob("*.gguf")) else "hf-decoder"
    from slimops.kinds import is_encoder

    return "hf-encoder" if is_encoder(path) else "hf-decoder"


def _data(args, absolute: bool) -> dict[str, Any]:
    if not getattr(args, "calibration_data", None):
        return {}
    return {"calib": {"type": "jsonl", "files": local_path(args.calibration_data, absolute), "text": args.text_field}}


def pipeline_for(command: str, args, absolute: bool = False) -> dict[str, Any]:
    """The pipeline a shortcut stands for.

    Raises:
        ConfigError: flags that cannot work together (an npu target without calibration data, ...).
    """
    kind = _model_kind(args.model_name_or_path)
    searching = getattr(args, "search", False)  # generate-adapter has no search flags
    if hasattr(args, "search"):
        check_search_flags(command, args)
    if searching:
        _check_searchable(command, args, kind)
    # an optimize search tries int4 and int8 itself: its target is int4 unless --precision says
    target_spec, target = target_of(args, "int4" if searching and command == "optimize" else None)
    data = _data(args, absolute)
    if searching:
        data["eval_data"] = _eval_data(command, args, absolute)
    passes: dict[str, Any] = {}
    needs_calibration = target.quant_format == "qdq" or getattr(args, "method", None) in ("gptq", "qdq")
    if needs_calibration and "calib" not in data:
        raise flag_error(command, "--calibration_data", f"{'the npu target' if args.device == 'npu' else args.method} calibrates on data: give a .jsonl file")
    if command == "generate-adapter" or (command == "optimize" and args.adapter_path):
        if kind not in ("hf-decoder", "gguf"):
            raise flag_error(command, "--model_name_or_path", f"adapters need an HF (or GGUF) base model, and {args.model_name_or_path} is {kind}")
        paths = args.adapter_path if isinstance(args.adapter_path, list) else [args.adapter_path]
        adapters = {}
        for item in paths:
            name, sep, path = item.partition("=")
            if not sep:
                name, path = Path(item.rstrip("/")).name, item
            if name in adapters:
                raise flag_error(command, "--adapter_path", f"two adapters are named '{name}'; name each one: --adapter_path NAME=PATH")
            adapters[name] = local_path(path, absolute)
        passes["serve"] = {"type": "generate_adapter", "adapters": adapters}
    elif command == "optimize" and searching:
        methods = _optimize_methods(args)
        if kind == "onnx":
            if not (Path(args.model_name_or_path) / "genai_config.json").exists():
                passes["optimized"] = {"type": "optimize"}  # builder output is fused already
        else:
            passes["export"] = {"type": "onnx", "precision": "fp32" if args.device == "cpu" else "fp16"}
        passes["quantize"] = {"type": "quantize", "method": methods[0]}
    elif command == "optimize":
        if kind == "onnx":
            passes["optimized"] = {"type": "optimize"}
        elif kind == "hf-encoder":
            passes["export"] = {"type": "onnx"}
            passes["optimized"] = {"type": "optimize"}
            if target.precision in ("int8", "int4") or target.quant_format == "qdq":
                passes["quantize"] = {"type": "quantize", **({"calibration_data": "calib"} if "calib" in data else {})}
        else:
            passes["export"] = {"type": "onnx"}  # the builder quantizes int4/int8 itself
            if target.quant_format == "qdq":
                passes["quantize"] = {"type": "quantize", "calibration_data": "calib"}
    else:  # quantize
        if kind != "onnx":
            passes["export"] = {"type": "onnx", "precision": "fp16" if args.device in ("cuda", "dml") else "fp32"}
        quantize: dict[str, Any] = {"type": "quantize"}
        if args.method:
            quantize["method"] = args.method
        elif target.precision not in ("int4", "int8") and target.quant_format != "qdq":
            raise flag_error(command, "--precision", f"{target.precision} is not a quantized precision; use int4 or int8, or give --algorithm")
        if args.block_size:
            quantize["block_size"] = args.block_size
        if args.keep_lm_head_int8:
            quantize["keep_lm_head_int8"] = True
        if "calib" in data:
            quantize["calibration_data"] = "calib"
        passes["quantize"] = quantize
    pipeline: dict[str, Any] = {"name": f"slimops-{command}", "model": local_path(args.model_name_or_path, absolute)}
    if data:
        pipeline["data"] = data
    pipeline["targets"] = {args.device: target_spec}
    pipeline["passes"] = passes
    if searching:
        passes["eval"] = {"type": "evaluate", "data": "eval_data", "metrics": ["perplexity", "size_mb"]}
        pipeline["search"] = _quantize_search(command, args, passes["quantize"])
    pipeline["engine"] = {"output_dir": "." if absolute else args.output_path}
    if absolute:
        pipeline["engine"]["cache_dir"] = str(Path(".slimops/cache").resolve())
    return pipeline


def _check_searchable(command: str, args, kind: str) -> None:
    """A search ranks decoders by perplexity on --eval_data; say which flag is missing or in the way."""
    if not args.eval_data:
        raise flag_error(command, "--eval_data", "--search ranks trials by perplexity: give a text file to measure it on (.jsonl with --text_field)")
    if args.device == "npu":
        raise flag_error(command, "--device", "--search covers cpu, cuda and dml; for npu (QDQ), write a search: block over passes.quantize params")
    if kind == "hf-encoder":
        raise flag_error(command, "--model_name_or_path", f"--search ranks by perplexity, which needs a decoder, and {args.model_name_or_path} "
                          "is an encoder; write a search: block with an accuracy objective instead")
    if command == "optimize" and args.adapter_path:
        raise flag_error(command, "--adapter_path", "--search does not cover adapters; drop one of them")


def _eval_data(command: str, args, absolute: bool) -> dict[str, Any]:
    kind = DATA_TYPES.get(Path(args.eval_data).suffix.lower())
    if kind is None:
        raise flag_error(command, "--eval_data", f"cannot tell the format of {args.eval_data}; use one of {', '.join(DATA_TYPES)}")
    return {"type": kind, "files": local_path(args.eval_data, absolute), "text": args.text_field, "splits": {"eval": "[:]"}}


def _no_calibration_methods(device: str = "cpu") -> tuple[list[str], list[str]]:
    """(weight-only int4, int8) quantize methods that need no calibration data, from the quantize pass.

    affine (a float offset per block) is a CPU graph, so it is tried on cpu only.
    """
    from slimops.quantization import CALIBRATED, WEIGHT_ONLY

    affine = ["affine"] if device == "cpu" else []
    return affine + [m for m in WEIGHT_ONLY if m not in CALIBRATED], ["int8_dynamic"]


def _optimize_methods(args) -> list[str]:
    """int4 methods everywhere, and int8_dynamic (MatMulInteger, a CPU kernel) on cpu."""
    int4, int8 = _no_calibration_methods(args.device)
    by_precision = {"int4": int4, "int8": int8 if args.device == "cpu" else []}
    methods = by_precision.get(args.precision, []) if args.precision else int4 + by_precision["int8"]
    if len(methods) < 2:
        raise flag_error("optimize", "--precision", f"--search has {len(methods)} method to try at {args.precision} on {args.device}; "
                          "drop --precision to try int4 and int8, or drop --search")
    return methods


def _quantize_search(command: str, args, quantize: dict[str, Any]) -> dict[str, Any]:
    """The search over quantize's method (and block size, for quantize); sets the node's first point."""
    from slimops.quantization import WEIGHT_ONLY

    int4, _ = _no_calibration_methods(args.device)
    space: dict[str, Any] = {}
    if command == "optimize":
        space["passes.quantize.method"] = _optimize_methods(args)
    else:
        if (args.precision or DEFAULT_PRECISION[args.device]) != "int4":
            raise flag_error(command, "--precision", "--search tries weight-only int4 methods: use --precision int4 (the default on cpu and dml)")
        if args.method and args.method not in (*WEIGHT_ONLY, "affine"):
            raise flag_error(command, "--algorithm", f"--search tries block sizes of weight-only methods, and {args.method} has none")
        if not args.method:
            space["passes.quantize.method"] = int4
            quantize["method"] = int4[0]
        if not args.block_size:
            space["passes.quantize.block_size"] = BLOCK_SIZES
    # random and tpe default to as many trials as the grid has points
    trials = None if (args.search_strategy or "grid") == "grid" else math.prod(len(values) for values in space.values())
    return search_block(command, args, space, OBJECTIVES, "grid", trials)


def run_shortcut(command: str, args) -> int:
    return shortcuts.run(command, args, lambda a, absolute: pipeline_for(command, a, absolute),
                         advice=" (the method, the thresholds under `parity:`)")


def cmd_optimize(args) -> int:
    return run_shortcut("optimize", args)


def cmd_quantize(args) -> int:
    return run_shortcut("quantize", args)


def cmd_generate_adapter(args) -> int:
    return run_shortcut("generate-adapter", args)


COMMANDS = {"optimize": cmd_optimize, "quantize": cmd_quantize, "generate-adapter": cmd_generate_adapter}
