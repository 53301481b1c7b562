"""The `search:` block of a pipeline file: its shape only (optuna is imported when a search runs).

- `SearchSpec`: the space (override paths to values or ranges), strategy, trials, objectives.
- `Distribution`: a range to sample from; `Objective`: a metric to optimise and its direction.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from slimops.metrics import lower_is_better

# Bound outside the class: with postponed annotations a field named `int` would shadow the builtin
# in its own annotation, and pydantic would read `tuple[int, int]` as `tuple[None, None]`.
IntRange = tuple[int, int]
FloatRange = tuple[float, float]


class Distribution(BaseModel):
    """A range to sample from: exactly one of uniform, log_uniform, int."""

    model_config = ConfigDict(extra="forbid")

    uniform: FloatRange | None = None
    log_uniform: FloatRange | None = None
    int: IntRange | None = None

    def kind(self) -> tuple[str, tuple]:
        set_fields = [(name, value) for name, value in (("uniform", self.uniform), ("log_uniform", self.log_uniform), ("int", self.int)) if value is not None]
        if len(set_fields) != 1:
            raise ValueError("give exactly one of uniform, log_uniform or int, e.g. {log_uniform: [1e-5, 1e-3]}")
        name, (low, high) = set_fields[0]
        if not low < high or (name == "log_uniform" and low <= 0):
            raise ValueError(f"{name}: need low < high{' and low > 0' if name == 'log_uniform' else ''} (got {low}, {high})")
        return name, (low, high)

    @model_validator(mode="after")
    def _one_range(self):
        self.kind()
        return self


def _choice_form(value: Any) -> str | None:
    return "values" if isinstance(value, list) else "range" if isinstance(value, (dict, Distribution)) else None


# A list or a range, told apart by the value's shape, so a mistake in one is not also reported as
# "not a valid list" (or "not a valid range") for the other.
Choice = Annotated[
    Union[Annotated[list[Any], Tag("values")], Annotated[Distribution, Tag("range")]],
    Discriminator(_choice_form, custom_error_type="search_choice",
                  custom_error_message="give a list of values to try, or a range such as {int: [1, 8]} or {log_uniform: [1e-5, 1e-3]}"),
]


class Objective(BaseModel):
    """A metric to optimise: from an evaluate node's "after" values."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="A metric name the evaluate pass reports (accuracy, perplexity, latency_p50_ms...).")
    direction: Literal["maximize", "minimize"] | None = Field(None, description="Default: minimize for perplexity, latency, memory and size; maximize otherwise.")
    node: str | None = Field(None, description="The evaluate node to read (eval, or eval@laptop); default: the first that has the metric.")

    @property
    def resolved_direction(self) -> str:
        return self.direction or ("minimize" if lower_is_better(self.metric) else "maximize")


class SearchSpec(BaseModel):
    """A search over pass params; each trial is a run with overrides."""

    model_config = ConfigDict(extra="forbid")

    space: dict[str, Choice] = Field(description="Override path (passes.NAME.PARAM) to a list of values or a range.")
    strategy: Literal["grid", "random", "tpe"] = Field("tpe", description="grid tries every combination; random and tpe sample.")
    trials: int | None = Field(None, ge=1, description="How many trials; default: the grid's size, or 10.")
    objectives: list[Objective] = Field(min_length=1, description="Metrics to optimise; several give a Pareto front.")
    seed: int = Field(0, description="Sampler seed, so a search repeats.")
    parallel: int = Field(1, ge=1, description="Trials run at once, each as its own Ray task (engine.executor: ray); "
                          "they share one study and every cached prefix.")

    @field_validator("space")
    @classmethod
    def _paths(cls, value):
        for path, choice in value.items():
            if not path.startswith("passes.") or path.count(".") < 2:
                raise ValueError(f"search key '{path}' must be passes.NAME.PARAM")
            if isinstance(choice, list) and not choice:
                raise ValueError(f"search key '{path}': give at least one value")
        return value

    def grid_size(self) -> int | None:
        """Points in the space, or None when a range makes it continuous."""
        if any(isinstance(choice, Distribution) for choice in self.space.values()):
            return None
        return math.prod(len(choice) for choice in self.space.values())

    def trial_count(self) -> int:
        size = self.grid_size()
        if self.strategy == "grid":
            return min(self.trials or size, size) if size else 0
        return self.trials or 10
