"""Fine-tuning passes: `lora`, `dora`, `qlora`, `loha`, `lokr`, `ia3` (adapters) and `full`.

Every method shares one training loop, the transformers `Trainer`; the methods differ only in
how the model is wrapped (`_wrap`). What the loop adds around the Trainer:

- data from `slimops.passes._data` (checked before the model loads), packed into rows of
  `max_seq_len` tokens for causal LMs, batched by length for classifiers;
- precision from the hardware (`precision: auto`): bf16 where it is native, fp32 elsewhere;
- checkpoints in `ctx.work_dir`, so a killed run resumes where it stopped (the step count goes on);
- progress (`loss 1.234  812 tok/s`), a loss-curve PNG, and metrics: train/eval loss, tokens/s;
- a causal LM by default, or a classifier when `model.task: text-classification`.
- `processes: N`: the same loop on N ranks under torchrun, rank 0 writing the output (`_ddp`).

An adapter pass writes the adapter alone (no copy of the base); `merge_adapter` folds it in.
torch, transformers and peft are imported inside functions only.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slimops.errors import DataError, SlimopsError
from slimops.plugin import Artifact, Pass, PassContext
from slimops.passes import _adapters, _ddp
from slimops.passes import _data as datalib
from slimops.passes import _training_log as training_log

CHECKPOINTS = "checkpoints"


class TrainParams(BaseModel):
    """Settings every fine-tuning method shares."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="The data set to train on (a name under `data:`).")
    train_split: str = Field("train", description="Split to train on.")
    eval_data: str | None = Field(None, description="Data set for eval loss; default: `data`'s own eval split if it has one.")
    eval_split: str = Field("eval", description="Split to evaluate on.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    epochs: float = Field(3.0, gt=0, json_schema_extra={"usual": [0.01, 50]}, description="Passes over the training split, when max_steps is not set.")
    batch_size: int | None = Field(None, ge=1, description="Examples per forward pass; default: as many as fit batch_tokens.")
    batch_tokens: int = Field(1024, ge=8, json_schema_extra={"usual": [64, 65536]}, description="Tokens per forward pass, padding "
                              "included, when batch_size is not set: batches of short examples hold more of them, so every "
                              "step does about the same work whatever the data's lengths.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Forward passes per optimizer step (a step's batch is this many forward passes).")
    max_seq_len: int = Field(512, ge=8, description="Tokens per example; longer ones are cut. Batches are grouped by length, so short data pays for no padding.")
    learning_rate: float = Field(2e-4, gt=0, json_schema_extra={"usual": [1e-6, 1e-2]}, description="Peak learning rate (each method sets its own default).")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps spent warming up.")
    warmup_steps: int | None = Field(None, ge=0, description="Warmup steps; overrides warmup_ratio.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations: less memory, ~20-30% slower.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 where the hardware computes it natively (AMX or AVX512-BF16 CPUs, bf16 GPUs), fp32 "
        "elsewhere; the choice is in the log, the output's meta and the cache key. In bf16 an adapter's frozen base is held "
        "in bf16 (adapter weights and optimizer in fp32, the adapter's matmuls in bf16); full fine-tuning keeps fp32 weights "
        "under bf16 autocast.")
    packing: bool = Field(False, description="Pack short examples into rows of max_seq_len tokens (causal LMs; each example "
                          "attends to itself only); a batch then holds batch_tokens // max_seq_len rows (or batch_size rows). On a "
                          "2-core CPU it trained no faster per token than length-grouped batches (docs/benchmarks.md).")
    seed: int = Field(42, description="Seed for initialisation, shuffling and dropout.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps (default: once at the end, when there is eval data).")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after N evaluations without improvement (needs eval data and eval_steps).")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps, for resuming (default: about ten per run).")
    logging_steps: int = Field(1, ge=1, description="Record the training loss every N steps.")
    loss: str | None = Field(None, description="Custom loss, `module:function(outputs, labels, num_items_in_batch)`; module relative to the pipeline file.")
    processes: int = Field(1, ge=1, description="Training processes (torchrun, DDP): each takes its share of every batch, so a step's batch and the loss curve stay those of one process; in the cache key (sums round differently). See docs/finetune.md.")
    nodes: int = Field(1, ge=1, description="Machines to train on, `processes` ranks each (engine.executor: ray; torchrun on each, "
                       "rank 0 on the node's own machine); the inputs must be at the same paths on every machine. See docs/scale.md.")
    fsdp: str | dict[str, Any] | None = Field(None, description="With processes > 1: FSDP, passed to transformers: a string is TrainingArguments' `fsdp` ('full_shard auto_wrap'), a mapping its `fsdp_config`.")
    deepspeed: str | dict[str, Any] | None = Field(None, description="With processes > 1: a DeepSpeed config, a JSON file relative to the pipeline file or an inline mapping (then its content is in the cache key).")
    report_to: Literal["none", "tensorboard"] = Field("none", description="tensorboard writes event files into the output's `tensorboard/` folder.")

    @field_validator("loss")
    @classmethod
    def _module_function(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:\w+", value):
            raise ValueError("must read module:function, e.g. my_losses:focal")
        return value


class AdapterParams(TrainParams):
    """LoRA-family settings."""

    learning_rate: float = Field(1e-3, gt=0, json_schema_extra={"usual": [1e-6, 1e-2]}, description="Peak learning rate. 1e-3 "
                                 "suits an adapter at the default batch_tokens (the tone data: held-out accuracy 0.95 against 0.92 at 6e-4).")
    r: int = Field(16, ge=1, json_schema_extra={"usual": [1, 512]}, description="Adapter rank.")
    alpha: float = Field(32, gt=0, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input. Off by default: on a CPU drawing its "
                           "random masks took a fifth of each step, and the tone data's held-out accuracy was no better with it.")
    target_modules: list[str] | str | None = Field(None, description="Module names to adapt; default every linear layer but the output head ('all-linear').")
    modules_to_save: list[str] | None = Field(None, description="Modules trained in full and saved with the adapter (a classifier head is added by itself).")


class QloraParams(AdapterParams):
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen base (bitsandbytes).")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit/param).")


class Ia3Params(TrainParams):
    learning_rate: float = Field(3e-3, gt=0, json_schema_extra={"usual": [1e-5, 5e-2]}, description="IA3 trains few scaling vectors and wants a higher rate.")
    target_modules: list[str] | None = Field(None, description="Modules to scale; default from peft per architecture.")
    feedforward_modules: list[str] | None = Field(None, description="Subset of target_modules scaled on their input.")
    modules_to_save: list[str] | None = Field(None, description="Modules trained in full and saved with the adapter.")


class FullParams(TrainParams):
    learning_rate: float = Field(2e-5, gt=0, json_schema_extra={"usual": [1e-7, 1e-3]}, description="Peak learning rate; every weight trains, so keep it low.")


class _FineTune(Pass):
    """The shared loop; subclasses set `name`, `method`, `Params` and what they produce."""

    version = "4"  # 4: a NaN or infinite loss or weight fails the run; 3: token batches, the head at labelled positions only, bf16 adapter matmuls on a bf16 base
    consumes = ("hf-model",)
    produces = "hf-adapter"
    requires = ("torch", "transformers", "peft")
    method = ""
    Params = AdapterParams

    def check(self, params: Any, target: Any) -> str | None:
        if params.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            return "report_to: tensorboard needs the tensorboard package (pip install tensorboard)"
        if params.early_stopping_patience and not params.eval_steps:
            return "early_stopping_patience needs eval_steps (how often to evaluate)"
        return _ddp.check(params)

    def resources(self, params: Any, target: Any) -> dict[str, float]:
        from slimops.targets import machine_has_cuda

        # training uses CUDA wherever it runs on one: ask for GPUs when the target is CUDA, or the planning machine has one
        gpus = getattr(target, "device", None) == "cuda" or machine_has_cuda()
        return {"CPU": float(params.processes), "GPU": float(params.processes) if gpus else 0.0}

    def imports(self, params: Any) -> dict[tuple[str | int, ...], str]:
        return {("loss",): params.loss} if params.loss else {}

    def choices(self, params: Any) -> dict[str, Any]:
        return {"precision": precision_for(params)[0]}

    def run(self, ctx: PassContext) -> Artifact:
        return _ddp.launch(ctx, train, self.method) if ctx.params.processes * ctx.params.nodes > 1 else train(ctx, self.method)


def precision_for(params: Any) -> tuple[str, str]:
    """The precision a run trains in, and why: the one asked for, or for `auto` what the hardware computes natively."""
    if params.precision != "auto":
        return params.precision, "set in the config"
    from slimops.hardware import training_precision
    from slimops.targets import machine_has_cuda

    if machine_has_cuda():
        import torch

        return training_precision(cuda_bf16=torch.cuda.is_bf16_supported())
    return training_precision()


class Lora(_FineTune):
    """Low-rank adapters on every linear layer (peft LoRA)."""

    name = "lora"
    method = "lora"


class Dora(_FineTune):
    """Weight-decomposed LoRA: magnitude and direction trained apart (peft `use_dora`)."""

    name = "dora"
    method = "dora"


class Qlora(_FineTune):
    """LoRA on a base quantized to 4 bits by bitsandbytes (nf4 or fp4)."""

    name = "qlora"
    method = "qlora"
    version = "3"  # 3: a NaN or infinite loss or weight fails the run; 2: layers whose shape does not fit a 4-bit block stay in float
    requires = ("torch", "transformers", "peft", "bitsandbytes")
    alternative = "lora"
    Params = QloraParams


class Loha(_FineTune):
    """Low-rank Hadamard-product adapters (peft LoHa)."""

    name = "loha"
    method = "loha"


class Lokr(_FineTune):
    """Low-rank Kronecker-product adapters (peft LoKr)."""

    name = "lokr"
    method = "lokr"


class Ia3(_FineTune):
    """Learned scaling vectors on attention and feed-forward activations (peft IA3)."""

    name = "ia3"
    method = "ia3"
    Params = Ia3Params


class Full(_FineTune):
    """Every weight trains; the output is a whole model."""

    name = "full"
    method = "full"
    produces = "hf-model"
    requires = ("torch", "transformers")
    Params = FullParams


# -- the loop --------------------------------------------------------------------------------------


def train(ctx: PassContext, method: str) -> Artifact:
    """Fine-tune `ctx.input` with `method`; see the module docstring.

    Raises:
        DataError: the data does not fit its formatting (found before the model loads).
        ModelError: peft finds none of `target_modules` in the model.
        SlimopsError: the custom loss does not import, or training diverged (a NaN or infinite loss or weight).
    """
    params = ctx.params
    task = (ctx.source.meta.get("task") if ctx.source else None) or ctx.input.meta.get("task") or "text-generation"
    base = Path(ctx.input.path)
    parts = _splits(ctx, task)

    import transformers
    from transformers import AutoTokenizer

    transformers.set_seed(params.seed)
    transformers.utils.logging.disable_progress_bar()  # the run display shows progress
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    labels = datalib.label_names(parts["train"].rows, parts["train"].spec) if task == "text-classification" else []
    features = {role: _features(part, tokenizer, params.max_seq_len, labels) for role, part in parts.items()}
    train_set, eval_set = features["train"], features.get("eval")
    ctx.log.info("%s: %d train examples, %d eval, task %s", method, len(train_set), len(eval_set or []), task)

    if task != "text-classification" and params.packing:
        rows = {role: datalib.pack(part, params.max_seq_len) for role, part in features.items()}
        ctx.log.info("packed %d train examples into %d rows of at most %d tokens", len(train_set), len(rows["train"]), params.max_seq_len)
        train_set, eval_set = rows["train"], rows.get("eval")
    precision, why = precision_for(params)
    # an adapter's frozen base is held in bf16; the adapter's weights stay fp32 and its matmuls run in bf16
    # under autocast on the bf16 activations, which peft would otherwise copy to fp32 in every adapted layer
    # (a fifth of a step, and the copies kept for backward). Full fine-tuning, a classifier's head and
    # modules_to_save train their own weights, which stay fp32 under autocast.
    bf16_base = precision == "bf16" and method not in ("full", "qlora") and task != "text-classification" and not getattr(params, "modules_to_save", None)
    ctx.log.info("precision %s (%s)%s", precision, why, "; frozen base in bf16" if bf16_base else "")
    float_layers, kept_by_default = _adapters.unquantizable_layers(base, task, labels) if method == "qlora" else ([], [])
    if float_layers:
        ctx.log.info("qlora: %d linear layers stay in float (their shape does not fit a 4-bit block): %s",
                     len(float_layers), ", ".join(float_layers))
    model = _adapters.load_model(base, task, method, params, labels, [*float_layers, *kept_by_default] if float_layers else None,
                                 precision=precision, bf16_base=bf16_base)
    four_bit = sum(type(m).__name__ == "Linear4bit" for m in model.modules()) if method == "qlora" else 0
    model = _adapters.wrap(model, method, params, task)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    ctx.log.info("trainable parameters: %d of %d", trainable, total)

    trainer = _trainer(ctx, model, tokenizer, params, train_set, eval_set, task, autocast=precision == "bf16")
    checkpoint = _last_checkpoint(ctx.work_dir / CHECKPOINTS)
    if checkpoint:
        ctx.log.info("resuming from %s", checkpoint)
    # without a cache, transformers reads packed rows' restarting position ids as separate sequences
    use_cache, model.config.use_cache = model.config.use_cache, False
    with _adapters.inputs_uncast(model, bf16_base):
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=checkpoint)
        seconds = time.perf_counter() - started
        eval_metrics = _final_eval(trainer, params) if eval_set else {}

    model.config.use_cache = use_cache  # a saved full model generates with its cache again
    diverged = training_log.divergence(trainer, model, params)
    if diverged:
        raise SlimopsError(diverged)
    metrics = training_log.run_metrics(trainer, result, eval_metrics, seconds, trainable, checkpoint)
    if trainer.is_world_process_zero():  # under torchrun only rank 0 writes the output
        _save(model, tokenizer, method, ctx.output_dir)
        training_log.plot_loss(trainer.state.log_history, ctx.output_dir / "loss.png", f"{ctx.node} ({method})")
        (ctx.output_dir / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    meta = {
        "method": method,
        "task": task,
        "base_path": str(base),
        "formatting": datalib.formatting(parts["train"].spec, tokenizer),
        "max_seq_len": params.max_seq_len,
        "precision": precision,
        "precision_why": why,
        "packed": task != "text-classification" and params.packing,
    }
    if labels:
        meta["labels"] = labels
    if method == "qlora":
        meta["four_bit_layers"] = four_bit
        meta["float_layers"] = float_layers
    kind = "hf-model" if method == "full" else "hf-adapter"
    return Artifact(path=ctx.output_dir, kind=kind, meta=meta, metrics=metrics)


@dataclass
class _Part:
    """One split a run reads: which data set, which split, its spec and its examples."""

    data: str
    split: str
    spec: Any
    rows: list[dict[str, Any]]


def _splits(ctx: PassContext, task: str) -> dict[str, _Part]:
    """`train` (and `eval` when there is one), read and checked before any model loads."""
    params = ctx.params
    parts = {"train": _read(ctx, params.data, params.train_split, task)}
    eval_name = params.eval_data or params.data
    if params.eval_data or datalib.has_split(ctx.data[eval_name], params.eval_split):
        parts["eval"] = _read(ctx, eval_name, params.eval_split, task)
    elif params.eval_steps:
        raise DataError(f"pass '{ctx.node}': eval_steps is set but data '{params.data}' has no '{params.eval_split}' split; add one under data.{params.data}.splits or set eval_data")
    return parts


def _read(ctx: PassContext, name: str, split: str, task: str) -> _Part:
    spec = ctx.data[name]
    rows = datalib.load_split(spec, split, name)
    datalib.check_fields(rows, spec, name, split, task)
    return _Part(name, split, spec, rows)


def _features(part: _Part, tokenizer, max_seq_len: int, labels: list[str]) -> list[dict[str, Any]]:
    if labels:
        return datalib.tokenize_classification(part.rows, part.spec, tokenizer, max_seq_len, labels, part.data, part.split)
    return datalib.tokenize_lm(part.rows, part.spec, tokenizer, max_seq_len, part.data, part.split)


def _trainer(ctx: PassContext, model, tokenizer, params: Any, train_set, eval_set, task: str, autocast: bool):
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainingArguments

    batches = None if params.batch_size else datalib.TokenBatches([len(f["input_ids"]) for f in train_set], params.batch_tokens, params.seed)
    forward_passes = len(batches) if batches else math.ceil(len(train_set) / params.batch_size)
    steps_per_epoch = math.ceil(forward_passes / params.gradient_accumulation_steps)
    longest_eval = max((len(f["input_ids"]) for f in eval_set or []), default=1)
    eval_batch = params.batch_size or max(1, params.batch_tokens // longest_eval)
    max_steps = params.max_steps or max(1, math.ceil(steps_per_epoch * params.epochs))
    save_steps = params.save_steps or max(1, max_steps // 10)
    eval_steps = params.eval_steps
    if params.early_stopping_patience:
        save_steps = eval_steps  # the best checkpoint must exist at each evaluation
    tensorboard = params.report_to == "tensorboard"
    args = TrainingArguments(
        output_dir=str(ctx.work_dir / CHECKPOINTS),
        max_steps=max_steps,
        per_device_train_batch_size=params.batch_size or 1,  # unused with token batches (the loader below)
        per_device_eval_batch_size=eval_batch,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler if params.lr_scheduler != "constant" else "constant_with_warmup",
        warmup_steps=params.warmup_steps if params.warmup_steps is not None else params.warmup_ratio,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        activation_checkpointing=params.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if params.gradient_checkpointing else None,
        bf16=autocast,
        use_cpu=not _has_cuda(),
        seed=params.seed,
        data_seed=params.seed,
        eval_strategy="steps" if eval_steps and eval_set else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        load_best_model_at_end=bool(params.early_stopping_patience),
        metric_for_best_model="eval_loss" if params.early_stopping_patience else None,
        greater_is_better=False if params.early_stopping_patience else None,
        logging_steps=params.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss is a failed run (training_log.divergence), not a step to average away
        report_to=[],  # tensorboard, when asked, is a callback below writing into the output
        train_sampling_strategy="group_by_length",
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        save_only_model=False,
        **_ddp.training_args(params, ctx.config_dir, _has_cuda()),
    )
    callbacks = [training_log.progress_callback(ctx)]
    if tensorboard and args.process_index == 0:  # one writer, on rank 0
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(ctx.output_dir / "tensorboard"))))
    if params.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience))
    pad_id = tokenizer.pad_token_id
    targets_only = task != "text-classification" and not params.loss and _adapters.slices_logits(model)
    trainer = _trainer_class(Trainer, batches, task == "text-classification")(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=lambda batch: datalib.collate(batch, pad_id, targets_only),
        processing_class=tokenizer,
        callbacks=callbacks,
        compute_loss_func=_custom_loss(params.loss, ctx.config_dir) if params.loss else None,
        compute_metrics=_accuracy if task == "text-classification" else None,
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to the run display and the node log
    return trainer


def _trainer_class(trainer, batches, classifier: bool = False):
    """The Trainer, or one whose training loader takes its batches from `batches` (a batch sampler)."""
    if batches is None:
        return trainer

    class TokenBatchTrainer(trainer):
        def get_train_dataloader(self):
            from torch.utils.data import DataLoader

            sampler, rows = _ddp.share(batches, self.train_dataset, self.accelerator.num_processes, classifier)
            loader = DataLoader(rows, batch_sampler=sampler, collate_fn=self.data_collator, num_workers=0)
            return self.accelerator.prepare(loader)

    return TokenBatchTrainer


def _accuracy(prediction) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((logits.argmax(-1) == prediction.label_ids).mean())}


def _final_eval(trainer, params) -> dict[str, float]:
    """The eval metrics of the model as saved: the evaluation the Trainer just ran at the last
    step when there was one (a second pass over the eval set would give the same numbers),
    else a fresh one (also after early stopping, which reloads the best checkpoint)."""
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == trainer.state.global_step and not params.early_stopping_patience:
        return {key: value for key, value in last.items() if key.startswith("eval_")}
    return trainer.evaluate()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _custom_loss(spec: str, config_dir: Path):
    """Import `module:function`, looking next to the pipeline file first."""
    module_name, _, function = spec.partition(":")
    if str(config_dir) not in sys.path:
        sys.path.insert(0, str(config_dir))
    try:
        return getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as err:
        raise SlimopsError(f"cannot import loss '{spec}' ({err}); put {module_name}.py next to the pipeline file") from None


def _last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint (a kill mid-save leaves one without trainer_state.json)."""
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit()]
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None


def _save(model, tokenizer, method: str, out: Path) -> None:
    if method == "full":
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    else:
        model.save_pretrained(out)  # a peft model writes only adapter_config.json + adapter weights
