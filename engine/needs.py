"""What a pass needs from the Python environment, read one way by the planner and `slimops doctor`.

- A pass lists the distributions it imports in `Pass.requires`; that tuple is the table.
- `installed(requires)`: each distribution's installed version, None where it is missing.
- `install_line(dists)`: the command to give a user for the missing ones.
- `IMPORTED_BY`: libraries that import a module without declaring it, so that a clean install of
  them is not enough; `doctor` imports each module to prove it.
"""

from __future__ import annotations

import importlib.metadata

# Distributions whose plain `pip install NAME` is the wrong advice.
INSTALL = {
    "torch": "pip install torch==2.13.0",  # the CPU build from PyPI's index; unpinned pulls a CUDA build of several GB
    "slimops": "pip install -e .",
    "lm-eval": "pip install 'slimops[eval]'",  # the extra pins the version the tests pass with
}

# module to import -> (who imports it, the distributions it needs that its library does not declare)
IMPORTED_BY = {
    "onnxruntime_genai.models.builder": ("the onnx pass (decoders)", ("onnx-ir",)),
    "onnxscript": ("torch.onnx's dynamo exporter (the onnx pass, encoders)", ("onnxscript", "onnx-ir")),
}

# top-level module -> distribution, where the names differ
DISTRIBUTION_OF = {"onnx_ir": "onnx-ir", "onnxruntime_genai": "onnxruntime-genai", "yaml": "pyyaml"}


def installed(requires: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    """Each distribution's installed version, or None where it is not installed."""
    found: dict[str, str | None] = {}
    for dist in requires:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def install_line(dists: list[str]) -> str:
    """One command that installs every distribution in `dists`."""
    special = [INSTALL[d] for d in dists if d in INSTALL]
    plain = [d for d in dists if d not in INSTALL]
    return " && ".join([*special, *([f"pip install {' '.join(plain)}"] if plain else [])])
