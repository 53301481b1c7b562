"""`slimops finetune`: fine-tune from flags (in the style of `olive finetune`), no YAML to write.

The flags become a pipeline: the model, one data set, one fine-tuning pass and, for adapter
methods, `merge_adapter` unless `--no_merge`. `--emit-config` prints that YAML and stops, so it
can be kept, edited and run with `slimops run`; otherwise it is written to
`<output_path>/pipeline.yaml` and run there. Nothing heavy is imported here.

`--search` (here and in `optimize`/`quantize`, which share `add_search_flags` and
`search_block`) adds a `search:` block over the common knobs and the evaluate node that ranks
the trials; `slimops.search` runs it like any pipeline's search.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any


from slimops.cli import shortcuts
from slimops.cli.shortcuts import add_search_flags, check_search_flags, flag_error, local_path, search_block
from slimops.config.spec import DATA_TYPES
from slimops.errors import ConfigError

METHODS = ("lora", "dora", "qlora", "loha", "lokr", "ia3", "full")
RANKS = [8, 16, 32]
# learning-rate range per method, around each pass's default (adapters 1e-3, ia3 3e-3, full 2e-5)
LR_RANGES = {"ia3": (1e-3, 1e-2), "full": (5e-6, 5e-5)}
LR_RANGE = (2e-4, 3e-3)


def add_parser(sub) -> None:
    """Add `finetune` to the `slimops` subcommands."""
    p = sub.add_parser("finetune", help="fine-tune a model from flags (writes the pipeline, then runs it)")
    p.add_argument("--model_name_or_path", "-m", required=True, help="an HF folder, a .gguf file, or a registered name (smollm2-135m, minilm-l6)")
    p.add_argument("--task", choices=["text-generation", "text-classification"], default="text-generation",
                   help="a causal LM, or an encoder with a classification head")
    p.add_argument("--method", choices=METHODS, default="lora", help="how to train: an adapter method, or full")
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
    p.add_argument("--max_steps", type=int, help="optimizer steps; overrides --num_train_epochs")
    p.add_argument("--num_train_epochs", type=float, help="passes over the training split (default: the pass's)")
    p.add_argument("--per_device_train_batch_size", type=int, help="examples per forward pass (default: as many as fit --batch_tokens)")
    p.add_argument("--batch_tokens", type=int, help="tokens per forward pass, padding included, without --per_device_train_batch_size (default: the pass's)")
    p.add_argument("--gradient_accumulation_steps", type=int, help="forward passes per optimizer step (default: the pass's)")
    p.add_argument("--learning_rate", type=float, help="peak learning rate (default: the method's; see 'slimops passes')")
    p.add_argument("--max_seq_len", type=int, help="tokens per example; longer ones are cut (default: the pass's)")
    p.add_argument("--lora_r", type=int, help="adapter rank (default: the pass's)")
    p.add_argument("--lora_alpha", type=float, help="adapter scale numerator; scale = alpha / r (default: the pass's)")
    p.add_argument("--lora_dropout", type=float, help="dropout on the adapter's input (default: the pass's)")
    p.add_argument("--target_modules", help="comma-separated module names (default: every linear layer)")
    p.add_argument("--eval_steps", type=int, help="evaluate every N steps (needs --eval_split; default: once at the end)")
    p.add_argument("--seed", type=int, help="seed for initialisation, shuffling and dropout (default: the pass's)")
    p.add_argument("--no_merge", action="store_true", help="keep the adapter alone; do not merge it into the base")
    p.add_argument("--output_path", "-o", default="slimops-finetune", help="folder for the pipeline file and its outputs")
    p.add_argument("--emit-config", action="store_true", help="print the pipeline YAML and exit without running it")
    p.add_argument("--force", action="store_true", help="replace a pipeline.yaml in the output folder that differs from this one")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary")
    add_search_flags(
        p,
        search_help="try LoRA ranks 8/16/32 and learning rates around the method's default, keep the trial with the "
        "lowest perplexity on --eval_split (highest accuracy for text-classification); needs --eval_split. "
        "--lora_r or --learning_rate fixes that knob",
        trials_help="how many trials (default: 4; the whole grid with --search_strategy grid)",
        strategy_help="how trials are picked: tpe (default) learns from earlier trials, random samples, "
        "grid tries 3 ranks x 3 rates",
    )


def _error(flag: str, message: str) -> ConfigError:
    return flag_error("finetune", flag, message)


def _text(flag: str | None) -> str | None:
    """A template from the shell: `\\n` and `\\t` typed as two characters mean newline and tab."""
    return flag.replace("\\n", "\n").replace("\\t", "\t") if flag else flag


def pipeline_for(args, absolute: bool = False) -> dict[str, Any]:
    """The pipeline `slimops finetune ARGS` stands for.

    Raises:
        ConfigError: flags that do not describe a training job (no formatting, adapter flags on full, ...).
    """
    check_search_flags("finetune", args)
    if args.search and not args.eval_split:
        raise _error("--eval_split", "--search ranks trials on held-out data: give --eval_split (e.g. '[90%:]', or 'validation' on the hub)")
    data: dict[str, Any]
    if args.data_files:
        kind = DATA_TYPES.get(Path(args.data_files).suffix.lower())
        if kind is None:
            raise _error("--data_files", f"cannot tell the format of {args.data_files}; use one of {', '.join(DATA_TYPES)}")
        data = {"type": kind, "files": local_path(args.data_files, absolute)}
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
    modules = [m.strip() for m in args.target_modules.split(",") if m.strip()] if args.target_modules is not None else None
    if modules == []:
        raise _error("--target_modules", f"'{args.target_modules}' names no module; give names such as q_proj,v_proj, or leave "
                     "the flag out for every linear layer")
    adapter_flags = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout, "target_modules": modules}
    used = [f"--lora_{k}" if k != "target_modules" else "--target_modules" for k, v in adapter_flags.items() if v is not None]
    if args.method == "full" and used:
        raise _error(used[0], "--method full trains every weight; adapter flags do not apply")
    if args.method == "ia3":
        adapter_flags = {"target_modules": adapter_flags["target_modules"]}
    training = {
        "max_steps": args.max_steps, "epochs": args.num_train_epochs, "batch_size": args.per_device_train_batch_size,
        "batch_tokens": args.batch_tokens, "gradient_accumulation_steps": args.gradient_accumulation_steps, "learning_rate": args.learning_rate,
        "max_seq_len": args.max_seq_len, "eval_steps": args.eval_steps, "seed": args.seed, **adapter_flags,
    }
    step.update({key: value for key, value in training.items() if value is not None})

    model: Any = local_path(args.model_name_or_path, absolute)
    if args.task != "text-generation":
        model = {"path": model, "task": args.task}
    passes: dict[str, Any] = {"finetune": step}
    if args.method != "full" and not args.no_merge:
        passes["merge"] = {"type": "merge_adapter"}
    pipeline: dict[str, Any] = {"name": "slimops-finetune", "model": model, "data": {"train_data": data}, "passes": passes}
    if args.search:
        pipeline["search"] = _finetune_search(args, passes)
    engine: dict[str, Any] = {"output_dir": "." if absolute else args.output_path}
    if absolute:
        engine["cache_dir"] = str(Path(".slimops/cache").resolve())
    pipeline["engine"] = engine
    return pipeline


def _finetune_search(args, passes: dict[str, Any]) -> dict[str, Any]:
    """Adds the evaluate node to `passes`; returns the search over rank and learning rate."""
    classifier = args.task == "text-classification"
    metric = "accuracy" if classifier else "perplexity"
    passes["eval"] = {"type": "evaluate", "data": "train_data", "split": "eval", "metrics": [metric]}
    strategy = args.search_strategy or "tpe"
    space: dict[str, Any] = {}
    if args.method not in ("ia3", "full") and args.lora_r is None:
        space["passes.finetune.r"] = RANKS
    if args.learning_rate is None:
        low, high = LR_RANGES.get(args.method, LR_RANGE)
        # a grid needs points; elsewhere the sampler draws from the range
        space["passes.finetune.learning_rate"] = [low, float(f"{math.sqrt(low * high):.2g}"), high] if strategy == "grid" else {"log_uniform": [low, high]}
    objective = {"metric": metric, "direction": "maximize" if classifier else "minimize"}
    return search_block("finetune", args, space, [objective], "tpe", None if strategy == "grid" else 4)


def cmd_finetune(args: argparse.Namespace) -> int:
    return shortcuts.run("finetune", args, pipeline_for, metrics_of="finetune")
