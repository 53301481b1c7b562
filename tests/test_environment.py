"""The environment slimops was installed into: every module its libraries import is there, and
`slimops doctor` reports what each pass needs from the same table the planner reads."""

from __future__ import annotations

import subprocess
import sys
import textwrap


from slimops import needs

# torch.onnx's dynamo exporter imports onnxscript and onnx_ir; torch declares neither.
EXPORT_ENCODER = textwrap.dedent("""
    import sys, torch
    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(16, 8)
            self.proj = torch.nn.Linear(8, 8)
        def forward(self, ids):
            return torch.tanh(self.proj(self.embed(ids)))
    ids = torch.zeros(1, 4, dtype=torch.long)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    program = torch.onnx.export(Encoder(), (ids,), dynamic_shapes=({0: batch, 1: seq},), dynamo=True, verbose=False)
    program.save(sys.argv[1])
""")


def test_the_model_builder_imports_in_this_environment():
    """The onnx pass runs the builder as `python -m`; a module it imports undeclared (onnx_ir) fails it."""
    done = subprocess.run([sys.executable, "-c", "import onnxruntime_genai.models.builder"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_torch_onnx_exports_an_encoder_in_this_environment(tmp_path):
    import onnxruntime

    model = tmp_path / "encoder.onnx"
    done = subprocess.run([sys.executable, "-c", EXPORT_ENCODER, str(model)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    import numpy as np

    (out,) = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 5), dtype=np.int64)})
    assert out.shape == (2, 5, 8)


def test_every_undeclared_import_is_declared_by_slimops():
    """What IMPORTED_BY says a library needs is in slimops's own requirements."""
    import importlib.metadata
    import re

    declared = {re.split(r"[<>=;\[ ]", r, maxsplit=1)[0].lower() for r in importlib.metadata.requires("slimops") or []}
    for module, (_, dists) in needs.IMPORTED_BY.items():
        assert set(dists) <= declared, f"{module} needs {dists}, slimops declares {sorted(declared)}"


def test_doctor_is_ready_here(cli, tmp_path):
    code, out, err = cli("doctor", "--cache-dir", tmp_path / "cache")
    assert code == 0, out + err
    assert "ready: every built-in pass can run here" in out
    for line in ("pass onnx", "pass qlora", "import onnxruntime_genai.models.builder", "execution providers", "cpu", "disk"):
        assert any(row.startswith("ok") and line in row for row in out.splitlines()), f"no ok line for {line}:\n{out}"


def _without(monkeypatch, dist: str):
    real = needs.importlib.metadata.version

    def version(name):
        if name == dist:
            raise needs.importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(needs.importlib.metadata, "version", version)


def test_doctor_and_the_planner_name_the_same_missing_package(cli, project, monkeypatch, tmp_path):
    _without(monkeypatch, "onnxruntime-genai")
    code, out, _ = cli("doctor", "--cache-dir", tmp_path / "cache")
    assert code == 1
    rows = [row for row in out.splitlines() if row.startswith("FAIL")]
    assert {row.split()[2] for row in rows if row.split()[1] == "pass"} == {"onnx", "generate_adapter"}
    assert "to fix:\n  pip install onnxruntime-genai" in out

    config = project.write("""
        name: t
        model: {path: hf}
        targets: {laptop: cpu}
        passes:
          export: {type: onnx}
    """)
    (project.root / "hf").mkdir()
    (project.root / "hf" / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    code, _, err = cli("plan", "--config", config)
    assert code == 2
    assert "needs the package 'onnxruntime-genai': pip install onnxruntime-genai" in err


def test_doctor_names_the_package_for_a_module_a_library_imports_undeclared(cli, monkeypatch, tmp_path):
    monkeypatch.setattr(needs, "IMPORTED_BY", {"onnx_ir_missing_for_the_test": ("a test library", ("onnx-ir",))})
    code, out, _ = cli("doctor", "--cache-dir", tmp_path / "cache")
    assert code == 1
    assert any(row.startswith("FAIL") and "No module named 'onnx_ir_missing_for_the_test'" in row for row in out.splitlines())
    assert "pip install onnx-ir-missing-for-the-test" in out


def test_torch_is_advised_as_the_cpu_build():
    assert needs.install_line(["torch", "peft"]) == "pip install torch==2.13.0 && pip install peft"
