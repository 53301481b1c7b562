"""The pipeline config: what a pipeline file may say, and reading one with every mistake located.

- `spec`: the pydantic models of a file's sections (`PipelineFile`, `ModelSpec`, `DataSpec`,
  `EngineSettings`); `search`: the `search:` block (`SearchSpec`).
- `splits`: the split grammar (`"[:90%]"`, `"test[:200]"`); `names`: pass and target names as
  safe path components.
- `source`: YAML to plain data with the line of every key kept, and `--set` overrides.
- `location`: pydantic's errors turned into `FILE:LINE key.path: message` with a did-you-mean.
- `load`: `load_config` / `parse_config` to a validated `PipelineConfig`.
- `schema`: the JSON Schema and the config reference generated from these models.

Nothing here imports torch: validating a file takes milliseconds.
"""

from slimops.config.load import PassConfig, PipelineConfig, load_config, parse_config
from slimops.config.search import SearchSpec
from slimops.config.spec import MODEL_INPUT, RESERVED_PASS_KEYS, DataSpec, EngineSettings, ModelSpec, PipelineFile

__all__ = [
    "MODEL_INPUT",
    "RESERVED_PASS_KEYS",
    "DataSpec",
    "EngineSettings",
    "ModelSpec",
    "PassConfig",
    "PipelineConfig",
    "PipelineFile",
    "SearchSpec",
    "load_config",
    "parse_config",
]
