"""The model side of a fine-tuning method: the base loaded for it (4 bits for qlora, with the
layers bitsandbytes cannot block kept in float) and the method's trainable parts put on it (peft's
LoRA, DoRA, LoHa, LoKr, IA3; nothing for full fine-tuning).

- `unquantizable_layers(base, task, labels)`: what qlora keeps in float, read from a weightless skeleton.
- `load_model(base, task, method, params, labels, float_modules)`: the base model for the method.
- `wrap(model, method, params, task)`: the model with the method's trainable parts.
- `inputs_uncast(model, active)`: a context in which peft's layers take bf16 inputs as they come.
- `slices_logits(model)`: whether the model can project only the labelled positions.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from slimops.errors import ModelError
from slimops.kinds import CLASSIFIER, auto_model_class


# bitsandbytes quantizes 4-bit weights in blocks of 64 along a row; its CPU kernel for AVX512-BF16
# and AMX machines repacks a layer's weight in groups of 32 output rows and fails on any other
# shape ("shape '[32, 0]' is invalid"), so such layers are kept in float on every machine alike.
BNB_BLOCK = 64
BNB_ROW_GROUP = 32


def unquantizable_layers(base: Path, task: str, labels: list[str]) -> tuple[list[str], list[str]]:
    """The linear layers whose (out, in) shape does not fit bitsandbytes' 4-bit blocks, and what
    transformers keeps in float on its own (the output head); read from a weightless skeleton."""
    import torch
    from transformers import AutoConfig
    from transformers.quantizers.base import get_keys_to_not_convert

    config = AutoConfig.from_pretrained(base)
    auto = auto_model_class(task)
    if task == CLASSIFIER:
        config.num_labels = len(labels)
    with torch.device("meta"):
        skeleton = auto.from_config(config)
    kept = list(get_keys_to_not_convert(skeleton))
    misfits = sorted(
        name for name, module in skeleton.named_modules()
        if isinstance(module, torch.nn.Linear) and name not in kept
        and (module.in_features % BNB_BLOCK or module.out_features % BNB_ROW_GROUP)
    )
    return misfits, kept


def load_model(base: Path, task: str, method: str, params: Any, labels: list[str], float_modules: list[str] | None = None,
               precision: str = "fp32", bf16_base: bool = False):
    """The base model to train: fp32, or bf16 weights when `bf16_base` (an adapter's frozen base)."""
    import torch

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if bf16_base else torch.float32}
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=params.quant_type,
            bnb_4bit_use_double_quant=params.double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
            llm_int8_skip_modules=float_modules,  # a list replaces transformers' own, so it carries those too
        )
    if task == CLASSIFIER:
        return auto_model_class(task).from_pretrained(
            base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}, **kwargs
        )
    return auto_model_class(task).from_pretrained(base, **kwargs)


def wrap(model, method: str, params: Any, task: str):
    """Put the method's trainable parts on `model` (nothing for `full`)."""
    if method == "full":
        return model
    from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    task_type = TaskType.SEQ_CLS if task == "text-classification" else TaskType.CAUSAL_LM
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=params.gradient_checkpointing)
    if method == "ia3":
        config = IA3Config(
            task_type=task_type, target_modules=params.target_modules, feedforward_modules=params.feedforward_modules,
            modules_to_save=params.modules_to_save,
        )
    else:
        common = dict(task_type=task_type, r=params.r, alpha=params.alpha, target_modules=params.target_modules or "all-linear", modules_to_save=params.modules_to_save)
        if method in ("lora", "dora", "qlora"):
            config = LoraConfig(
                task_type=common["task_type"], r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout,
                target_modules=common["target_modules"], modules_to_save=params.modules_to_save, use_dora=method == "dora",
            )
        elif method == "loha":
            config = LoHaConfig(task_type=task_type, r=params.r, alpha=params.alpha, module_dropout=params.dropout, target_modules=common["target_modules"], modules_to_save=params.modules_to_save)
        else:
            config = LoKrConfig(task_type=task_type, r=params.r, alpha=params.alpha, module_dropout=params.dropout, target_modules=common["target_modules"], modules_to_save=params.modules_to_save)
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ModelError(f"peft cannot apply {method} to this model: {err}; set target_modules to module names it has") from None


def inputs_uncast(model, active: bool):
    """While active, peft's adapter layers take their inputs as they come (bf16) instead of copying
    them to the adapter weights' fp32; autocast then runs the adapter's matmuls in bf16."""
    if not active:
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not all(hasattr(m, "cast_input_dtype_enabled") for m in model.modules() if isinstance(m, BaseTunerLayer)):
        return contextlib.nullcontext()  # ia3's layers cast nothing

    return disable_input_dtype_casting(model)


def slices_logits(model) -> bool:
    """Whether the model projects only chosen positions onto its vocabulary (`logits_to_keep` as a
    boolean mask, with `shift_labels`): transformers' causal LMs whose module uses its slicing
    helper. A custom loss sees full logits, so it never gets here."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return hasattr(sys.modules.get(type(base).__module__), "slice_logits_to_keep")
