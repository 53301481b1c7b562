"""Olive's passes, one row each, and what each becomes in slimops.

- `convert_pass(record, name, body, source)`: one Olive pass (its `config:` flattened) as a `Step`:
  the slimops type, its params (each with the Olive key it came from), its data references and
  its role in a chain; notes for every setting mapped to something else or dropped.
- `PASSES`: Olive type -> slimops type, for the table in docs/olive.md and for messages.
- `search_value(value)`: an Olive search form (a list of choices, a `SearchParameter`, or
  `{type: float|int|choice, low, high, log, values}`) as a slimops `search.space` entry, or None.

Where the Olive file leaves a setting out that changes what is trained, the step carries Olive's
default (LoRA r 64, alpha 16, dropout 0.05; learning rate 2e-4, constant schedule, 3% warmup), so
the converted pipeline trains what `olive run` trains; a comment says so, for the user to drop.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from slimops.config.source import Path_
from slimops.olive.record import Record


ADAPTERS = {"LoRA": "lora", "QLoRA": "qlora", "DoRA": "dora", "LoHa": "loha", "LoKr": "lokr"}
EXPORTS = {"OnnxConversion": "onnx", "ModelBuilder": "onnx"}
QUANTIZERS = {"OnnxMatMul4Quantizer": "rtn", "OnnxBlockWiseRtnQuantization": "rtn", "OnnxHqqQuantization": "hqq",
              "OnnxKQuantQuantization": "k_quant", "OnnxDynamicQuantization": "int8_dynamic",
              "OnnxStaticQuantization": "qdq", "OnnxQuantization": "qdq"}
PASSES: dict[str, str] = {**ADAPTERS, **EXPORTS, **{name: "quantize" for name in QUANTIZERS},
                          "OrtTransformersOptimization": "optimize", "ExtractAdapters": "generate_adapter",
                          "MergeAdapterWeights": "merge_adapter"}
# Olive passes with no slimops equivalent, and the nearest thing to write instead
NEAREST: dict[str, str] = {
    "LoftQ": "type: qlora (a 4-bit base with a LoRA adapter)",
    "Gptq": "a quantize pass with method: gptq after the onnx pass", "GptqQuantizer": "a quantize pass with method: gptq after the onnx pass",
    "GptqModel": "a quantize pass with method: gptq after the onnx pass", "AutoAWQQuantizer": "a quantize pass with method: gptq after the onnx pass",
    "Rtn": "a quantize pass with method: rtn after the onnx pass", "OnnxBnb4Quantization": "a quantize pass with method: rtn, bits: 4",
    "OnnxFloatToFloat16": "an optimize pass with fp16: true, or an onnx pass with precision: fp16",
    "OptimumConversion": "type: onnx", "MobiusBuilder": "type: onnx",
}
# Olive passes that only tidy a graph slimops's export already writes tidy: dropped with a note
TIDY = {"OnnxPeepholeOptimizer": "slimops's export is already folded and deduplicated",
        "OnnxQuantizationPreprocess": "the quantize pass reads the exported graph as it is",
        "AddOliveMetadata": "slimops records where a model came from in its manifest"}

# Olive's defaults that change what is trained, carried over when the file leaves them out
ADAPTER_DEFAULTS = {"r": 64, "alpha": 16, "dropout": 0.05}
TRAINING_DEFAULTS = {"learning_rate": 2e-4, "lr_scheduler": "constant", "warmup_ratio": 0.03}

# HF TrainingArguments -> the fine-tuning pass's keys
TRAINING_ARGS = {
    "learning_rate": "learning_rate", "num_train_epochs": "epochs", "max_steps": "max_steps",
    "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "gradient_accumulation_steps",
    "lr_scheduler_type": "lr_scheduler", "warmup_ratio": "warmup_ratio", "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm", "gradient_checkpointing": "gradient_checkpointing",
    "seed": "seed", "eval_steps": "eval_steps", "save_steps": "save_steps", "logging_steps": "logging_steps",
    "report_to": "report_to", "deepspeed": "deepspeed",
}
# training arguments that say how the Trainer runs, not what it learns
TRAINER_ONLY = {"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "eval_strategy", "evaluation_strategy",
                "save_strategy", "logging_strategy", "save_total_limit", "per_device_eval_batch_size", "logging_dir",
                "dataloader_num_workers", "dataloader_pin_memory", "remove_unused_columns", "group_by_length",
                "disable_tqdm", "push_to_hub", "hub_model_id", "run_name", "load_best_model_at_end", "include_tokens_per_second"}
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant", "constant_with_warmup": "constant"}
FINETUNE_KEYS = ["data", "eval_data", "r", "alpha", "dropout", "target_modules", "modules_to_save", "precision",
                 *TRAINING_ARGS.values(), "max_seq_len", "packing", "early_stopping_patience"]
DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float32": "fp32", "fp32": "fp32"}


@dataclass
class Step:
    """One Olive pass, converted."""

    name: str
    olive_type: str
    type: str  # the slimops type
    role: str  # adapter | merge | export | extract | quantize | optimize
    source: Path_  # where the pass is in the Olive file
    params: dict[str, tuple[Any, Path_, str | None]] = field(default_factory=dict)  # key -> (value, Olive key, note)
    data: dict[str, tuple[Any, Path_]] = field(default_factory=dict)  # key -> (Olive data config name or body, Olive key)
    search: dict[str, tuple[Any, Path_]] = field(default_factory=dict)  # key -> (space entry, Olive key)
    evaluator: tuple[Any, Path_] | None = None  # the pass's own evaluator (a name or a body), and where it is

    def set(self, key: str, value: Any, source: Path_, note: str | None = None) -> None:
        space = search_value(value) if key not in LIST_PARAMS or _list_of_lists(value) else None
        if isinstance(space, str):  # a search form that cannot be one
            raise _Bad(space)
        if space is not None:
            self.search[key] = (space, source)
        else:
            self.params[key] = (value, source, note)


LIST_PARAMS = {"target_modules", "modules_to_save", "nodes_to_exclude", "report_to"}


class _Bad(ValueError):
    """A value Olive allows that slimops cannot take; the message says what to write."""


def _list_of_lists(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, list) for item in value)


def search_value(value: Any) -> Any:
    """The `search.space` entry an Olive search form stands for; None for a plain value; a message
    (str) for a form slimops cannot search."""
    if isinstance(value, list) and value and not isinstance(value[0], dict):
        return list(value)
    if not isinstance(value, dict):
        return ("slimops has no default search values for a pass: give the values to try as a list"
                if value == "SEARCHABLE_VALUES" else None)
    kind = str(value.get("type", "")).lower()
    if value.get("olive_parameter_type") == "SearchParameter" or kind in ("categorical", "boolean"):
        return [True, False] if kind == "boolean" else list(value.get("support") or value.get("values") or [])
    if kind == "choice":
        return list(value.get("values") or [])
    if kind in ("float", "int") and "low" in value and "high" in value:
        low, high, step = value["low"], value["high"], value.get("step")
        if step:
            count = int(math.floor((high - low) / step + 1e-9)) + 1
            return [low + i * step if kind == "float" else int(low + i * step) for i in range(count)]
        if kind == "int":
            if value.get("log"):
                return "slimops samples an int range evenly: drop log, or give the values to try as a list"
            return {"int": [int(low), int(high)]}
        return {"log_uniform" if value.get("log") else "uniform": [float(low), float(high)]}
    return None


def convert_pass(rec: Record, name: str, body: dict[str, Any], source: Path_) -> Step | None:
    """One Olive pass as a Step; None (with an error or a note recorded) when there is none."""
    olive_type = str(body.get("type", ""))
    canonical = next((known for known in [*PASSES, *NEAREST, *TIDY] if known.lower() == olive_type.lower()), olive_type)
    params = {key: value for key, value in body.items() if key not in ("type", "config")}
    params.update(body.get("config") or {})
    where = ("passes", name)
    evaluator = params.pop("evaluator", None)
    for key in ("disable_search", "clean_run_cache", "output_name", "host"):
        if params.pop(key, None) is not None:
            rec.drop(("passes", name), (*source, key), "slimops caches each node and runs it here", warn=False)
    if canonical in TIDY:
        rec.drop(where, source, f"Olive's {canonical} ({TIDY[canonical]})", warn=False)
        return None
    if canonical not in PASSES:
        hint = NEAREST.get(canonical) or _nearest_type(canonical)
        rec.error((*source, "type"), f"the Olive pass '{olive_type}' has no slimops equivalent; nearest: {hint} (docs/olive.md lists what converts)")
        return None
    step = Step(name, canonical, PASSES[canonical], "", source)
    if evaluator is not None:
        step.evaluator = (evaluator, (*source, "evaluator"))
    convert = {**{t: _adapter for t in ADAPTERS}, **{t: _export for t in EXPORTS}, **{t: _quantizer for t in QUANTIZERS},
               "OrtTransformersOptimization": _optimizer, "ExtractAdapters": _extract, "MergeAdapterWeights": _merge}[canonical]
    try:
        convert(rec, step, params, _key_path(body, source))
    except _Bad as err:
        rec.error(source, str(err))
        return None
    return step


def _key_path(body: dict[str, Any], source: Path_):
    """Where key `k` of a pass sits in the Olive file: under `config:` when the file nests it there."""
    nested = body.get("config") or {}
    return lambda key: (*source, "config", key) if key in nested else (*source, key)


def _nearest_type(olive_type: str) -> str:
    close = difflib.get_close_matches(olive_type, list(PASSES), n=1)
    return f"Olive's {close[0]} (type: {PASSES[close[0]]})" if close else "see 'slimops passes'"


def _known(rec: Record, step: Step, params: dict, at, table: dict[str, str], dropped: dict[str, tuple[str, bool]]) -> None:
    """Keys of `params` not handled above: renamed per `table`, dropped per `dropped`, else an error."""
    for key, value in params.items():
        if key in table:
            try:
                step.set(table[key], value, at(key))
            except _Bad as err:
                rec.error(at(key), str(err))
        elif key in dropped:
            why, warn = dropped[key]
            rec.drop(("passes", step.name), at(key), why, warn)
        else:
            rec.unknown(at(key), [*table, *dropped], f"Olive's {step.olive_type}",
                        f" (slimops's {step.type} takes: see 'slimops passes {step.type}')")


def _adapter(rec: Record, step: Step, params: dict, at) -> None:
    step.role = "adapter"
    for key in ("train_data_config", "eval_data_config"):
        if key in params:
            step.data["data" if key.startswith("train") else "eval_data"] = (params.pop(key), at(key))
    if "data" not in step.data:
        rec.error(step.source, f"Olive's {step.olive_type} needs train_data_config: the name of a data config")
    given = {"dropout" if key == "lora_dropout" else "alpha" if key == "lora_alpha" else key for key in params}
    defaults = {key: value for key, value in ADAPTER_DEFAULTS.items() if key not in given}
    dtype = params.pop("torch_dtype", None)
    if dtype is not None:
        if str(dtype) not in DTYPES:
            rec.error(at("torch_dtype"), f"slimops trains in fp32 or bf16 ({', '.join(DTYPES)}); float16 mixed precision has no "
                      "slimops equivalent: write bfloat16, or leave it out (slimops picks bf16 where the CPU or GPU computes it natively)")
        else:
            step.set("precision", DTYPES[str(dtype)], at("torch_dtype"))
    else:
        rec.note(("passes", step.name), step.source, "Olive trains in bfloat16 by default; slimops picks bf16 where the "
                 "hardware computes it natively, else fp32 (precision: auto)")
    if "training_args" in params:
        _training_args(rec, step, params.pop("training_args") or {}, at("training_args"))
    defaults.update({key: value for key, value in TRAINING_DEFAULTS.items() if key not in step.params and key not in step.search
                     and not (key == "warmup_ratio" and "warmup_steps" in {**step.params, **step.search})})
    table = {"r": "r", "alpha": "alpha", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "target_modules",
             "modules_to_save": "modules_to_save"}
    if step.olive_type == "QLoRA":
        table.update(quant_type="quant_type", double_quant="double_quant")
    placement = ("slimops places the model itself", False)
    dropped = {"device_map": placement, "allow_tf32": ("slimops allows TF32 on GPUs that have it", False),
               "ephemeral_gpu_offload": placement, "compute_dtype": ("slimops computes in the training precision", False),
               "save_quant_config": ("slimops keeps the 4-bit settings in the adapter's manifest", False)}
    for key in ("rank_dropout", "module_dropout", "use_effective_conv2d", "exclude_modules", "init_weights", "layers_to_transform",
                "layers_pattern", "rank_pattern", "alpha_pattern", "decompose_both", "decompose_factor", "rank_dropout_scale"):
        dropped[key] = (f"slimops's {step.type} has no {key}; it keeps peft's default (nearest: target_modules)", True)
    if "lora_alpha" in params and "alpha" not in params:
        rec.note(("passes", step.name, "alpha"), at("lora_alpha"), "Olive 0.13 names this setting alpha and ignores "
                 "lora_alpha (training at its default 16); here it is the alpha the file names")
    _known(rec, step, params, at, table, dropped)
    for key, value in defaults.items():  # after the file's own keys, so the written pass reads as the file did
        olive_key = {"dropout": "lora_dropout", "lr_scheduler": "lr_scheduler_type"}.get(key, key)
        step.set(key, value, step.source, f"Olive's default {olive_key}: drop it for slimops's")


def _training_args(rec: Record, step: Step, args: dict, source: Path_) -> None:
    extra = args.pop("extra_args", None) or {}
    for key, value in {**args, **extra}.items():
        at = (*source, "extra_args", key) if key in extra else (*source, key)
        if key in TRAINING_ARGS:
            if key == "max_steps" and isinstance(value, int) and value <= 0:
                continue  # HF's "not set"
            if key == "lr_scheduler_type":
                if value not in SCHEDULERS:
                    rec.error(at, f"slimops schedules the learning rate with {', '.join(sorted(set(SCHEDULERS.values())))}; "
                              f"'{value}' has no slimops equivalent (nearest: lr_scheduler: cosine)")
                    continue
                value = SCHEDULERS[value]
            try:
                step.set(TRAINING_ARGS[key], value, at)
            except _Bad as err:
                rec.error(at, str(err))
        elif key in ("bf16", "fp16", "tf32"):
            if key == "bf16" and value:
                step.set("precision", "bf16", at)
            elif key == "fp16" and value:
                rec.error(at, "fp16 mixed precision has no slimops equivalent; nearest: precision: bf16 (or leave it to precision: auto)")
        elif key in TRAINER_ONLY:
            rec.drop(("passes", step.name), at, "slimops runs the Trainer itself (checkpoints in the cache, evaluation at "
                     "eval_steps, resuming from the last checkpoint)", warn=False)
        else:
            close = difflib.get_close_matches(TRAINING_ARGS.get(key, key), FINETUNE_KEYS, n=1)
            rec.drop(("passes", step.name), at, f"slimops's {step.type} has no equivalent of the training argument '{key}'"
                     + (f"; nearest: passes.{step.name}.{close[0]}" if close else ""))


def _merge(rec: Record, step: Step, params: dict, at) -> None:
    step.role = "merge"
    _known(rec, step, params, at, {}, {})


def _export(rec: Record, step: Step, params: dict, at) -> None:
    step.role = "export"
    external = ("slimops stores weights beside the graph itself", False)
    common = {key: external for key in ("save_as_external_data", "all_tensors_to_one_file", "external_data_name",
                                         "size_threshold", "convert_attribute")}
    if step.olive_type == "OnnxConversion":
        dtype = str(params.pop("torch_dtype", "float32"))
        precision = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dtype)
        if precision is None:
            raise _Bad(f"OnnxConversion torch_dtype '{dtype}' has no slimops equivalent; give float32, float16 or bfloat16")
        step.set("precision", precision, at("torch_dtype"), "Olive's OnnxConversion exports the weights as they are")
        if "use_dynamo_exporter" in params:
            step.set("exporter", "dynamo" if params.pop("use_dynamo_exporter") else "torchscript", at("use_dynamo_exporter"))
        note = ("slimops picks the export of each model itself", False)
        dropped = {**common, **{key: note for key in ("device", "past_key_value_name", "parallel_jobs", "merge_adapter_weights",
                                                       "save_metadata_for_token_generation", "optimize", "dynamic", "use_dynamo_exporter")}}
        _known(rec, step, params, at, {"target_opset": "opset"}, dropped)
        rec.note(("passes", step.name), step.source, "decoders export through onnxruntime-genai's model builder, "
                 "encoders through torch.onnx")
        return
    precision = str(params.pop("precision", "fp32")).lower()
    if precision not in ("fp32", "fp16", "bf16", "int4", "int8"):
        raise _Bad(f"ModelBuilder precision '{precision}' has no slimops equivalent; give fp32, fp16, bf16, int4 or int8")
    step.set("precision", precision, at("precision"))
    if precision == "int4":
        step.set("int4_method", "builder", at("precision"), "as Olive: the model builder's own int4 (slimops's default on "
                 "CPUs is affine, closer to the float model: int4_method: affine)")
    builder_only = ("a setting of the model builder slimops does not pass on; put it under extra_options", True)
    quiet = ("slimops builds the whole model each time", False)
    dropped = {**common, "metadata_only": quiet, "search": quiet, "enable_cuda_graph": ("set it in genai_config.json", False),
               **{key: builder_only for key in ("int4_op_types_to_quantize", "int4_algo_config", "use_qdq", "use_8bits_moe",
                                                 "use_webgpu_fp32", "use_cuda_bf16", "include_hidden_states", "exclude_embeds",
                                                 "exclude_lm_head")},
               "int4_nodes_to_exclude": ("the onnx pass quantizes every MatMul; nearest: a quantize pass's nodes_to_exclude", True)}
    table = {"int4_block_size": "block_size", "int4_accuracy_level": "accuracy_level", "int4_is_symmetric": "symmetric",
             "extra_options": "extra_options"}
    _known(rec, step, params, at, table, dropped)


def _extract(rec: Record, step: Step, params: dict, at) -> None:
    step.role = "extract"
    kind = str(params.pop("adapter_type", "lora")).lower()
    if kind != "lora":
        raise _Bad(f"ExtractAdapters adapter_type '{kind}': slimops exports LoRA adapters (and DoRA's, as LoRA weights) only")
    fmt = str(params.pop("save_format", "onnx_adapter")).lower()
    if fmt != "onnx_adapter":
        rec.drop(("passes", step.name), at("save_format"), f"slimops writes onnx_adapter files (onnxruntime-genai's), not {fmt}")
    quiet = ("slimops's adapter inputs are always inputs, of any rank", False)
    _known(rec, step, params, at, {}, {"make_inputs": quiet, "dynamic_lora_r": quiet, "optional_inputs": quiet})


def _quantizer(rec: Record, step: Step, params: dict, at) -> None:
    step.role = "quantize"
    method = QUANTIZERS[step.olive_type]
    if step.olive_type == "OnnxQuantization" and str(params.get("quant_mode", "static")).lower() == "dynamic":
        method = "int8_dynamic"
    if step.olive_type == "OnnxMatMul4Quantizer" and params.get("algorithm"):
        algorithm = str(params.pop("algorithm")).lower()
        method = {"rtn": "rtn", "default": "rtn", "hqq": "hqq", "gptq": "gptq"}.get(algorithm, "")
        if not method:
            raise _Bad(f"OnnxMatMul4Quantizer algorithm '{algorithm}' has no slimops equivalent; give RTN, HQQ or GPTQ")
    params.pop("quant_mode", None)
    step.set("method", method, step.source)
    bits = params.pop("bits", 4 if method in ("rtn", "hqq", "gptq", "k_quant") else None)
    if bits is not None:
        step.set("bits", bits, at("bits"))
    if "data_config" in params:
        step.data["calibration_data"] = (params.pop("data_config"), at("data_config"))
    for key, values in (("activation_type", {"quint8": "uint8", "quint16": "uint16"}), ("weight_type", {"qint8": "int8", "quint8": "uint8"})):
        if key in params:
            value = str(params.pop(key)).lower()
            if value not in values:
                raise _Bad(f"{step.olive_type} {key} '{value}' has no slimops equivalent; give {' or '.join(values)}")
            if method == "qdq":
                step.set(key, values[value], at(key))
            else:
                rec.drop(("passes", step.name), at(key), f"slimops's {method} keeps onnxruntime's {key}", warn=True)
    if "quant_format" in params and str(params.pop("quant_format")).upper() != "QDQ":
        rec.drop(("passes", step.name), at("quant_format"), "slimops writes QDQ (QOperator has no equivalent)")
    graph = ("slimops prepares and calibrates the graph itself", False)
    changes = ("a quantizer setting slimops keeps at onnxruntime's default", True)
    table = {"block_size": "block_size", "is_symmetric": "symmetric", "weight_symmetric": "symmetric",
             "accuracy_level": "accuracy_level", "nodes_to_exclude": "nodes_to_exclude", "per_channel": "per_channel"}
    dropped = {**{key: graph for key in ("quant_preprocess", "calibrate_method", "calibration_providers", "prepare_qdq_config",
                                          "save_as_external_data", "all_tensors_to_one_file", "external_data_name",
                                          "size_threshold", "convert_attribute", "axis", "user_script", "script_dir")},
               **{key: changes for key in ("op_types_to_quantize", "op_types_to_exclude", "nodes_to_quantize", "nodes_to_include",
                                            "reduce_range", "activation_symmetric", "extra_options", "min_real_range",
                                            "tensor_quant_overrides", "weight_only_quant_configs", "precision")}}
    _known(rec, step, params, at, table, dropped)


def _optimizer(rec: Record, step: Step, params: dict, at) -> None:
    step.role = "optimize"
    quiet = ("slimops reads it from the target", False)
    changes = ("an optimizer setting slimops keeps at onnxruntime's default", True)
    table = {"model_type": "model_type", "num_heads": "num_heads", "hidden_size": "hidden_size", "opt_level": "opt_level", "float16": "fp16"}
    dropped = {"use_gpu": quiet, "only_onnxruntime": quiet, "keep_io_types": ("slimops keeps fp32 inputs and outputs", False),
               **{key: changes for key in ("optimization_options", "num_key_value_heads", "force_fp32_ops", "force_fp32_nodes",
                                            "force_fp16_inputs", "use_gqa", "input_int32")}}
    _known(rec, step, params, at, table, dropped)
