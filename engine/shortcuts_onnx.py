"""Shortcut commands that write the pipeline for you: `slimops optimize`, `slimops quantize`,
`slimops generate-adapter` (flags in the style of Olive's CLI).

Each turns its flags into a pipeline (a model, one target, two or three passes). With
`--emit-config` it prints that YAML and stops, so it can be edited and run with `slimops run`;
otherwise it writes it to `<output_path>/pipeline.yaml` and runs it there. Nothing heavy is
imported here: the passes import their libraries when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from slimops.errors import ConfigError, Issue

DEFAULT_PRECISION = {"cpu": "int4", "cuda": "fp16", "dml": "int4", "npu": "int8"}
METHODS = ("rtn", "hqq", "k_quant", "gptq", "int8_dynamic", "qdq")


def add_parsers(sub) -> None:
    """Add the three shortcut subcommands to the `slimops` parser."""
    p = sub.add_parser("optimize", help="export and optimize a model for a device in one step (writes the pipeline)")
    _common(p)
    p.add_argument("--adapter_path", help="a PEFT LoRA adapter: the base gets LoRA inputs and the adapter an .onnx_adapter file")
    p.add_argument("--calibration_data", help="a .jsonl file to calibrate on (npu targets)")
    p.add_argument("--text_field", default="text", help="the field of --calibration_data holding the text (default: text)")

    p = sub.add_parser("quantize", help="quantize a model (HF or ONNX) for a device (writes the pipeline)")
    _common(p)
    p.add_argument("--algorithm", "--method", dest="method", choices=METHODS, help="default: rtn for int4, int8_dynamic for int8, qdq for npu")
    p.add_argument("--block_size", type=int, help="int4 weights per scale (default 32)")
    p.add_argument("--keep_lm_head_int8", action="store_true", help="quantize lm_head to int8 instead of int4")
    p.add_argument("--calibration_data", help="a .jsonl file to calibrate on (gptq, qdq)")
    p.add_argument("--text_field", default="text", help="the field of --calibration_data holding the text (default: text)")

    p = sub.add_parser("generate-adapter", help="one ONNX base model with LoRA inputs and an .onnx_adapter per adapter")
    _common(p)
    p.add_argument("--adapter_path", action="append", required=True, metavar="[NAME=]PATH",
                   help="a PEFT LoRA adapter folder (repeatable); NAME defaults to the folder's name")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model_name_or_path", "-m", required=True, help="an HF folder, a .gguf or ONNX file/folder, or a registered name (smollm2-135m)")
    p.add_argument("--device", choices=["cpu", "cuda", "dml", "npu"], default="cpu", help="where the model will run (default: cpu)")
    p.add_argument("--provider", help="ONNX Runtime execution provider (default: the device's own)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8", "int4"], help="default: int4 on cpu/dml, fp16 on cuda, int8 on npu")
    p.add_argument("--output_path", "-o", default="slimops-output", help="folder for the pipeline file and its outputs")
    p.add_argument("--emit-config", action="store_true", help="print the pipeline YAML and exit without running it")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary")


# -- pipelines from flags ------------------------------------------------------------------------------


def target_of(args) -> dict[str, Any]:
    precision = args.precision or DEFAULT_PRECISION[args.device]
    target: dict[str, Any] = {"device": args.device, "precision": precision}
    if args.provider:
        target["providers"] = [args.provider]
    if args.device == "npu":
        target["quant_format"] = "qdq"
    elif precision == "int4":
        target["quant_format"] = "weight_only"
        target["settings"] = {"quantize": {"block_size": 32, **({"accuracy_level": 4} if args.device == "cpu" else {})}}
    elif precision == "int8":
        target["quant_format"] = "dynamic" if args.device == "cpu" else "weight_only"
    return target


def _model_kind(path_text: str) -> str:
    """hf-decoder, hf-encoder, onnx or gguf, from the files (registered names are GGUF decoders)."""
    path = Path(path_text)
    if not path.exists():
        return "gguf"
    if path.is_file():
        return "onnx" if path.suffix == ".onnx" else "gguf"
    if (path / "genai_config.json").exists() or (path / "model.onnx").exists():
        return "onnx"
    if not (path / "config.json").exists():
        return "gguf" if any(path.glob("*.gguf")) else "hf-decoder"
    from slimops.passes.parity import is_encoder

    return "hf-encoder" if is_encoder(path) else "hf-decoder"


def _path(text: str, absolute: bool) -> str:
    path = Path(text).expanduser()
    return str(path.resolve()) if absolute and path.exists() else text


def _data(args, absolute: bool) -> dict[str, Any]:
    if not getattr(args, "calibration_data", None):
        return {}
    return {"calib": {"type": "jsonl", "files": _path(args.calibration_data, absolute), "text": args.text_field}}


def pipeline_for(command: str, args, absolute: bool = False) -> dict[str, Any]:
    """The pipeline a shortcut stands for.

    Raises:
        ConfigError: flags that cannot work together (an npu target without calibration data, ...).
    """
    kind = _model_kind(args.model_name_or_path)
    target = target_of(args)
    data = _data(args, absolute)
    passes: dict[str, Any] = {}
    needs_calibration = target.get("quant_format") == "qdq" or getattr(args, "method", None) in ("gptq", "qdq")
    if needs_calibration and not data:
        raise _flag_error(command, "--calibration_data", f"{'the npu target' if args.device == 'npu' else args.method} calibrates on data: give a .jsonl file")
    if command == "generate-adapter" or (command == "optimize" and args.adapter_path):
        if kind not in ("hf-decoder", "gguf"):
            raise _flag_error(command, "--model_name_or_path", f"adapters need an HF (or GGUF) base model, and {args.model_name_or_path} is {kind}")
        paths = args.adapter_path if isinstance(args.adapter_path, list) else [args.adapter_path]
        adapters = {}
        for item in paths:
            name, sep, path = item.partition("=")
            if not sep:
                name, path = Path(item.rstrip("/")).name, item
            adapters[name] = _path(path, absolute)
        passes["serve"] = {"type": "generate_adapter", "adapters": adapters}
    elif command == "optimize":
        if kind == "onnx":
            passes["optimized"] = {"type": "optimize"}
        elif kind == "hf-encoder":
            passes["export"] = {"type": "onnx"}
            passes["optimized"] = {"type": "optimize"}
            if target["precision"] in ("int8", "int4") or target.get("quant_format") == "qdq":
                passes["quantize"] = {"type": "quantize", **({"calibration_data": "calib"} if data else {})}
        else:
            passes["export"] = {"type": "onnx"}  # the builder quantizes int4/int8 itself
            if target.get("quant_format") == "qdq":
                passes["quantize"] = {"type": "quantize", "calibration_data": "calib"}
    else:  # quantize
        if kind != "onnx":
            passes["export"] = {"type": "onnx", "precision": "fp16" if args.device in ("cuda", "dml") else "fp32"}
        quantize: dict[str, Any] = {"type": "quantize"}
        if args.method:
            quantize["method"] = args.method
        elif target["precision"] not in ("int4", "int8") and target.get("quant_format") != "qdq":
            raise _flag_error(command, "--precision", f"{target['precision']} is not a quantized precision; use int4 or int8, or give --algorithm")
        if args.block_size:
            quantize["block_size"] = args.block_size
        if args.keep_lm_head_int8:
            quantize["keep_lm_head_int8"] = True
        if data:
            quantize["calibration_data"] = "calib"
        passes["quantize"] = quantize
    pipeline: dict[str, Any] = {"name": f"slimops-{command}", "model": _path(args.model_name_or_path, absolute)}
    if data:
        pipeline["data"] = data
    pipeline["targets"] = {args.device: target}
    pipeline["passes"] = passes
    pipeline["engine"] = {"output_dir": "." if absolute else args.output_path}
    if absolute:
        pipeline["engine"]["cache_dir"] = str(Path(".slimops/cache").resolve())
    return pipeline


def _flag_error(command: str, flag: str, message: str) -> ConfigError:
    return ConfigError([Issue(f"slimops {command}", None, flag, message)])


def _yaml(pipeline: dict[str, Any], command: str) -> str:
    head = f"# Written by 'slimops {command}'; edit it and run it with 'slimops run --config FILE'.\n"
    return head + yaml.safe_dump(pipeline, sort_keys=False, default_flow_style=False)


def run_shortcut(command: str, args) -> int:
    if args.emit_config:
        sys.stdout.write(_yaml(pipeline_for(command, args), command))
        return 0
    from slimops import run
    from slimops.display import RunDisplay

    pipeline = pipeline_for(command, args, absolute=True)
    out = Path(args.output_path)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "pipeline.yaml"
    config.write_text(_yaml(pipeline, command))
    result = run(config, display=RunDisplay(quiet=args.quiet))
    last = list(result.nodes.values())[-1]
    print(f"{command}: {last.kind} in {last.path} ({result.seconds:.1f}s; pipeline: {config})", file=sys.stderr)
    if last.metrics:
        print(json.dumps(last.metrics), file=sys.stderr)
    return 0


def cmd_optimize(args) -> int:
    return run_shortcut("optimize", args)


def cmd_quantize(args) -> int:
    return run_shortcut("quantize", args)


def cmd_generate_adapter(args) -> int:
    return run_shortcut("generate-adapter", args)


COMMANDS = {"optimize": cmd_optimize, "quantize": cmd_quantize, "generate-adapter": cmd_generate_adapter}
