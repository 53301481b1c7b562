"""Hardware-target profiles: what a model is built for.

A profile is data: device, ONNX Runtime execution providers, precision, optional limits, and
`settings` that passes read as their defaults for that target (a quantizer's block size, say).
`BUILTIN` holds the vetted profiles, each with what it is for; a pipeline names one, extends one,
or writes its own; `profile_for(device, precision)` finds one.
`machine_support(profile)` says whether this machine can run a profile, without importing torch.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slimops.quantization import BlockSize

Device = Literal["cpu", "cuda", "dml", "npu"]
Precision = Literal["fp32", "fp16", "bf16", "int8", "int4"]

PROVIDER_OF_DEVICE = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "dml": "DmlExecutionProvider",
    "npu": "QNNExecutionProvider",
}


class QuantizeSettings(BaseModel):
    """`settings.quantize`: what the int4/int8 weight quantizers (onnx, quantize, generate_adapter) read for a target."""

    model_config = ConfigDict(extra="forbid")

    block_size: BlockSize | None = None
    accuracy_level: int | None = Field(None, ge=0, le=4)
    symmetric: bool | None = None


class TargetProfile(BaseModel):
    """One hardware target. In YAML either a built-in name (`cpu-int4`) or a mapping."""

    model_config = ConfigDict(extra="forbid")
    shorthand: ClassVar[str] = "extends"  # a target `cpu-int4` is {extends: cpu-int4}

    extends: str | None = Field(None, description="A built-in profile whose fields this one starts from.")
    device: Device = Field("cpu", description="Where the model runs: cpu, cuda, dml (DirectML) or npu.")
    providers: list[str] = Field(
        default_factory=list,
        description="ONNX Runtime execution providers, in order of preference. Empty: the device's own.",
    )
    precision: Precision = Field("fp32", description="Numeric precision of the exported model.")
    quant_format: Literal["weight_only", "qdq", "dynamic"] | None = Field(
        None, description="How quantized weights are stored; NPUs want QDQ."
    )
    memory_gb: float | None = Field(None, gt=0, description="Memory the model must fit in, in GiB.")
    threads: int | None = Field(
        None,
        ge=0,
        description="CPU threads ONNX Runtime runs one operator on, written into the exported model's genai_config.json. "
        "0: one per physical core of the machine the model runs on. Unset: 0 on cpu targets (onnxruntime-genai's own "
        "default there is a single thread), the runtime's default elsewhere.",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Defaults passes read for this target, e.g. {quantize: {block_size: 32}}."
    )

    @field_validator("settings")
    @classmethod
    def _known_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        """`quantize` is checked key by key (a typo there was silently ignored); other groups are for plugins to read."""
        import difflib

        for group in value:
            if group != "quantize" and difflib.get_close_matches(group, ["quantize"], n=1, cutoff=0.75):
                raise ValueError(f"unknown settings group '{group}'; did you mean 'quantize'?")
        if "quantize" in value:
            try:
                QuantizeSettings.model_validate(value["quantize"])
            except ValidationError as err:
                first = err.errors()[0]
                key = ".".join(str(part) for part in first["loc"])
                known = ", ".join(QuantizeSettings.model_fields)
                if first["type"] == "extra_forbidden":
                    close = difflib.get_close_matches(key, list(QuantizeSettings.model_fields), n=1)
                    hint = f"did you mean '{close[0]}'?" if close else f"the keys are {known}"
                    raise ValueError(f"quantize.{key}: unknown key; {hint}") from None
                raise ValueError(f"quantize{'.' + key if key else ''}: {first['msg']}") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = {cls.shorthand: value}
        if isinstance(value, dict) and value.get("extends") is not None:
            base_name = value["extends"]
            if base_name not in BUILTIN:
                raise ValueError(f"unknown target profile '{base_name}'; built-in profiles: {', '.join(BUILTIN)}")
            merged = {**{k: v for k, v in BUILTIN[base_name].items() if k != "about"}, **value}
            return merged
        return value

    @property
    def execution_providers(self) -> list[str]:
        return self.providers or [PROVIDER_OF_DEVICE[self.device]]

    @property
    def runtime_threads(self) -> int | None:
        """The intra-op thread count an exported model should ask for; None leaves the runtime's default."""
        if self.threads is not None:
            return self.threads
        return 0 if self.device == "cpu" else None

    def fields_for_key(self) -> dict[str, Any]:
        """The fields that change what a per-target pass builds (the name of the profile does not)."""
        return self.model_dump(exclude={"extends"})


# The vetted profiles, one entry each: what it is for ("about", shown by `slimops targets`) and
# its fields. `profile_for(device, precision)` reads this table too.
BUILTIN: dict[str, dict[str, Any]] = {
    "cpu": {"about": "any x86/Arm CPU, full precision",
            "device": "cpu", "providers": ["CPUExecutionProvider"], "precision": "fp32"},
    "cpu-int8": {"about": "CPU, int8 dynamic quantization",
                 "device": "cpu", "providers": ["CPUExecutionProvider"], "precision": "int8", "quant_format": "dynamic"},
    "cpu-int4": {
        "about": "CPU, int4 weight-only (MatMulNBits)",
        "device": "cpu",
        "providers": ["CPUExecutionProvider"],
        "precision": "int4",
        "quant_format": "weight_only",
        "settings": {"quantize": {"block_size": 32, "accuracy_level": 4}},
    },
    "cuda-fp16": {"about": "NVIDIA GPU, fp16",
                  "device": "cuda", "providers": ["CUDAExecutionProvider"], "precision": "fp16"},
    "cuda-int4": {
        "about": "NVIDIA GPU, int4 weight-only",
        "device": "cuda",
        "providers": ["CUDAExecutionProvider"],
        "precision": "int4",
        "quant_format": "weight_only",
        "settings": {"quantize": {"block_size": 32}},
    },
    "dml-int4": {
        "about": "DirectML GPU on Windows, int4 weight-only",
        "device": "dml",
        "providers": ["DmlExecutionProvider"],
        "precision": "int4",
        "quant_format": "weight_only",
        "settings": {"quantize": {"block_size": 32}},
    },
    "npu-qdq": {"about": "Qualcomm NPU, int8 QDQ with calibration",
                "device": "npu", "providers": ["QNNExecutionProvider"], "precision": "int8", "quant_format": "qdq"},
}


def about(name: str) -> str:
    """What the built-in profile `name` is for."""
    return BUILTIN[name]["about"]


def profile_for(device: str, precision: str) -> str | None:
    """The built-in profile for a device at a precision, or None when none is vetted."""
    return next((name for name, fields in BUILTIN.items() if (fields["device"], fields["precision"]) == (device, precision)), None)


def builtin(name: str) -> TargetProfile:
    return TargetProfile.model_validate(name)


@functools.lru_cache(maxsize=1)
def available_providers() -> tuple[str, ...]:
    """Execution providers of the installed onnxruntime, or none when it is not installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        return ()
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


@functools.lru_cache(maxsize=1)
def machine_has_cuda() -> bool:
    """Whether an NVIDIA GPU is usable here. Asks nvidia-smi first so that torch stays unimported."""
    if shutil.which("nvidia-smi") is None:
        return False
    if importlib.util.find_spec("torch") is None:
        return True
    import torch

    return bool(torch.cuda.is_available())


def machine_support(profile: TargetProfile) -> tuple[bool, str]:
    """Whether this machine can run `profile`, and why not."""
    providers = available_providers()
    if not providers:
        return False, "onnxruntime is not installed (pip install onnxruntime)"
    missing = [p for p in profile.execution_providers if p not in providers]
    if missing:
        return False, f"this onnxruntime lacks {', '.join(missing)} (has {', '.join(providers)})"
    if profile.device == "cuda" and not machine_has_cuda():
        return False, "no CUDA device on this machine"
    return True, "ok"
