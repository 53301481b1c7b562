"""Reading YAML safely: alias bombs, recursive aliases, complex keys, YAML 1.1 surprises and huge
files are each refused fast with a located message; anchors under `x-` keys work."""

from __future__ import annotations

import time

import pytest

import slimops
from slimops.config import parse_config
from slimops.config.source import MAX_BYTES

BOMB = "".join(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi"))
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + BOMB


@pytest.mark.parametrize(
    "text, line, key, fragment",
    [
        (BOMB, 5, "e[0]", "aliases expand to more than 10000 values (an alias bomb?)"),
        ("a: &x [*x]\n", 1, "a[0]", "a recursive alias: it refers to the list or mapping it sits in (anchored on line 1)"),
        ("passes: &p {a: *p}\n", 1, "passes.a", "a recursive alias"),
        ("? [a, b]\n: 1\n", 1, "", "a list cannot be a key; keys are names"),
        ("passes:\n  ? {a: 1}\n  : {type: fake}\n", 2, "passes", "a mapping cannot be a key"),
        ("passes: {on: {type: fake}}\n", 1, "passes.on",
         "unquoted, the key on is read as the boolean true (YAML 1.1 reads yes/no/on/off so); quote it: 'on':"),
        ("passes:\n  a: {type: fake, value: yes}\n", 2, "passes.a.value",
         "unquoted, yes is read as the boolean true (YAML 1.1 reads yes/no/on/off so); write true for a boolean, "
         "or quote it ('yes') for text"),
        ("passes:\n  a: {type: fake, fail: OFF}\n", 2, "passes.a.fail", "OFF is read as the boolean false"),
        ("passes:\n  finetune: {type: lora, r: 010}\n", 2, "passes.finetune.r",
         "unquoted, 010 is read as the octal number 8 (YAML 1.1 reads a leading 0 so); write 10 for the decimal "
         "number, or quote it ('010') for text"),
        ("passes:\n  finetune: {type: lora, max_steps: 2:00}\n", 2, "passes.finetune.max_steps",
         "unquoted, 2:00 is read as the base-60 number 120 (YAML 1.1 reads a:bb so); write the number you mean, "
         "or quote it ('2:00') for text"),
        ("data:\n  d: {files: x.jsonl, template: {phrase}}\n", 2, "data.d.template",
         "{phrase} is read as a mapping ({phrase: null}), not text; quote it: template: '{phrase} ...'"),
        ("data:\n  d:\n    template: {phrase} is the tone\n", 3, "",
         "a value starting with '{' is read as a mapping: quote it: template: '{phrase} ...'"),
        ("x-a: &a {type: fake}\nx-a: 2\n", 2, "x-a", "duplicate key (first set on line 1)"),
        ("passes:\n  a: {<<: 3}\n", 2, "passes.a", "'<<' merges a mapping into this one"),
        ("name: " + "[" * 60 + "]" * 60 + "\n", 1, "name" + "[0]" * 50, "nested too deeply (at most 50 levels)"),
        # found by tests/test_fuzz_config.py: each was a traceback
        ("name: 2024-13-45\n", 1, "name", "'2024-13-45' is not a valid timestamp; quote it for text"),
        ("name: a\x01b\n", 1, "", "the character U+0001 is not allowed in YAML"),
        ("name: !!binary aGk=\n", 1, "name", "the YAML tag '!!binary' is not supported here"),
        ("name: !!python/object:os.system x\n", 1, "name", "the YAML tag '!!python/object:os.system' is not supported"),
        ("model: " + "x" * 5000 + "\n", 1, "model", "is neither a local path"),
        ("data:\n  d: {files: " + "x" * 5000 + "}\n", 2, "data.d.files", "cannot name a file (File name too long)"),
    ],
    ids=["alias-bomb", "recursive-alias", "recursive-mapping", "complex-key-list", "complex-key-mapping", "on-key",
         "yes-value", "off-any-case", "octal", "sexagesimal", "template-mapping", "template-with-text",
         "duplicate-x-key", "merge-not-mapping", "too-deep", "bad-date", "control-char", "binary-tag", "python-tag",
         "model-name-too-long", "data-file-too-long"],
)
def test_bad_yaml_is_refused_fast_and_located(project, cli, text, line, key, fragment):
    path = project.write(text) if "\x01" not in text else _write_raw(project, text)
    started = time.perf_counter()
    code, _, err = cli("validate", "--config", path)
    assert time.perf_counter() - started < 1.0
    assert code == 2
    assert f"{path}:{line} {key}: " in err if key else f"{path}:{line}: " in err
    assert fragment in err
    assert "Traceback" not in err


def _write_raw(project, text):
    path = project.root / "pipeline.yaml"
    path.write_text(text)
    return path


def test_an_oversized_file_is_refused_by_size_before_parsing(project, cli):
    path = project.root / "pipeline.yaml"
    path.write_text("passes: {}\n" + "#" * 10_000_000 + "\n")
    started = time.perf_counter()
    code, _, err = cli("validate", "--config", path)
    assert time.perf_counter() - started < 1.0
    assert code == 2
    assert f"{path}: the file is 10.0 MB; a pipeline file is at most 1 MB" in err


def test_a_file_just_under_the_size_limit_reads_fast(tmp_path):
    lines = [f"  p{i}: {{type: fake, value: '{'x' * 60}'}}\n" for i in range(MAX_BYTES // 100)]
    text = "passes:\n" + "".join(lines)
    assert len(text) < MAX_BYTES
    started = time.perf_counter()
    config = parse_config(text, tmp_path)
    assert time.perf_counter() - started < 2.0
    assert len(config.passes) == len(lines)


@pytest.mark.parametrize(
    "text, check",
    [
        ("passes:\n  'on': {type: fake, value: 'yes'}\n", lambda c: c.passes["on"].params.value == "yes"),
        ("passes:\n  a: {type: fake, fail: false, value: '010'}\n", lambda c: c.passes["a"].params.value == "010"),
        ("passes:\n  a: {type: fake, seconds: 07, value: '2:00'}\n", lambda c: c.passes["a"].params.seconds == 7),
        ("data:\n  d: {files: pipeline.yaml, template: '{phrase} is the tone'}\n",
         lambda c: c.spec.data["d"].template == "{phrase} is the tone"),
        ("x-fake: &fake {type: fake, value: shared}\npasses:\n  a: *fake\n  b: {<<: *fake, value: own}\n",
         lambda c: (c.passes["a"].params.value, c.passes["b"].params.value) == ("shared", "own") and "x-fake" not in c.raw),
        ("x-a: &a {value: from-a}\nx-b: &b {value: from-b, seconds: 1}\npasses:\n  p: {type: fake, <<: [*a, *b]}\n",
         lambda c: (c.passes["p"].params.value, c.passes["p"].params.seconds) == ("from-a", 1)),
        ("passes:\n  a: &a {type: fake, value: hi}\n  b: *a\n", lambda c: c.passes["b"].params.value == "hi"),
        ("passes:\n  2024: {type: fake}\n", lambda c: list(c.passes) == ["2024"]),
    ],
    ids=["quoted-on-and-yes", "true-false-and-quoted-octal", "leading-zero-same-number", "quoted-template",
         "x-anchor-and-merge", "merge-list-earlier-wins", "anchor-anywhere", "a-key-is-its-text"],
)
def test_legal_yaml_reads_as_written(project, text, check):
    config = slimops.load_config(project.write(text))
    assert check(config)


def test_a_merged_key_is_located_at_its_anchor(project):
    path = project.write("x-defaults: &d\n  type: fake\n  seconds: soon\npasses:\n  a: {<<: *d}\n")
    with pytest.raises(slimops.ConfigError) as caught:
        slimops.load_config(path)
    assert [(issue.line, issue.path) for issue in caught.value.issues] == [(3, "passes.a.seconds")]


def test_an_alias_is_a_copy_so_an_override_changes_one_place(project):
    path = project.write("passes:\n  a: &a {type: fake, value: hi}\n  b: *a\n")
    config = slimops.load_config(path, ["passes.a.value=changed"])
    assert (config.passes["a"].params.value, config.passes["b"].params.value) == ("changed", "hi")
