"""`slimops finetune`: fine-tune from flags (in the style of `olive finetune`), no YAML to write.

The flags become a pipeline: the model, one data set, one fine-tuning pass and, for adapter
methods, `merge_adapter` unless `--no_merge`. `--emit-config` prints that YAML and stops, so it
can be kept, edited and run with `slimops run`; otherwise it is written to
`<output_path>/pipeline.yaml` and run there. Nothing heavy is imported here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from slimops.errors import ConfigError, Issue

METHODS = ("lora", "dora", "qlora", "loha", "lokr", "ia3", "full")
DATA_TYPES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text", ".text": "text"}


def add_parser(sub) -> None:
    """Add `finetune` to the `slimops` subcommands."""
    p = sub.add_parser("finetune", help="fine-tune a model from flags (writes the pipeline, then runs it)")
    p.add_argument("--model_name_or_path", "-m", required=True, help="an HF folder, a .gguf file, or a registered name (smollm2-135m, minilm-l6)")
    p.add_argument("--task", choices=["text-generation", "text-classification"], default="text-generation")
    p.add_argument("--method", choices=METHODS, default="lora", help="default: lora")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data_files", help="a local data file (.jsonl, .json, .csv, .parquet, .txt)")
    data.add_argument("--data_name", help="a Hugging Face hub data set (needs the datasets package and a network)")
    p.add_argument("--data_subset", help="the hub data set's subset (config name)")
    p.add_argument("--train_split", default="train", help="e.g. '[:90%%]' for a local file, 'train[:1000]' on the hub (default: train)")
    p.add_argument("--eval_split", help="e.g. '[90%%:]'; evaluates at the end (and every --eval_steps)")
    p.add_argument("--text_template", help="an example's text with {field} placeholders; \\n means a newline")
    p.add_argument("--text_field", help="the field holding the text (when there is no template)")
    p.add_argument("--prompt_template", help="the prompt, with --response_template: loss on the response only")
    p.add_argument("--response_template", help="the response, with {field} placeholders")
    p.add_argument("--messages_field", help="a field of chat messages, rendered with the model's chat template")
    p.add_argument("--label_field", help="the label field, for --task text-classification")
    p.add_argument("--max_steps", type=int)
    p.add_argument("--num_train_epochs", type=float)
    p.add_argument("--per_device_train_batch_size", type=int)
    p.add_argument("--gradient_accumulation_steps", type=int)
    p.add_argument("--learning_rate", type=float)
    p.add_argument("--max_seq_len", type=int)
    p.add_argument("--lora_r", type=int)
    p.add_argument("--lora_alpha", type=float)
    p.add_argument("--lora_dropout", type=float)
    p.add_argument("--target_modules", help="comma-separated module names (default: every linear layer)")
    p.add_argument("--eval_steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--no_merge", action="store_true", help="keep the adapter alone; do not merge it into the base")
    p.add_argument("--output_path", "-o", default="slimops-finetune", help="folder for the pipeline file and its outputs")
    p.add_argument("--emit-config", action="store_true", help="print the pipeline YAML and exit without running it")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary")


def _error(flag: str, message: str) -> ConfigError:
    return ConfigError([Issue("slimops finetune", None, flag, message)])


def _path(text: str, absolute: bool) -> str:
    path = Path(text).expanduser()
    return str(path.resolve()) if absolute and path.exists() else text


def _text(flag: str | None) -> str | None:
    """A template from the shell: `\\n` and `\\t` typed as two characters mean newline and tab."""
    return flag.replace("\\n", "\n").replace("\\t", "\t") if flag else flag


def pipeline_for(args, absolute: bool = False) -> dict[str, Any]:
    """The pipeline `slimops finetune ARGS` stands for.

    Raises:
        ConfigError: flags that do not describe a training job (no formatting, adapter flags on full, ...).
    """
    data: dict[str, Any]
    if args.data_files:
        kind = DATA_TYPES.get(Path(args.data_files).suffix.lower())
        if kind is None:
            raise _error("--data_files", f"cannot tell the format of {args.data_files}; use one of {', '.join(DATA_TYPES)}")
        data = {"type": kind, "files": _path(args.data_files, absolute)}
    else:
        data = {"type": "hf", "name": args.data_name, **({"subset": args.data_subset} if args.data_subset else {})}
    splits = {"train": args.train_split}
    if args.eval_split:
        splits["eval"] = args.eval_split
    if splits != {"train": "train"} or data["type"] == "hf":
        data["splits"] = splits

    if args.task == "text-classification":
        if not args.label_field or not (args.text_field or args.text_template):
            raise _error("--label_field", "text classification needs --label_field and --text_field (or --text_template)")
        data.update({"text": args.text_field} if args.text_field else {"template": _text(args.text_template)})
        data["label"] = args.label_field
    elif args.prompt_template or args.response_template:
        if not (args.prompt_template and args.response_template):
            raise _error("--prompt_template", "--prompt_template and --response_template go together")
        data.update(prompt=_text(args.prompt_template), response=_text(args.response_template))
    elif args.messages_field:
        data["messages"] = args.messages_field
    elif args.text_template:
        data["template"] = _text(args.text_template)
    elif args.text_field:
        data["text"] = args.text_field
    else:
        raise _error("--text_template", "say how an example becomes text: --text_template, --text_field, --prompt_template/--response_template or --messages_field")

    step: dict[str, Any] = {"type": args.method, "data": "train_data"}
    adapter_flags = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                     "target_modules": args.target_modules.split(",") if args.target_modules else None}
    used = [f"--lora_{k}" if k != "target_modules" else "--target_modules" for k, v in adapter_flags.items() if v is not None]
    if args.method == "full" and used:
        raise _error(used[0], "--method full trains every weight; adapter flags do not apply")
    if args.method == "ia3":
        adapter_flags = {"target_modules": adapter_flags["target_modules"]}
    training = {
        "max_steps": args.max_steps, "epochs": args.num_train_epochs, "batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps, "learning_rate": args.learning_rate,
        "max_seq_len": args.max_seq_len, "eval_steps": args.eval_steps, "seed": args.seed, **adapter_flags,
    }
    step.update({key: value for key, value in training.items() if value is not None})

    model: Any = _path(args.model_name_or_path, absolute)
    if args.task != "text-generation":
        model = {"path": model, "task": args.task}
    passes: dict[str, Any] = {"finetune": step}
    if args.method != "full" and not args.no_merge:
        passes["merge"] = {"type": "merge_adapter"}
    engine: dict[str, Any] = {"output_dir": "." if absolute else args.output_path}
    if absolute:
        engine["cache_dir"] = str(Path(".slimops/cache").resolve())
    return {"name": "slimops-finetune", "model": model, "data": {"train_data": data}, "passes": passes, "engine": engine}


class _Dumper(yaml.SafeDumper):
    """Writes multi-line templates as `|` blocks, the way a person would."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def _yaml(pipeline: dict[str, Any]) -> str:
    head = "# Written by 'slimops finetune'; edit it and run it with 'slimops run --config FILE'.\n"
    return head + yaml.dump(pipeline, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def cmd_finetune(args: argparse.Namespace) -> int:
    if args.emit_config:
        sys.stdout.write(_yaml(pipeline_for(args)))
        return 0
    from slimops import run
    from slimops.display import RunDisplay

    pipeline = pipeline_for(args, absolute=True)
    out = Path(args.output_path)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "pipeline.yaml"
    config.write_text(_yaml(pipeline))
    result = run(config, display=RunDisplay(quiet=args.quiet))
    last = list(result.nodes.values())[-1]
    print(f"finetune: {last.kind} in {last.path} ({result.seconds:.1f}s; pipeline: {config})", file=sys.stderr)
    metrics = result["finetune"].metrics
    if metrics:
        print(json.dumps(metrics), file=sys.stderr)
    return 0
