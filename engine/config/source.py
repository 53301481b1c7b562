"""Reading a pipeline file: YAML to plain data, with the line of every key kept.

- `load_yaml(path)` / `parse_yaml(text)` parse a file and return its data and a `Lines` map from
  key paths to lines. Every problem becomes a `ConfigError` naming file and line: YAML syntax,
  duplicate keys, a list or mapping used as a key, and the values YAML 1.1 reads differently from
  how they look (`on`/`yes` are booleans, `010` is octal 8, `2:00` is base-60 120, an unquoted
  `{field}` is a mapping); quoted, they are text.
- Anchors and aliases work, with limits: a recursive alias is refused, and all aliases of a file
  together may expand to at most `ALIAS_BUDGET` values (an alias bomb fails in milliseconds).
  Top-level keys starting `x-` (as in compose files) are a home for anchors: dropped before the
  schema sees the file, so `x-defaults: &defaults {...}` then `<<: *defaults` is not an unknown key.
- A pipeline file is at most `MAX_BYTES`, checked before parsing.
- `apply_overrides` applies `--set a.b=v` strings to the data, remembering which paths they set;
  a `Schema` (the config models) types each value, extends shorthands and catches typos.

The data is built from PyYAML's node graph in one walk, never by `yaml.safe_load`: that walk is
what sees an alias's expansion, a key's raw text and a scalar's quoting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from yaml.constructor import SafeConstructor

from slimops.errors import ConfigError, Issue

Path_ = tuple[str | int, ...]

MAX_BYTES = 1_000_000  # pipeline files are a few KB; data belongs in data files
ALIAS_BUDGET = 10_000  # values all aliases of a file may expand to: far above shared defaults, far below a bomb
MAX_DEPTH = 50  # nesting of lists and mappings; pipelines need under 10

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_TAG}{name}" for name in ("str", "int", "float", "bool", "null", "timestamp")}
_OCTAL = re.compile(r"0[0-7]+")


@dataclass
class Lines:
    """Where each key path of a config came from: a line of `file`, or a `--set` override."""

    file: str | None
    lines: dict[Path_, int] = field(default_factory=dict)
    overridden: set[Path_] = field(default_factory=set)  # the paths `--set` set
    created: set[Path_] = field(default_factory=set)  # mappings `--set` made on the way to one

    def issue(self, path: Path_, message: str) -> Issue:
        """An Issue at `path`, located at its line or at its nearest ancestor's."""
        dotted = dotted_path(path)
        for depth in range(len(path), -1, -1):
            prefix = path[:depth]
            if prefix in self.overridden or prefix in self.created:
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
        ConfigError: the file is missing, unreadable, too big, not YAML, or breaks a rule above.
    """
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(_too_big(size), name)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":  # JSON is YAML but for tabs, which JSON allows between tokens
            text = text.replace("\t", " ")  # (a tab inside a JSON string is written \t, so none is lost)
    except FileNotFoundError:
        raise ConfigError(f"no such file; check the path, or run 'slimops init' to start from a template", name) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the file: {err}", name) from None
    return parse_yaml(text, name)


def _too_big(size: int) -> str:
    return (f"the file is {size / 1e6:.1f} MB; a pipeline file is at most {MAX_BYTES / 1e6:g} MB "
            "(they are a few KB: keep examples in data files, named under 'data:')")


def parse_yaml(text: str, name: str | None = None) -> tuple[dict[str, Any], Lines]:
    """Like `load_yaml`, for YAML text."""
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ConfigError(_too_big(len(text.encode("utf-8", "surrogatepass"))), name)
    node = _compose(text, name)
    if node is None:
        raise ConfigError([Issue(name, 1, "", "the file is empty; a pipeline needs at least 'model' or 'passes'")])
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError([Issue(name, 1, "", "the top of a pipeline file must be a mapping of keys (name, model, passes, ...)")])
    lines = Lines(name)
    reader = _Reader(lines)
    data = reader.read(node)
    if reader.issues:
        raise ConfigError(reader.issues)
    return data, lines


def parse_value(text: str, key: str) -> Any:
    """The value of `--set KEY=TEXT` as YAML, under the file's rules; text that is not YAML stays text.

    Raises:
        ConfigError: located at `--set KEY`, for a YAML 1.1 surprise, an alias bomb, ...
    """
    try:
        node = _compose(text, None)
    except ConfigError:
        return text
    if node is None:
        return None
    reader = _Reader(Lines(None))
    try:
        value = reader.value(node, (), 0)
    except _Stop:
        value = None
    if reader.issues:
        raise ConfigError([Issue("--set", None, key, issue.message) for issue in reader.issues])
    return value


def _compose(text: str, name: str | None) -> yaml.Node | None:
    if hasattr(yaml, "CSafeLoader"):
        try:
            return yaml.compose(text, Loader=yaml.CSafeLoader)
        except Exception:  # noqa: BLE001 - parsed again below: the pure-Python parser words errors better
            pass  # (it names an undefined alias, points at an unclosed bracket)
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        raise ConfigError([_syntax_issue(err, text, name)]) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        code = err.character if isinstance(err.character, int) else ord(err.character)
        escape = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
        raise ConfigError([Issue(name, line, "", f"the character U+{code:04X} is not allowed in YAML; remove it, "
                                 f"or write it as an escape in a double-quoted string (\"{escape}\")")]) from None
    except RecursionError:
        raise ConfigError([Issue(name, None, "", f"lists and mappings are nested too deeply (at most {MAX_DEPTH} levels)")]) from None


def _syntax_issue(err: yaml.MarkedYAMLError, text: str, name: str | None) -> Issue:
    mark = err.problem_mark or err.context_mark
    problem = err.problem or ""
    if err.context_mark is not None and "<stream end>" in problem:
        mark = err.context_mark  # an unclosed bracket: point at where it opened
    line = mark.line + 1 if mark else None
    if err.context:
        opened = f" (started on line {err.context_mark.line + 1})" if err.context_mark else ""
        problem = f"{problem}, {err.context}{opened}"
    rows = text.split("\n")
    source = rows[mark.line] if mark and mark.line < len(rows) else ""
    brace = re.search(r"([\w-]+):\s+(\{\w+\})", source)
    if brace:  # `template: {phrase} is ...`: a value that starts with '{' is a mapping
        problem += f"; a value starting with '{{' is read as a mapping: quote it: {brace[1]}: '{brace[2]} ...'"
    return Issue(name, line, "", f"YAML syntax error: {problem}")


def _short(tag: str) -> str:
    return tag.replace(_TAG, "!!")


class _Stop(Exception):
    """A problem after which the walk cannot go on (a bomb, a cycle)."""


class _Reader:
    """One walk over composed nodes: plain data out, lines recorded, every surprise an Issue."""

    def __init__(self, lines: Lines):
        self.lines = lines
        self.issues: list[Issue] = []
        self.constructor = SafeConstructor()
        self.seen: set[int] = set()  # nodes walked once: walking one again is an alias's expansion
        self.open: set[int] = set()  # lists and mappings being walked: meeting one is a recursive alias
        self.expanded = 0
        self.root: yaml.Node | None = None
        self.alias: Path_ | None = None  # where the alias being expanded sits

    def read(self, root: yaml.MappingNode) -> dict[str, Any]:
        self.root = root
        try:
            return self.value(root, (), 0)
        except _Stop:
            return {}

    def issue(self, node: yaml.Node, path: Path_, message: str) -> None:
        self.issues.append(Issue(self.lines.file, node.start_mark.line + 1, dotted_path(path), message))

    def value(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        if depth > MAX_DEPTH:
            self.issue(node, path, f"lists and mappings are nested too deeply (at most {MAX_DEPTH} levels)")
            raise _Stop
        if id(node) in self.open:
            self.issues.append(self.lines.issue(path, "a recursive alias: it refers to the list or mapping it "
                                                f"sits in (anchored on line {node.start_mark.line + 1}), which never ends"))
            raise _Stop
        if id(node) in self.seen:
            self.expanded += 1
            if self.expanded > ALIAS_BUDGET:
                self.issues.append(self.lines.issue(self.alias or path, f"aliases expand to more than {ALIAS_BUDGET} "
                                                    "values (an alias bomb?); anchor small shared blocks, e.g. under an x- key"))
                raise _Stop
            if self.alias is None:  # the outermost alias of an expansion, to blame
                self.alias = path
                try:
                    return self.walk(node, path, depth)
                finally:
                    self.alias = None
        else:
            self.seen.add(id(node))
            self.lines.lines.setdefault(path, node.start_mark.line + 1)
        return self.walk(node, path, depth)

    def walk(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if node.tag not in (f"{_TAG}map", f"{_TAG}seq"):
            self.issue(node, path, f"the YAML tag '{_short(node.tag)}' is not supported here; write a plain list or mapping")
            return None
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.value(item, (*path, index), depth + 1) for index, item in enumerate(node.value)]
            return self.mapping(node, path, depth)
        finally:
            self.open.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[str, Any]:
        merges = [value for key, value in node.value if key.tag == f"{_TAG}merge" and not key.style]
        fields = [(key, value) for key, value in node.value if not (key.tag == f"{_TAG}merge" and not key.style)]
        if node.flow_style and fields and all(self.is_bare(key, value) for key, value in fields):
            names = ", ".join(key.value for key, _ in fields)
            name = path[-1] if path and isinstance(path[-1], str) else "value"
            self.issue(node, path, f"{{{names}}} is read as a mapping ({{{fields[0][0].value}: null}}), not text; "
                       f"quote it: {name}: '{{{fields[0][0].value}}} ...'")
            return {}
        out: dict[str, Any] = {}
        for value in merges:
            out.update({k: v for k, v in self.merged(value, path, depth).items() if k not in out})
        seen: dict[str, int] = {}
        for key_node, value_node in fields:
            key = self.key(key_node, path)
            if key is None:
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                self.issue(key_node, (*path, key), f"duplicate key (first set on line {seen[key]})")
                continue
            seen[key] = line
            if node is self.root and key.startswith("x-"):
                continue  # a home for anchors: aliases reach its values, the schema never sees it
            self.lines.lines[(*path, key)] = line
            out[key] = self.value(value_node, (*path, key), depth + 1)
        return out

    @staticmethod
    def is_bare(key: yaml.Node, value: yaml.Node) -> bool:
        """`{phrase}`: a flow mapping entry with no ':' at all."""
        return (isinstance(key, yaml.ScalarNode) and isinstance(value, yaml.ScalarNode) and value.tag == f"{_TAG}null"
                and value.value == "" and value.start_mark.index == key.end_mark.index)

    def merged(self, value: yaml.Node, path: Path_, depth: int) -> dict[str, Any]:
        """The keys `<<: *defaults` (or `<<: [*a, *b]`, earlier winning) brings into a mapping."""
        sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
        out: dict[str, Any] = {}
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                self.issue(value, path, "'<<' merges a mapping into this one: '<<: *defaults' or '<<: [*a, *b]'")
                return out
            found = self.value(source, path, depth + 1)
            out.update({k: v for k, v in found.items() if k not in out})
        return out

    def key(self, node: yaml.Node, path: Path_) -> str | None:
        """A key is the text written (`1:` is the name '1'), unless YAML 1.1 would read it as something else."""
        if not isinstance(node, yaml.ScalarNode):
            kind = "list" if isinstance(node, yaml.SequenceNode) else "mapping"
            self.issue(node, path, f"a {kind} cannot be a key; keys are names (a '?' starts a complex key: "
                       "remove it, or quote the key)")
            return None
        surprise = self.surprise(node)
        if surprise:
            self.issue(node, (*path, node.value), f"{surprise[0].replace('unquoted, ', 'unquoted, the key ')}; "
                       f"quote it: '{node.value}':")
        return node.value

    def scalar(self, node: yaml.ScalarNode, path: Path_) -> Any:
        surprise = self.surprise(node)
        if surprise:
            self.issue(node, path, f"{surprise[0]}; {surprise[1]}, or quote it ('{node.value}') for text")
            return node.value
        if node.tag == f"{_TAG}str" or node.tag == f"{_TAG}value":  # '=' alone is text too
            return node.value
        if node.tag not in _SCALAR_TAGS:
            self.issue(node, path, f"the YAML tag '{_short(node.tag)}' is not supported here; quote the value for text")
            return node.value
        try:
            return self.constructor.yaml_constructors[node.tag](self.constructor, node)
        except (ValueError, OverflowError, yaml.YAMLError):  # 2024-13-45 looks like a date and is not one
            self.issue(node, path, f"'{node.value}' is not a valid {node.tag.removeprefix(_TAG)}; quote it for text")
            return node.value

    @staticmethod
    def surprise(node: yaml.ScalarNode) -> tuple[str, str] | None:
        """(what YAML 1.1 reads a plain scalar as, what to write instead), where that differs from how it looks."""
        if node.style:  # quoted or a block scalar: text
            return None
        text, tag = node.value, node.tag.removeprefix(_TAG)
        digits = text.replace("_", "").lstrip("+-")
        if tag == "bool" and text.lower() not in ("true", "false"):
            value = text.lower() in ("yes", "on")
            return f"unquoted, {text} is read as the boolean {str(value).lower()} (YAML 1.1 reads yes/no/on/off so)", \
                f"write {str(value).lower()} for a boolean"
        if tag in ("int", "float") and ":" in digits:
            value = SafeConstructor.yaml_constructors[f"{_TAG}{tag}"](SafeConstructor(), node)
            return f"unquoted, {text} is read as the base-60 number {value} (YAML 1.1 reads a:bb so)", "write the number you mean"
        if tag == "int" and _OCTAL.fullmatch(digits) and int(digits, 8) != int(digits):
            return (f"unquoted, {text} is read as the octal number {int(digits, 8)} (YAML 1.1 reads a leading 0 so)",
                    f"write {int(digits)} for the decimal number")
        return None


class Schema(Protocol):
    """What `apply_overrides` asks of the config models."""

    def problem(self, path: Path_, data: dict[str, Any]) -> str | None:
        """Why `--set PATH=...` names nothing the file or the schema has (a typo), or None."""

    def shorthand(self, path: Path_) -> str | None:
        """The field a string at `path` stands for (`model: NAME` is {path: NAME}), or None."""

    def typed(self, path: Path_, raw: str) -> Any:
        """The override's text as a value of the type the schema expects at `path`."""


def parse_override(text: str) -> tuple[Path_, str]:
    """Split `a.b.c=value` into its key path and the raw value text."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError([Issue("--set", None, key, f"'{text}' is not of the form key.path=value (e.g. passes.finetune.r=8)")])
    return tuple(key.split(".")), value


def apply_overrides(data: dict[str, Any], overrides: list[str], lines: Lines, schema: Schema) -> None:
    """Set each `key.path=value` in `data`. A string on the way that is a shorthand is extended
    (`targets: {laptop: cpu-int4}` with `targets.laptop.memory_gb=4` is {extends: cpu-int4, memory_gb: 4}).

    Raises:
        ConfigError: located at `--set`, for each override that is malformed, names a pass, target
            or section the file lacks (with a did-you-mean), or goes through a value that is not a mapping.
    """
    issues: list[Issue] = []
    for text in overrides:
        try:
            path, raw = parse_override(text)
            _apply(data, path, raw, lines, schema)
        except ConfigError as err:
            issues.extend(err.issues)
    if issues:
        raise ConfigError(issues)


def _apply(data: dict[str, Any], path: Path_, raw: str, lines: Lines, schema: Schema) -> None:
    problem = schema.problem(path, data)
    if problem:
        raise ConfigError([Issue("--set", None, dotted_path(path), problem)])
    target: Any = data
    for depth, part in enumerate(path[:-1]):
        here = path[: depth + 1]
        current = target.get(part)
        if isinstance(current, str) and schema.shorthand(here):
            target[part] = current = {schema.shorthand(here): current}
        elif current is None:
            target[part] = current = {}
            lines.created.add(here)
        elif not isinstance(current, dict):
            where = f"{lines.file}:{lines.lines[here]}" if here in lines.lines else "the file"
            raise ConfigError([Issue("--set", None, dotted_path(path), f"{dotted_path(here)} is {current!r} in {where}, "
                                     f"not a mapping; set it whole: --set {dotted_path(here)}=...")])
        target = current
    target[path[-1]] = schema.typed(path, raw)
    lines.overridden.add(path)
