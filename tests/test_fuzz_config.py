"""Fuzzing the config reader: thousands of documents mutated from the shipped templates, each either
valid or refused with a `ConfigError`, and each read in well under a second.

Mutations work on the text, as a user's edits do: lines deleted, duplicated, swapped or re-indented,
values and keys replaced by odd YAML (`~`, `.inf`, `010`, `on`, `*x`, `{phrase}`, control
characters, very long strings, ...). Derandomized, so CI sees the same documents every run;
a crash it finds gets a row in tests/test_yaml.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimops.config import parse_config
from slimops.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TEMPLATES = [path.read_text() for path in sorted(CONFIGS.glob("*.yaml"))]
SECONDS_PER_DOCUMENT = 1.0

ODD_VALUES = [
    "~", "", ".inf", "-.inf", ".nan", "[]", "{}", "[[]]", "{a: {b: {}}}", "010", "0o10", "0x1F", "1e400", "-1",
    "2:00", "on", "Off", "yes", "NO", "true", "*x", "&x", "&x [*x]", "&x {a: *x}", "[*x, *x, *x]", "{phrase}",
    "'{phrase}'", "{phrase} is the tone", "!!binary aGk=", "!!python/object:os.system x", "!foo x", "!!set {a}",
    "2024-13-45", "2024-01-01", "? [a, b]", "<<: *x", "=", "|", ">-", '"unclosed', "'unclosed", "[a, b", "{a: b",
    "\x01", "\x00", "\ud800", "\t", "é" * 10, "x" * 5000, "a" * 70, "../../..", "/", "~", "-", "- a", "a: b: c",
    "[" * 60 + "]" * 60, "[" * 1200 + "]" * 1200, "#", "\"\\x01\"", "@", "`", "%YAML 1.2", "---", "...",
]
ODD_KEYS = ["on", "010", "2:00", "? [a]", "<<", "x-a", "x-a &x", "*x", "~", "1", "''", "'a.b'", "a b", "-", "\x01"]


def _value_lines(lines: list[str]) -> list[int]:
    return [index for index, line in enumerate(lines) if re.match(r"\s*[\w-]+:", line)]


@st.composite
def documents(draw, sources: list[str] = TEMPLATES) -> str:
    lines = draw(st.sampled_from(sources)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "value", "key", "indent", "anchor", "truncate"]))
        at = draw(st.integers(0, len(lines) - 1))
        keyed = _value_lines(lines)
        if op == "delete":
            del lines[at]
        elif op == "duplicate":
            lines.insert(at, lines[at])
        elif op == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif op == "value" and keyed:
            at = draw(st.sampled_from(keyed))
            key = lines[at].split(":", 1)[0]
            lines[at] = f"{key}: {draw(st.sampled_from(ODD_VALUES))}"
        elif op == "key" and keyed:
            at = draw(st.sampled_from(keyed))
            indent = re.match(r"\s*", lines[at]).group()
            lines[at] = f"{indent}{draw(st.sampled_from(ODD_KEYS))}:{lines[at].split(':', 1)[1]}"
        elif op == "indent":
            lines[at] = " " * draw(st.sampled_from([0, 1, 3, 4, 8])) + lines[at].lstrip()
        elif op == "anchor":
            lines.insert(0, draw(st.sampled_from(["x-d: &x {type: fake}", "x-d: &x [1, 2]", "x-d: &x 3", "x-d: &x [*x]"])))
        elif op == "truncate":
            lines[at] = lines[at][: draw(st.integers(0, len(lines[at])))]
    return "\n".join(lines) + "\n"


def test_the_templates_are_valid():
    for text in TEMPLATES:
        parse_config(text, CONFIGS)


@settings(max_examples=2500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents())
def test_a_mutated_template_is_valid_or_a_config_error(text):
    def timed() -> float:
        started = time.perf_counter()
        try:
            parse_config(text, CONFIGS)
        except ConfigError as err:
            assert err.issues and all(issue.message for issue in err.issues)
        return time.perf_counter() - started

    # a slow document is slow twice; a pause of the machine (a busy CI box, a first import) is not
    elapsed = timed()
    if elapsed >= SECONDS_PER_DOCUMENT:
        elapsed = timed()
    assert elapsed < SECONDS_PER_DOCUMENT, f"{elapsed:.2f} s for:\n{text}"


@pytest.mark.parametrize("value", ODD_VALUES, ids=range(len(ODD_VALUES)))
def test_every_odd_value_in_every_place_of_one_template(value):
    """Each odd value at each key of the quickstart: the cases the random mix may draw too rarely."""
    lines = TEMPLATES[[path.name for path in sorted(CONFIGS.glob("*.yaml"))].index("quickstart.yaml")].splitlines()
    for at in _value_lines(lines):
        mutated = [*lines[:at], f"{lines[at].split(':', 1)[0]}: {value}", *lines[at + 1:]]
        try:
            parse_config("\n".join(mutated) + "\n", CONFIGS)
        except ConfigError:
            pass



# -- Olive workflow configs: the files of tests/olive/ mutated as above, and documents of Olive's keys at random --

OLIVE = Path(__file__).resolve().parent / "olive"
OLIVE_FILES = [path.read_text().replace("\t", " ") for path in sorted(OLIVE.glob("*.*"))
               if path.suffix in (".yaml", ".json") and not path.name.endswith(".pipeline.yaml")]
OLIVE_KEYS = ["input_model", "model", "systems", "data_configs", "evaluators", "passes", "pass_flows", "search_strategy",
              "engine", "evaluator", "target", "host", "search_space", "type", "config", "model_path", "train_data_config",
              "training_args", "metrics", "sub_types", "goal", "name", "load_dataset_config", "pre_process_data_config",
              "data_files", "data_name", "split", "accelerators", "r", "precision", "data_config", "tasks", "sampler",
              "sampler_config", "text_template", "lora", "values", "low", "high", "support", "olive_parameter_type"]
OLIVE_ATOMS = st.sampled_from([None, 1, -1, 0.5, "x", "LoRA", "ModelBuilder", "ExtractAdapters", "json", "tone.jsonl",
                               "train[:5]", "SEARCHABLE_VALUES", "choice", "float", "Categorical", True, [], {}])
OLIVE_VALUES = st.recursive(OLIVE_ATOMS, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.sampled_from(OLIVE_KEYS), inner, max_size=4), max_leaves=12)
OLIVE_DOCUMENTS = st.dictionaries(st.sampled_from(OLIVE_KEYS), OLIVE_VALUES, min_size=1, max_size=5).map(
    lambda data: {"input_model": {"type": "HfModel", "model_path": "smollm2-135m"}, **data})


def _converts_or_refuses(text: str) -> None:
    try:
        parse_config(text, CONFIGS / "data")  # where tone.jsonl is
    except ConfigError as err:
        assert err.issues and all(issue.message for issue in err.issues)


@settings(max_examples=1000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents(OLIVE_FILES))
def test_a_mutated_olive_file_converts_or_is_a_config_error(text):
    _converts_or_refuses(text)


@settings(max_examples=1500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(OLIVE_DOCUMENTS)
def test_any_document_of_olive_keys_converts_or_is_a_config_error(data):
    import yaml

    _converts_or_refuses(yaml.safe_dump(data))


def test_the_olive_files_convert():
    for text in OLIVE_FILES:
        assert parse_config(text, CONFIGS / "data").olive is not None
