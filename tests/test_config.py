"""Every kind of bad config gives its own clear message, with file and line, and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

import slimops
from slimops.errors import ConfigError


def test_valid_pipeline_validates(project, cli):
    path = project.write(
        """
        name: ok
        passes:
          a: {type: fake, value: hi}
          b: {type: fake}
        """
    )
    code, out, _ = cli("validate", "--config", path)
    assert code == 0
    assert "ok (2 passes" in out


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("passes:\n  a: {type: fake\n", 2, "YAML syntax error"),
        ("passes:\n  a:\n    type: fake\n    vaule: 3\n", 4, "passes.a.vaule: unknown key; did you mean 'value'?"),
        ("passes:\n  a:\n    type: fake\n    seconds: soon\n", 4, "passes.a.seconds: Input should be a valid number"),
        ("model:\n  kind: hf-model\n", 1, "model.path: missing required key"),
        ("passes:\n  a: {type: lorra}\n", 2, "unknown pass type 'lorra'"),
        ("passes:\n  a: {type: fake}\n  b: {type: fake, inputs: [aa]}\n", 3, "unknown input 'aa'; did you mean 'a'?"),
        ("data:\n  tone: {type: jsonl, files: nothere.jsonl}\n", 2, "no such file 'nothere.jsonl'"),
        ("pases:\n  a: {type: fake}\n", 1, "pases: unknown key; did you mean 'passes'?"),
        ("targets:\n  laptop: cpu-int5\n", 2, "unknown target profile 'cpu-int5'"),
        ("passes:\n  a: {type: fake}\n  a: {type: fake}\n", 3, "duplicate key"),
        ("passes:\n  a:\n    value: 3\n", 2, "missing required key 'type'"),
        ("data:\n  d:\n    files: pipeline.yaml\n    splits: {train: '[:90%'}\n", 4, "bad split '[:90%'"),
        ("passes:\n  s:\n    type: generate_adapter\n    adapters: {'../../x': ad}\n", 4, "'../../x' cannot name an adapter"),
        ("passes:\n  a: {type: fake, inputs: [model]}\n", 2, "passes.a.inputs[0]: 'model' is the pipeline's input model, and this pipeline has none"),
        ("passes:\n  q:\n    type: quantize\n    block_size: 48\n", 4, "passes.q.block_size: not a block size: MatMulNBits takes a power of two"),
        ("targets: {cpu: cpu}\npasses:\n  a: {type: fake, targets: []}\n", 3, "passes.a.targets: an empty list names no target"),
        ("targets:\n  lap: {extends: cpu-int4, settings: {quantize: {blocksize: 64}}}\n", 2,
         "targets.lap.settings: quantize.blocksize: unknown key; did you mean 'block_size'?"),
        ("targets:\n  lap: {extends: cpu-int4, settings: {quantise: {block_size: 64}}}\n", 2,
         "unknown settings group 'quantise'; did you mean 'quantize'?"),
    ],
    ids=["yaml-syntax", "unknown-key", "wrong-type", "missing-required", "unknown-pass", "unknown-input",
         "missing-data-file", "top-level-typo", "unknown-target", "duplicate-key", "missing-type", "bad-split", "adapter-name-a-path", "model-input-without-a-model", "block-size", "empty-targets", "settings-key-typo",
         "settings-group-typo"],
)
def test_bad_config_names_file_line_and_fix(project, cli, text, line, fragment):
    path = project.write(text)
    code, _, err = cli("validate", "--config", path)
    assert code == 2
    assert f"{path}:{line}" in err
    assert fragment in err
    assert "Traceback" not in err


def test_missing_config_file(tmp_path, cli):
    code, _, err = cli("validate", "--config", tmp_path / "nope.yaml")
    assert code == 2
    assert "nope.yaml" in err and "no such file" in err


def test_every_error_is_reported_at_once(project):
    path = project.write(
        """
        name: many
        engine: {cache_dirr: x}
        passes:
          a: {type: fake, seconds: -1}
          b: {type: nope}
        """
    )
    with pytest.raises(ConfigError) as caught:
        slimops.load_config(path)
    lines = sorted(issue.line for issue in caught.value.issues)
    assert lines == [2, 4, 5]


def test_set_overrides_are_typed_by_the_schema(project):
    path = project.write("passes:\n  a: {type: fake}\n")
    config = slimops.load_config(path, ["passes.a.seconds=0.5", "passes.a.value=8", "name=renamed"])
    params = config.passes["a"].params
    assert params.seconds == 0.5
    assert params.value == "8"  # a str field keeps the text, not the int YAML would make of it
    assert config.name == "renamed"


def test_bad_override_is_located_at_the_flag(project, cli):
    path = project.write("passes:\n  a: {type: fake}\n")
    code, _, err = cli("validate", "--config", path, "--set", "passes.a.seconds=later")
    assert code == 2
    assert "--set passes.a.seconds" in err
    code, _, err = cli("validate", "--config", path, "--set", "passes.a.seconds")
    assert code == 2 and "key.path=value" in err


def test_validate_imports_no_torch(project):
    path = project.write("passes:\n  a: {type: fake}\n")
    code = (
        "import sys; from slimops.cli import main; rc = main(['validate', '--config', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr



def test_a_home_relative_output_folder_is_the_one_under_home(project, monkeypatch):
    """`~` in output_dir means the home folder, as it does in cache_dir and in validation, never a folder named '~'."""
    from slimops.config import load_config

    home = project.root / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    config = load_config(project.write("engine: {output_dir: ~/slim-out, cache_dir: ~/slim-cache}\npasses: {a: {type: fake}}\n"))
    assert config.output_dir == home.resolve() / "slim-out"
    assert config.cache_dir == home.resolve() / "slim-cache"


def test_a_custom_loss_or_metric_whose_module_is_not_there_fails_validation(project, cli):
    """Found before anything runs, not after the fine-tune that precedes the evaluation."""
    (project.root / "scores.py").write_text("def exact(predictions, references, examples):\n    return 1.0\n")
    (project.root / "tone.jsonl").write_text('{"phrase": "a", "tone": "b"}\n' * 4)
    head = ("data:\n  tone: {files: tone.jsonl, splits: {train: '[:2]', eval: '[2:]'}, prompt: '{phrase}', response: '{tone}'}\n"
            "passes:\n")
    path = project.write(head + "  ft: {type: lora, data: tone, loss: 'my_loss:shifted'}\n"
                         "  eval: {type: evaluate, data: tone, metrics: [accuracy, 'score:exact', {metric: 'scores:exact'}]}\n")
    code, _, err = cli("validate", "--config", path)
    assert code == 2
    assert f"{path}:4 passes.ft.loss: no module 'my_loss' beside the pipeline ({project.root}) or installed; put my_loss.py next" in err
    assert f"{path}:5 passes.eval.metrics[1]: no module 'score' beside the pipeline" in err and "did you mean 'scores'?" in err
    assert "metrics[2]" not in err  # scores.py is there
