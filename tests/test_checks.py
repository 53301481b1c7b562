"""`validate` makes every check `plan` and `run` make before anything runs, and they never disagree:
one table of mistakes, each asserting the located message and the exit code of all three commands."""

from __future__ import annotations

import json

import pytest

CASES = [
    # (what, pipeline, located message)
    ("a cycle",
     "passes:\n  a: {type: fake, inputs: [b]}\n  b: {type: fake, inputs: [a]}\n",
     "pipeline.yaml:2 passes.a.inputs passes form a cycle: b -> a -> b"),
    ("a kind mismatch names the passes that make the kind",
     "model: smollm2-135m\npasses:\n  m: {type: merge_adapter}\n",
     "pipeline.yaml:3 passes.m pass 'm' (merge_adapter) reads hf-adapter, but its input 'model' is gguf; "
     "read the output of a pass that makes it (dora, ia3, loha, lokr, lora, qlora)"),
    ("a target a pass cannot serve",
     "model: smollm2-135m\ntargets: {npu: npu-qdq}\npasses:\n  o: {type: onnx}\n  q: {type: quantize}\n",
     "pipeline.yaml:5 passes.q pass 'q' (quantize) cannot serve target 'npu': method qdq calibrates on data"),
    ("an unknown model.kind",
     "model: {path: smollm2-135m, kind: hf-modle}\npasses:\n  a: {type: fake}\n",
     "pipeline.yaml:1 model.kind: unknown kind 'hf-modle'; did you mean 'hf-model'?"),
    ("a pass that reads one input, given two",
     "passes:\n  a: {type: fake}\n  b: {type: fake}\n  m: {type: merge_adapter, inputs: [a, b]}\n",
     "pipeline.yaml:4 passes.m.inputs: a merge_adapter pass reads one input, and this names 2 (a, b)"),
    ("a pass named like a generated baseline node",
     "model: smollm2-135m\npasses:\n  eval.before: {type: fake}\n",
     "pipeline.yaml:3 passes.eval.before: 'eval.before' cannot name a pass: slimops names the nodes it adds with a dot"),
    ("an infinite epoch count",
     "data: {d: {files: d.jsonl, text: t}}\nmodel: smollm2-135m\npasses:\n  ft: {type: lora, data: d, epochs: .inf}\n",
     "pipeline.yaml:4 passes.ft.epochs: inf has no meaning here; give a finite number"),
    ("an infinity written as text",
     "data: {d: {files: d.jsonl, text: t}}\nmodel: smollm2-135m\npasses:\n  ft: {type: lora, data: d, max_grad_norm: inf}\n",
     "pipeline.yaml:4 passes.ft.max_grad_norm: inf has no meaning here; give a finite number"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_validate_plan_and_run_refuse_the_same_mistake_the_same_way(project, cli, text, message):
    (project.root / "d.jsonl").write_text('{"t": "some text"}\n' * 4)
    path = project.write(text)
    seen = {command: cli(command, "--config", path) for command in ("validate", "plan", "run")}
    for command, (code, out, err) in seen.items():
        assert code == 2 and message in err and "Traceback" not in err, (command, err)
    assert len({err for _, _, err in seen.values()}) == 1, seen  # word for word the same
    assert not (project.root / "out").exists() and not (project.root / ".slimops").exists()


def test_an_unusual_value_is_a_located_warning_and_the_run_goes_on(project, cli):
    (project.root / "d.jsonl").write_text('{"t": "some text"}\n' * 4)
    path = project.write("data: {d: {files: d.jsonl, text: t}}\nmodel: smollm2-135m\n"
                         "passes:\n  ft:\n    type: lora\n    data: d\n    learning_rate: 10\n")
    code, out, err = cli("validate", "--config", path)
    assert code == 0 and "ok" in out
    assert err.startswith("warning: ") and "pipeline.yaml:7 passes.ft.learning_rate: 10 is unusual (usually 1e-06 to 0.01)" in err
    code, _, err = cli("validate", "--config", path, "--set", "passes.ft.learning_rate=2e-4")
    assert code == 0 and "warning" not in err


def test_validate_writes_nothing(project, cli):
    path = project.write("passes: {a: {type: fake}, b: {type: fake}}\n")
    assert cli("validate", "--config", path)[0] == 0
    assert sorted(p.name for p in project.root.iterdir()) == ["pipeline.yaml"]
    assert cli("run", "--quiet", "--config", path)[0] == 0
    assert json.loads((project.root / "out" / "run.json").read_text())["status"] == "ok"
