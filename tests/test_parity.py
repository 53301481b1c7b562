"""The parity check's cached-decoding part: onnxruntime-genai, decoding step by step with its KV
cache and the folder's genai_config.json, against the same model recomputed without a cache.

A healthy export agrees fully; a folder whose cache is wired wrong (its genai_config.json feeds
each layer's keys back as its values) still passes the uncached comparison and must fail here.
Uses the tiny trained llama of tests/assets.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import slimops
from slimops.plugin import Artifact


from slimops.passes._runtime.kvcheck import kv_agreement, kv_skip_reason  # noqa: E402
from slimops.passes._runtime.ort import OnnxCausalLM  # noqa: E402
from slimops.passes.parity import ParityError, ParityParams, check, greedy  # noqa: E402
from assets import CORPUS, lora_adapter, quiet, run_broken_chain, tiny_trained_llama, write_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity-assets")
    (root / "data.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in CORPUS))
    return {"root": root, "llama": tiny_trained_llama(root / "llama"), "cache": root / "cache"}


@pytest.fixture(scope="module")
def exported(assets, tmp_path_factory):
    """The llama exported at fp32 and at int4 (affine, the CPU default)."""
    path = write_pipeline(tmp_path_factory.mktemp("export"), assets, """\
        targets: {cpu: cpu, laptop: cpu-int4}
        passes:
          export: {type: onnx}
        """)
    return slimops.run(path, display=quiet())


def edited_copy(folder: Path, out: Path, edit) -> Artifact:
    """A copy of a genai-model folder whose genai_config.json went through `edit(config)`."""
    shutil.copytree(folder, out)
    config = json.loads((out / "genai_config.json").read_text())
    edit(config)
    (out / "genai_config.json").write_text(json.dumps(config, indent=4))
    return Artifact(path=out, kind="genai-model")


def swap_past_keys_and_values(config) -> None:
    # same shapes, so the model loads and the first (uncached) step is right; every cached step
    # then reads each layer's keys as its values
    names = config["model"]["decoder"]["inputs"]
    names["past_key_names"], names["past_value_names"] = names["past_value_names"], names["past_key_names"]


def test_exports_decode_the_same_with_and_without_the_cache(exported):
    for node in ("export@cpu", "export@laptop"):
        artifact = exported[node]
        assert artifact.metrics["parity_kv_agreement"] == 1.0, node
        parity = artifact.meta["parity"]
        assert parity["parity_kv_agreement"] == 1.0
        assert parity["min_kv_agreement"] == 0.9 and parity["kv_near_tie"] == 1.0
        assert 0 <= parity["kv_exact_agreement"] <= 1
    assert exported["export@cpu"].meta["parity"]["kv_exact_agreement"] == 1.0  # fp32: no tie to flip


def test_a_broken_cache_fails_only_the_kv_check(exported, assets, tmp_path):
    reference = Artifact(path=assets["llama"], kind="hf-model")
    broken = edited_copy(Path(exported["export@laptop"].path), tmp_path / "broken", swap_past_keys_and_values)
    with pytest.raises(ParityError, match=r"KV-cache check failed: .* on 0\.\d+ of greedy tokens < min_kv_agreement 0\.9\. "
                                          r"The cache path is broken") as failure:
        check(reference, broken, ParityParams(), None, "int4")
    assert "against the input model" not in str(failure.value)  # the uncached comparison cannot see it

    # the threshold is a knob: at 0 the same folder passes and records how far it got
    relaxed = check(reference, broken, ParityParams(min_kv_agreement=0.0), None, "int4")
    assert relaxed["metrics"]["parity_kv_agreement"] < 0.5
    assert relaxed["meta"]["parity"]["min_kv_agreement"] == 0.0


BREAK_CACHE = """
import json, shutil
from pathlib import Path
from slimops.plugin import Artifact, Pass


class BreakCache(Pass):
    \"\"\"Copies a genai-model and swaps the past key and value names in its genai_config.json.\"\"\"
    name = "break_cache"
    consumes = ("genai-model",)
    per_target = True

    def run(self, ctx):
        shutil.copytree(ctx.input.path, ctx.output_dir, dirs_exist_ok=True)
        config = json.loads((ctx.output_dir / "genai_config.json").read_text())
        names = config["model"]["decoder"]["inputs"]
        names["past_key_names"], names["past_value_names"] = names["past_value_names"], names["past_key_names"]
        (ctx.output_dir / "genai_config.json").write_text(json.dumps(config))
        return Artifact(path=ctx.output_dir, kind="genai-model", meta=dict(ctx.input.meta))
"""


def test_a_broken_cache_fails_the_parity_node(exported, assets, tmp_path, cli):
    _, code, out, err = run_broken_chain(tmp_path, assets, cli, "break_cache", BREAK_CACHE, "BreakCache")
    assert code == 1
    assert "pass 'check@cpu' failed: KV-cache check failed" in err and "Traceback" not in err


def test_min_kv_agreement_is_validated_with_the_config(assets, tmp_path):
    path = write_pipeline(tmp_path, assets, "passes:\n  export: {type: onnx, parity: {min_kv_agreement: 1.5}}\n")
    with pytest.raises(slimops.ConfigError, match="min_kv_agreement"):
        slimops.load_config(path)
    path = write_pipeline(tmp_path, assets, "passes:\n  export: {type: onnx, parity: {min_kv_agreement: 0.5, kv_near_tie: 0}}\n")
    slimops.load_config(path)


def test_a_stop_at_eos_is_agreement(exported, tmp_path):
    # onnxruntime-genai stops at EOS; the uncached greedy run does not: up to there they agree
    folder = Path(exported["export@cpu"].path)
    model = OnnxCausalLM(folder, ["CPUExecutionProvider"])
    ids = [40, 41, 42]
    plain = greedy(model, ids, 8)
    stops = edited_copy(folder, tmp_path / "stops", lambda config: config["model"].update(eos_token_id=[plain[2]]))
    assert kv_agreement(model, Path(stops.path), [ids], [plain], 8, near_tie=1.0) == (1.0, 1.0)


def test_kv_check_skips_with_a_reason_off_the_cpu():
    genai = Artifact(path=Path("."), kind="genai-model")
    assert kv_skip_reason(genai, ["CPUExecutionProvider"]) is None
    assert kv_skip_reason(genai, ["DmlExecutionProvider", "CPUExecutionProvider"]) == (
        "cached decoding is checked on CPU targets only; this target runs on DmlExecutionProvider")
    assert "not run by onnxruntime-genai" in kv_skip_reason(Artifact(path=Path("."), kind="onnx-model"), ["CPUExecutionProvider"])


def test_adapters_are_decoded_with_the_adapter_active(assets, tmp_path):
    lora_adapter(assets["llama"], tmp_path / "tone", rank=4, seed=1)
    path = write_pipeline(tmp_path, assets, """\
        targets: {cpu: cpu}
        passes:
          multi: {type: generate_adapter, adapters: {tone: tone}}
        """)
    node = slimops.run(path, display=quiet())["multi@cpu"]
    assert node.metrics["parity_kv_agreement"] == 1.0  # the base: no adapter active
    assert node.metrics["parity_kv_agreement_tone"] == 1.0
    assert node.meta["parity"]["tone"]["kv_exact_agreement"] == 1.0


def test_a_folder_onnxruntime_genai_cannot_decode_is_a_parity_error(exported, tmp_path):
    folder = Path(exported["export@cpu"].path)
    model = OnnxCausalLM(folder, ["CPUExecutionProvider"])
    wrong = edited_copy(folder, tmp_path / "wrong", lambda config: config["model"]["decoder"]["inputs"].update(past_key_names="past.%d.nope"))
    with pytest.raises(ParityError, match="onnxruntime-genai cannot decode the model with its cache: "):
        kv_agreement(model, Path(wrong.path), [[40, 41, 42]], [greedy(model, [40, 41, 42], 4)], 4, near_tie=1.0)


def test_a_near_tie_flipped_by_the_cache_still_agrees(tmp_path, monkeypatch):
    import numpy as np

    from slimops.passes._runtime import kvcheck

    class Uncached:  # prefers token 1 after every history, token 2 half a logit behind
        def logits(self, ids):
            rows = np.zeros((len(ids), 5), dtype=np.float32)
            rows[:, 1], rows[:, 2] = 3.0, 2.5
            return rows

    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"eos_token_id": 4}}))
    monkeypatch.setattr(kvcheck, "genai_greedy", lambda *args: [[1, 1, 2, 1], [1, 1, 1, 3]])
    uncached = [[1, 1, 1, 1], [1, 1, 1, 1]]
    # the flip to 2 is a near tie; 3 is 3 logits down: that prompt agrees for 3 tokens of 4
    assert kv_agreement(Uncached(), tmp_path, [[0], [0]], uncached, 4, near_tie=1.0) == ((1 + 3 / 4) / 2, (2 / 4 + 3 / 4) / 2)
    assert kv_agreement(Uncached(), tmp_path, [[0], [0]], uncached, 4, near_tie=0.0) == ((2 / 4 + 3 / 4) / 2,) * 2


def test_outputs_that_hold_nan_fail_parity_instead_of_comparing_as_equal():
    import numpy as np

    from slimops.passes.parity import compare

    class Rows:
        providers = ["numpy"]

        def __init__(self, broken: bool):
            self.broken = broken

        def logits(self, ids):
            rows = np.tile(np.arange(5, dtype=np.float32), (len(ids), 1))
            if self.broken:
                rows[-1, 0] = np.nan  # max(0.0, nan) is 0.0, and nan is never over a threshold
            return rows

    assert compare(Rows(False), Rows(False), [[1, 2]], 2, decoder=True).max_logit_diff == 0.0
    with pytest.raises(ParityError, match=r"the model's outputs hold NaN or infinite values \(1 of 20 on a 4-token prompt\); an overflow"):
        compare(Rows(False), Rows(True), [[1, 2]], 2, decoder=True)
    with pytest.raises(ParityError, match="the input model's outputs hold NaN .*its weights may hold NaN"):
        compare(Rows(True), Rows(False), [[1, 2]], 2, decoder=False)
