"""The smaller commands: schema, init, targets, passes, cache ls/gc/clear."""

from __future__ import annotations

import json
from pathlib import Path

import slimops
from slimops.config.schema import schema_text
from slimops.templates import templates

ROOT = Path(__file__).resolve().parents[1]


def test_committed_schema_is_current():
    committed = (ROOT / "schemas" / "pipeline.schema.json").read_text()
    assert committed == schema_text(), "schemas/pipeline.schema.json is stale: run 'slimops schema -o schemas/pipeline.schema.json'"


def test_committed_config_reference_is_current():
    from slimops.config.schema import config_reference

    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == config_reference(), "docs/config.md is stale: run 'slimops schema --markdown -o docs/config.md'"


def test_schema_checks_pass_params_by_type():
    jsonschema = __import__("jsonschema")
    schema = json.loads(schema_text())
    good = {"passes": {"a": {"type": "fake", "value": "x", "seconds": 1}}}
    bad = {"passes": {"a": {"type": "fake", "valeu": "x"}}}
    jsonschema.validate(good, schema)
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError as err:
        assert "valeu" in str(err)
    else:
        raise AssertionError("the schema accepted an unknown pass key")


def test_schema_command_writes_file(tmp_path, cli):
    out = tmp_path / "s.json"
    code, _, _ = cli("schema", "--output", out)
    assert code == 0 and out.read_text() == schema_text()


def test_init_lists_and_copies_templates(tmp_path, cli):
    names = templates()
    assert names, "no templates shipped"
    code, out, _ = cli("init")
    assert code == 0
    for name in names:
        assert name in out
    name = sorted(names)[0]
    code, out, err = cli("init", name, tmp_path / "repo")
    assert code == 0, err
    copied = tmp_path / "repo" / f"{name}.yaml"
    assert copied.is_file()
    slimops.load_config(copied)  # its data files came along
    code, _, err = cli("init", name, tmp_path / "repo")
    assert code == 2 and "--force" in err
    code, _, err = cli("init", "no-such-template", tmp_path / "repo")
    assert code == 2 and "no template" in err


def test_every_template_validates():
    from slimops.templates import template_dir

    for path in sorted(template_dir().glob("*.yaml")):
        slimops.load_config(path)


def test_targets_lists_builtin_profiles(cli):
    code, out, _ = cli("targets")
    assert code == 0
    for name in ("cpu", "cpu-int4", "cpu-int8", "cuda-fp16", "cuda-int4", "dml-int4", "npu-qdq"):
        assert name in out


def test_passes_lists_params_and_kinds(cli):
    code, out, _ = cli("passes")
    assert code == 0
    assert "fake" in out and "seconds=0.0" in out


def test_cache_ls_gc_clear(project, cli):
    path = project.write("passes:\n  a: {type: fake}\n  b: {type: fake}\n")
    slimops.run(path)
    cache = project.root / ".slimops" / "cache"
    (cache / "tmp" / "deadbeef.999999.0").mkdir(parents=True)
    code, out, _ = cli("cache", "ls", "--config", path)
    assert code == 0 and "2 entries" in out
    code, out, _ = cli("cache", "gc", "--config", path)
    assert code == 0 and "removed 1 temporary" in out
    assert not (cache / "tmp" / "deadbeef.999999.0").exists()
    code, out, _ = cli("cache", "clear", "--yes", "--config", path)
    assert code == 0 and "removed 2 entries" in out
    result = slimops.run(path)
    assert not result["a"].cached
