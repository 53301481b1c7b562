"""The model config as the onnxruntime-genai model builder reads it, where transformers 5 writes it otherwise.

The builder reads the transformers config object (`AutoConfig.from_pretrained`) and, for some
families, looks for fields in the layout transformers 4 wrote. In the builder's own process,
`install()` wraps `AutoConfig.from_pretrained` so that the object it returns carries those fields
too; the user's folder and the model's weights are not touched.

- `adapt(config)`: adds the fields the builder looks for; returns what it added, for the log.
- `install()`: makes every `AutoConfig.from_pretrained` in this process return an adapted config.
"""

from __future__ import annotations

from typing import Any

NOTE_PREFIX = "slimops builder config:"


def adapt(config: Any) -> list[str]:
    """Add to `config`, in place, the fields the builder reads; returns a line per change."""
    notes = []
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict):
        return notes
    layer_types = set(getattr(config, "layer_types", None) or [])
    if layer_types and layer_types <= set(rope) and "rope_type" not in rope:
        # Gemma 3 as transformers 5 saves it: one rope block per layer type. The builder reads the
        # full-attention layers' block as the model's rope and the sliding layers' theta as
        # `rope_local_base_freq`, as transformers 4 wrote them; the blocks per layer type stay, for
        # the PyTorch model the builder loads its weights through.
        full = rope.get("full_attention") or next(iter(rope.values()))
        local = rope.get("sliding_attention", full)
        config.rope_parameters = {**rope, **full}
        config.rope_theta = full.get("rope_theta", 10000.0)
        config.rope_local_base_freq = local.get("rope_theta", config.rope_theta)
        notes.append(f"rope per layer type -> global {full.get('rope_type')} (theta {config.rope_theta}), "
                     f"local theta {config.rope_local_base_freq}")
    elif rope.get("rope_type") == "longrope" and "type" not in rope:
        # Phi-3 long-context checkpoints: the builder reads the scaling policy from `type`
        rope["type"] = "longrope"
        notes.append("longrope: added rope_parameters.type")
    return notes


def install() -> None:
    """Wrap `transformers.AutoConfig.from_pretrained` so every config it returns is adapted."""
    import transformers

    original = transformers.AutoConfig.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        config = original(cls, *args, **kwargs)
        for note in adapt(config):
            print(NOTE_PREFIX, note, flush=True)
        return config

    transformers.AutoConfig.from_pretrained = classmethod(from_pretrained)
