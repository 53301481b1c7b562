"""What validation learns from the data itself, read quickly, before anything runs.

- `data_issues(config)`: (errors, warnings) as `Issue`s located at the `data:` key they concern.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimops.errors import Issue

if TYPE_CHECKING:
    from slimops.config.load import PipelineConfig


def data_issues(config: PipelineConfig) -> tuple[list[Issue], list[Issue]]:
    """Problems with the data sets a pipeline names: (errors, warnings)."""
    return [], []
