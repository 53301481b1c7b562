"""Plan errors are found before anything runs: cycles, kind mismatches, unmet needs."""

from __future__ import annotations

import pytest

PLUGINS = '''
from slimops.passes.fake import Fake


class NeedsOnnx(Fake):
    """Reads only ONNX models."""
    name = "needs_onnx"
    consumes = ("onnx-model",)


class NeedsPackage(Fake):
    name = "needs_package"
    requires = ("surely-not-installed-slimops-dep",)
    alternative = "fake"


class NeedsCuda(Fake):
    name = "needs_cuda"
    devices = ("cuda",)
    alternative = "fake"


class RunsOnTarget(Fake):
    name = "runs_on_target"
    per_target = True
    executes_on_target = True


class WritesForTarget(Fake):
    name = "writes_for_target"
    per_target = True
'''


@pytest.fixture
def plugin_project(project):
    (project.root / "planplug.py").write_text(PLUGINS)
    return project


def _plan_error(cli, path):
    code, _, err = cli("plan", "--config", path)
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_cycle_is_a_plan_error(project, cli):
    path = project.write(
        """
        passes:
          a: {type: fake, inputs: [c]}
          b: {type: fake, inputs: [a]}
          c: {type: fake, inputs: [b]}
        """
    )
    err = _plan_error(cli, path)
    assert "cycle" in err and "a -> b -> c -> a" in err.replace("c -> a -> b -> c", "a -> b -> c -> a")
    assert f"{path}:" in err


def test_kind_mismatch_is_a_plan_error(plugin_project, cli):
    path = plugin_project.write(
        """
        passes:
          make: {type: fake, kind: hf-model}
          export: {type: "planplug:NeedsOnnx"}
        """
    )
    err = _plan_error(cli, path)
    assert "reads onnx-model" in err and "'make' is hf-model" in err
    assert f"{path}:3" in err


def test_missing_package_is_a_plan_error_with_the_install_command(plugin_project, cli):
    path = plugin_project.write("passes:\n  a: {type: 'planplug:NeedsPackage'}\n")
    err = _plan_error(cli, path)
    assert "pip install surely-not-installed-slimops-dep" in err and "use type: fake instead" in err


def test_cuda_only_pass_on_a_cpu_machine_is_a_plan_error(plugin_project, cli, monkeypatch):
    monkeypatch.setattr("slimops.planner.machine_has_cuda", lambda: False)
    path = plugin_project.write("passes:\n  a: {type: 'planplug:NeedsCuda'}\n")
    err = _plan_error(cli, path)
    assert "needs a CUDA device" in err and "use type: fake instead" in err


def test_missing_provider_fails_only_passes_that_run_on_the_target(plugin_project, cli, monkeypatch):
    monkeypatch.setattr("slimops.targets.available_providers", lambda: ("CPUExecutionProvider",))
    runs = plugin_project.write(
        "targets: {server: cuda-fp16}\npasses:\n  a: {type: 'planplug:RunsOnTarget'}\n", "runs.yaml"
    )
    err = _plan_error(cli, runs)
    assert "CUDAExecutionProvider" in err and "server" in err
    writes = plugin_project.write(
        "targets: {server: cuda-fp16}\npasses:\n  a: {type: 'planplug:WritesForTarget'}\n", "writes.yaml"
    )
    code, out, err = cli("plan", "--config", writes)
    assert code == 0, err
    assert "a@server" in out


def test_fan_out_and_fan_in(project):
    import slimops

    path = project.write(
        """
        passes:
          root: {type: fake}
          left: {type: fake, inputs: [root]}
          right: {type: fake, inputs: [root]}
          join: {type: fake, inputs: [left, right]}
        """
    )
    plan = slimops.plan(path)
    assert plan.nodes["join"].inputs == ["left", "right"]
    assert list(plan.graph.predecessors("left")) == ["root"]
    result = slimops.run(path)
    text = (project.root / "out" / "join" / "out.txt").read_text()
    assert "left=" in text and "right=" in text


def test_unknown_model_path_is_a_clear_error(project, cli):
    path = project.write("model: ./no/such/model\npasses:\n  a: {type: fake}\n")
    code, _, err = cli("validate", "--config", path)
    assert code == 2
    assert f"{path}:1 model" in err and "neither a local path" in err and "smollm2-135m" in err
    typo = project.write("model: smolm2-135m\npasses:\n  a: {type: fake}\n", "typo.yaml")
    code, _, err = cli("validate", "--config", typo)
    assert code == 2 and "did you mean 'smollm2-135m'?" in err


def test_a_damaged_model_is_a_config_error_before_anything_runs(project, cli):
    import numpy as np
    from safetensors.numpy import save_file

    model = project.root / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    save_file({"w": np.zeros((64, 64), np.float32)}, str(model / "model.safetensors"))
    path = project.write("model: model\npasses:\n  a: {type: fake}\n")
    assert cli("validate", "--config", path)[0] == 0
    whole = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(whole[:-100])  # a download cut short
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and f"{path}:1 model: {model / 'model.safetensors'} is cut short" in err
    assert f"describes {len(whole):,} bytes, the file holds {len(whole) - 100:,}" in err
    (model / "model.safetensors").write_bytes(whole)
    (model / "config.json").write_text('{"architectures": ')
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and "config.json is not valid JSON" in err
    (model / "config.json").write_text("{}")
    (model / "model.safetensors.index.json").write_text('{"weight_map": {"w": "model-00001-of-00002.safetensors"}}')
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and "model-00001-of-00002.safetensors is missing" in err
    (project.root / "fake.gguf").write_bytes(b"<html>not found</html>")
    gguf = project.write("model: fake.gguf\npasses:\n  a: {type: fake}\n", "gguf.yaml")
    code, _, err = cli("validate", "--config", gguf)
    assert code == 2 and "fake.gguf is not a GGUF file" in err


def test_unreachable_hub_model_is_a_clear_error(project, cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = project.write("model: some-org/some-model\npasses:\n  a: {type: fake}\n")
    code, _, err = cli("plan", "--config", path)
    assert code == 2
    assert f"{path}:1" in err and "some-org/some-model" in err and "Traceback" not in err


def test_the_models_task_is_in_the_keys_of_what_reads_it(project):
    """A classifier fine-tune trains another model than a causal one from the same folder: `model.task`
    must change the keys, or the plan reuses the other's entry."""
    import slimops

    (project.root / "m").mkdir()
    (project.root / "m" / "config.json").write_text('{"architectures": ["BertForSequenceClassification"], "model_type": "bert"}')
    path = project.write("model: {path: m, task: text-generation}\npasses:\n  a: {type: fake}\n")
    causal = slimops.plan(path)
    classifier = slimops.plan(path, ["model.task=text-classification"])
    assert causal.nodes["model"].key != classifier.nodes["model"].key
    assert causal.nodes["a"].key != classifier.nodes["a"].key
    default = project.write("model: {path: m}\npasses:\n  a: {type: fake}\n", "default.yaml")
    assert slimops.plan(default).nodes["a"].key == causal.nodes["a"].key  # the default task keeps the keys it had


def test_a_model_kind_that_contradicts_the_files_is_an_error_before_anything_runs(project, cli):
    (project.root / "hf").mkdir()
    (project.root / "hf" / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    (project.root / "m.gguf").write_bytes(b"GGUF" + bytes(20))
    folder = project.write("model: {path: hf, kind: gguf}\npasses:\n  a: {type: fake}\n")
    code, _, err = cli("validate", "--config", folder)
    assert code == 2 and f"{folder}:1 model: model.kind is gguf, but {project.root / 'hf'} is a folder with no .gguf file" in err
    file = project.write("model: {path: m.gguf, kind: hf-model}\npasses:\n  a: {type: fake}\n", "file.yaml")
    code, _, err = cli("validate", "--config", file)
    assert code == 2 and "model.kind is hf-model, a folder, but" in err and "m.gguf is a file" in err
