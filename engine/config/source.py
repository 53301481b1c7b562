"""Reading a pipeline file: YAML to plain data, with the line of every key kept.

- `load_yaml(path)` parses a file and returns its data and a `Lines` map from key paths to lines.
- YAML syntax errors and duplicate keys become `ConfigError`s naming file and line.
- `apply_overrides` applies `--set a.b=v` strings to the data, remembering which paths they set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slimops.errors import ConfigError, Issue

Path_ = tuple[str | int, ...]


@dataclass
class Lines:
    """Where each key path of a config came from: a line of `file`, or a `--set` override."""

    file: str | None
    lines: dict[Path_, int] = field(default_factory=dict)
    overridden: set[Path_] = field(default_factory=set)

    def issue(self, path: Path_, message: str) -> Issue:
        """An Issue at `path`, located at its line or at its nearest ancestor's."""
        dotted = dotted_path(path)
        for depth in range(len(path), -1, -1):
            prefix = path[:depth]
            if prefix in self.overridden:
                return Issue("--set", None, dotted, message)
            if prefix in self.lines:
                return Issue(self.file, self.lines[prefix], dotted, message)
        return Issue(self.file, None, dotted, message)


def dotted_path(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def load_yaml(path: Path) -> tuple[dict[str, Any], Lines]:
    """Parse a pipeline file into data and the line of every key.

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, has duplicate keys,
            or is not a mapping at the top.
    """
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no such file; check the path, or run 'slimops init' to start from a template", name) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the file: {err}", name) from None
    return parse_yaml(text, name)


def parse_yaml(text: str, name: str | None = None) -> tuple[dict[str, Any], Lines]:
    lines = Lines(name)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or ""
        if err.context_mark is not None and "<stream end>" in problem:
            mark = err.context_mark  # an unclosed bracket: point at where it opened
        line = mark.line + 1 if mark else None
        if err.context:
            opened = f" (started on line {err.context_mark.line + 1})" if err.context_mark else ""
            problem = f"{problem}, {err.context}{opened}"
        raise ConfigError([Issue(name, line, "", f"YAML syntax error: {problem}")]) from None
    if node is None:
        raise ConfigError([Issue(name, 1, "", "the file is empty; a pipeline needs at least 'model' or 'passes'")])
    issues: list[Issue] = []
    _record(node, (), lines, issues)
    if issues:
        raise ConfigError(issues)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError([Issue(name, 1, "", "the top of a pipeline file must be a mapping of keys (name, model, passes, ...)")])
    return data, lines


def _record(node: yaml.Node, path: Path_, lines: Lines, issues: list[Issue]) -> None:
    lines.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                issues.append(Issue(lines.file, line, dotted_path((*path, key)), f"duplicate key (first set on line {seen[key]})"))
                continue
            seen[key] = line
            lines.lines[(*path, key)] = line
            _record(value_node, (*path, key), lines, issues)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record(item, (*path, index), lines, issues)


def parse_override(text: str) -> tuple[Path_, str]:
    """Split `a.b.c=value` into its key path and the raw value text."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError([Issue("--set", None, key, f"'{text}' is not of the form key.path=value (e.g. passes.finetune.r=8)")])
    return tuple(key.split(".")), value


def apply_overrides(data: dict[str, Any], overrides: list[str], lines: Lines, typed: "callable") -> None:
    """Set each `key.path=value` in `data`.

    `typed(path, raw)` turns the raw text into a value of the type the schema expects at `path`.
    """
    for text in overrides:
        path, raw = parse_override(text)
        target: Any = data
        for part in path[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[path[-1]] = typed(path, raw)
        lines.overridden.add(path)
