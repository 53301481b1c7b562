"""Every template in configs/: the two header lines `slimops init` and editors rely on, a valid
config, a plan that fits together, and data whose fields fit the template's formatting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import slimops
from slimops.passes import _data as datalib
from slimops.templates import template_dir

TEMPLATES = sorted(template_dir().glob("*.yaml"))
FINETUNE = ["quickstart", "lora-cpu", "qlora", "full-finetune", "classifier-minilm"]


def test_the_finetuning_templates_ship():
    assert {path.stem for path in TEMPLATES} >= set(FINETUNE)


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.stem for p in TEMPLATES])
def test_template_header_and_config(path: Path):
    lines = path.read_text().splitlines()
    assert lines[0] == "# yaml-language-server: $schema=../schemas/pipeline.schema.json"
    assert lines[1].startswith("# ") and len(lines[1]) > 10, "second line: a one-line description"
    slimops.load_config(path)


@pytest.mark.parametrize("name", FINETUNE)
def test_finetuning_template_plans_and_its_data_fits(name: str):
    config = slimops.load_config(template_dir() / f"{name}.yaml")
    if name == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(slimops.PlanError, match="use type: lora instead"):
            slimops.plan(config)
    else:
        plan = slimops.plan(config)
        if config.spec.model.path == "smollm2-135m":
            assert "model.from_gguf" in plan.nodes, "the GGUF must be converted before training"
    task = config.spec.model.task
    for pass_config in config.passes.values():
        data_name = getattr(pass_config.params, "data", None)
        if not data_name:
            continue
        spec = config.spec.data[data_name]
        spec = spec.model_copy(update={"files": str(config.base_dir / spec.files)})
        for split in ("train", "eval"):
            rows = datalib.load_split(spec, split, data_name)
            datalib.check_fields(rows, spec, data_name, split, task)
