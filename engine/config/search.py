"""The `search:` block of a pipeline file: its shape, and how it fits the pipeline (optuna is
imported when a search runs).

- `SearchSpec`: the space (override paths to values or ranges), strategy, trials, objectives.
- `Distribution`: a range to sample from; `Objective`: a metric to optimise and its direction.
- `override(path, value)`: the `--set` text a trial sets a value with.
- `space_issues(...)`: each value of the space set as a trial sets it and checked with the rest of
  the file (at load time); `objective_issues(...)`: each objective names an evaluation that reports
  its metric (at plan time, where node names are known). Both locate at the search key's line.
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Annotated, Any, Callable, Iterable, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from slimops.config.source import Lines
from slimops.errors import ConfigError, Issue
from slimops.metrics import GROUPS, lower_is_better
from slimops.plugin import BASELINE_SUFFIX

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


def override(path: str, value: Any) -> str:
    """`path=value` as `--set` reads it: the value written as YAML, so a trial's value keeps its type."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return f"{path}={text.removesuffix('...').strip()}"


def _probes(choice: list[Any] | Distribution) -> list[tuple[Any, bool]]:
    """(value, whether it lies inside a range): a list's values; a range's ends, and for a float
    range one value between them, since a float range over a whole-number param fails only there."""
    if isinstance(choice, list):
        return [(value, False) for value in choice]
    name, (low, high) = choice.kind()
    if name == "int":
        return [(low, False), (high, False)]
    inside = (low + high) / 2
    if inside.is_integer():
        inside = inside + 0.5 if inside + 0.5 < high else math.nextafter(inside, high)
    return [(float(low), False), (float(high), False), (inside, True)]


def space_issues(search: SearchSpec, data: dict[str, Any], lines: Lines,
                 check: Callable[[dict[str, Any], list[str]], None]) -> list[Issue]:
    """Every value the space can give, set as a trial sets it, so a bad key or value fails before a trial trains.

    Args:
        search: the validated block.
        data: the whole file's data (overrides applied).
        lines: where its keys are, to locate each issue at its search key (a listed value at its own line).
        check: validates a copy of `data` with `--set` overrides (the loader, less this check),
            raising ConfigError.
    """
    passes = data.get("passes") if isinstance(data.get("passes"), dict) else {}
    base = {key: value for key, value in data.items() if key != "search"}  # a trial's file, less this block
    issues: list[Issue] = []
    for key, choice in search.space.items():
        where = ("search", "space", key)
        name = key.split(".")[1]
        if name not in passes:
            close = difflib.get_close_matches(name, [str(p) for p in passes], n=1)
            hint = f"did you mean 'passes.{close[0]}.{key.split('.', 2)[2]}'?" if close else f"passes: {', '.join(map(str, passes)) or 'none'}"
            issues.append(lines.issue(where, f"no pass '{name}' in the file; {hint}"))
            continue
        found: list[tuple[tuple, str]] = []  # (where, message) for each value that fails
        probes = _probes(choice)
        for index, (value, inside) in enumerate(probes):
            if inside and found:
                break  # the ends fail already, and for the same reason
            try:
                check(copy.deepcopy(base), [override(key, value)])
            except ConfigError as err:
                at = (*where, index) if isinstance(choice, list) else where
                for issue in err.issues:
                    message = issue.message if issue.path == key else f"{issue.path}: {issue.message}"
                    if inside:
                        kind, (low, high) = choice.kind()
                        message = (f"{kind} gives values between its ends, such as {value:g}: {message}; "
                                   f"for whole numbers write {{int: [{low:g}, {high:g}]}}")
                    found.append((at, message))
        # a message every value gives is about the key (an unknown param), so it is said once, there
        every = [m for _, m in found if sum(m == other for _, other in found) == len(probes) > 1]
        shown: set[tuple[tuple, str]] = set()
        for at, message in found:
            at = where if message in every else at
            if (at, message) not in shown:
                shown.add((at, message))
                issues.append(lines.issue(at, message))
    return issues


def _known_metrics(params: Any) -> tuple[set[str], bool] | None:
    """(the names an evaluation's "after" holds, whether TASK/METRIC names come only when it runs);
    None where the config cannot say (a plugin's metrics)."""
    names_of, custom_of = getattr(params, "metric_names", None), getattr(params, "custom", None)
    if names_of is None or custom_of is None:  # not the evaluate pass's params
        return None
    if params.metrics is None:  # the default set follows the model's task, detected when the pass runs
        return {*names_of(None), *names_of("text-classification")}, False
    custom = {item.metric for item in custom_of()}
    # an lm_eval:TASK metric reports TASK/METRIC names the harness chooses once it runs, so any such
    # name may be valid; the built-in and custom names are known now
    tasks = any(isinstance(m, str) and ":" in m and m not in custom for m in params.metrics)
    return set(names_of(None)), tasks


def objective_issues(search: SearchSpec | None, nodes: Iterable[Any], lines: Lines) -> list[Issue]:
    """Each objective reads a node that makes metrics and, where its metrics are listed, names one of them.

    Args:
        nodes: the plan's nodes (id, name, kind, config); the evaluations are those that make
            `metrics`, less the input model's (`NAME.before`), which holds no "after" values.
    """
    if search is None:
        return []
    nodes = [node for node in nodes if node.kind == "metrics" and node.config is not None and not node.name.endswith(BASELINE_SUFFIX)]
    evaluations = {node.id: node.config.params for node in nodes}
    # a pass the space changes may report other metrics in a trial (its metrics, its data) than in the file
    searched = {key.split(".")[1] for key in search.space}
    varies = {node.id for node in nodes if node.name in searched}
    if not evaluations:
        return [lines.issue(("search", "objectives"), "objectives read an evaluate pass's metrics, and this pipeline has none; "
                            "add one (e.g. eval: {type: evaluate, data: NAME, metrics: [accuracy]})")]
    issues: list[Issue] = []
    for index, objective in enumerate(search.objectives):
        where = ("search", "objectives", index)
        if objective.node is not None and objective.node not in evaluations:
            per_target = [node.id for node in nodes if node.name == objective.node]
            if per_target:
                problem = f"'{objective.node}' runs once per target: name one of {', '.join(per_target)}"
            else:
                close = difflib.get_close_matches(objective.node, list(evaluations), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                problem = f"no evaluate node '{objective.node}'; {hint}evaluate nodes: {', '.join(evaluations)}"
            issues.append(lines.issue((*where, "node"), problem))
            continue
        read = [node_id for node_id in evaluations if objective.node in (None, node_id)]
        known = [None if node_id in varies else _known_metrics(evaluations[node_id]) for node_id in read]
        if any(k is None or (k[1] and "/" in objective.metric) for k in known):
            continue
        names = sorted({name for k in known for name in k[0]})
        if objective.metric in names:
            continue
        if objective.metric in GROUPS:
            fix = f"'{objective.metric}' stands for {', '.join(GROUPS[objective.metric])}: name one"
        else:
            close = difflib.get_close_matches(objective.metric, names, n=1)
            fix = f"did you mean '{close[0]}'?" if close else "add it to the evaluate pass's metrics"
            if any(k[1] for k in known) and "/" not in objective.metric:
                fix += "; an lm_eval task's metrics are named TASK/METRIC"
        reported = ", ".join(names) or "nothing the config names"
        problem = (f"node '{objective.node}' does not report '{objective.metric}' (it reports {reported})" if objective.node
                   else f"no evaluate node reports '{objective.metric}' (they report {reported})")
        issues.append(lines.issue((*where, "metric"), f"{problem}; {fix}"))
    return issues
