"""Every error slimops shows a user, drawn once.

    SlimopsError                 base; `str(err)` is the whole message the CLI prints
    ├── ConfigError              the pipeline file or an override is wrong (exit 2)
    │                            carries `issues`: one `Issue(file, line, path, message)` each
    ├── PlanError                the config is valid but cannot be planned: cycle, unknown input,
    │                            kind mismatch, missing package, a target a pass cannot serve (exit 2)
    ├── DataError                a data set is missing, unreadable or does not fit its template (exit 2)
    ├── ModelError               a model is not a local path, a registered name, nor reachable (exit 2)
    ├── PassError                a pass failed while running; names the node and its log (exit 1)
    ├── CacheError               the cache is unreadable, locked out, or an entry is corrupt (exit 1)
    ├── TemplateError            `slimops init` cannot copy: an unknown template, a destination that
    │                            is a file, or files in the way (exit 2)
    └── GoalError                every node ran and is cached, but an evaluation missed a goal or
                                 left one undecided (exit 3); carries `misses` (one dict per goal
                                 that fails the run) and the `result`

Each message says where (file, line, key path, node) and what to do next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class SlimopsError(Exception):
    """Base of every error slimops reports to a user."""

    exit_code = 1


@dataclass(frozen=True)
class Issue:
    """One problem in a config file: where it is and what is wrong."""

    file: str | None
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(SlimopsError):
    """The pipeline file, or an override, does not describe a valid pipeline."""

    exit_code = 2

    def __init__(self, issues: list[Issue] | str, file: str | Path | None = None):
        if isinstance(issues, str):
            issues = [Issue(str(file) if file else None, None, "", issues)]
        self.issues = list(issues)
        count = len(self.issues)
        head = f"{count} error{'s' if count != 1 else ''} in the pipeline config:"
        super().__init__("\n".join([head, *(f"  {issue}" for issue in self.issues)]))


class PlanError(SlimopsError):
    """The config is valid, but its passes do not form a runnable plan."""

    exit_code = 2


class DataError(SlimopsError):
    """A data set cannot be read or does not fit what a pass asks of it."""

    exit_code = 2


class ModelError(SlimopsError):
    """A model cannot be found locally, by a registered name, or on a hub."""

    exit_code = 2


class PassError(SlimopsError):
    """A pass failed while running."""

    exit_code = 1

    def __init__(self, node: str, message: str, log: Path | None = None):
        self.node = node
        self.log = log
        text = f"pass '{node}' failed: {message}"
        if log is not None:
            text += f"\n  log: {log}"
        super().__init__(text)


class CacheError(SlimopsError):
    """The cache cannot be read or written, or an entry is corrupt."""

    exit_code = 1


class TemplateError(SlimopsError):
    """`slimops init` cannot copy a template where it was asked to."""

    exit_code = 2


class GoalError(SlimopsError):
    """Every node completed (and is cached), but a goal was missed (`on_miss: fail`) or left
    undecided by too few examples (`on_undecided: fail`)."""

    exit_code = 3

    def __init__(self, misses: list[dict], result=None):
        self.misses = misses
        self.result = result
        undecided = [m for m in misses if m.get("status") == "undecided"]
        missed = len(misses) - len(undecided)
        count = f"{len(misses)} goal{'s' if len(misses) != 1 else ''}"
        if not undecided:
            head = f"{count} missed (every node is cached; relax the goal or set on_miss: warn):"
        elif not missed:
            head = f"{count} undecided (every node is cached; set on_undecided: warn or evaluate more examples):"
        else:
            head = (f"{count} not met, {missed} missed and {len(undecided)} undecided (every node is cached; relax a missed "
                    "goal or set on_miss: warn; set on_undecided: warn or evaluate more examples for an undecided one):")
        lines = [head]
        for miss in misses:
            line = f"  {miss['node']}: {miss['metric']} {miss['rule']}: {miss['why']}"
            if miss.get("status") == "undecided":
                needed = miss.get("needed")
                line += f" (undecided with {miss.get('n')} examples; about {needed} would decide it)" if isinstance(needed, int) else " (undecided)"
            lines.append(line)
        super().__init__("\n".join(lines))
