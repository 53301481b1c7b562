"""`--search` on the shortcut commands: the emitted pipeline holds the common space and an evaluate
node that ranks the trials, validates, and a tiny fine-tuning search completes through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slimops
from assets import tiny_llama, tone_rows, write_jsonl

PROMPT = "<|im_start|>user\\n{phrase}<|im_end|>\\n<|im_start|>assistant\\n"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-assets")
    write_jsonl(root / "tone.jsonl", tone_rows(48))
    write_jsonl(root / "text.jsonl", [{"text": f"{row['phrase']} is {row['tone']}"} for row in tone_rows(8)])
    hf = root / "hf"  # enough for the shortcuts to tell an HF decoder; emitting loads no weights
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    return {"root": root, "hf": hf, "data": root / "tone.jsonl", "text": root / "text.jsonl"}


def finetune_flags(model, data) -> list:
    return ["finetune", "-m", model, "--data_files", data, "--train_split", "[:40]", "--eval_split", "[40:]",
            "--prompt_template", PROMPT, "--response_template", "{tone}"]


def no_calibration_int4(device: str = "cpu") -> list[str]:
    """The weight-only methods the quantize pass runs without calibration data: the space's source
    (affine, a CPU graph, first on cpu only)."""
    from slimops.passes.quantize import CALIBRATED, WEIGHT_ONLY

    methods = (["affine"] if device == "cpu" else []) + [m for m in WEIGHT_ONLY if m not in CALIBRATED]
    assert "gptq" not in methods and "rtn" in methods
    return methods


def emitted(tmp_path: Path, cli, *args, runs_here: bool = True):
    """The YAML a shortcut prints with --emit-config, after `slimops validate` accepted it (or, for a
    target this machine cannot run, refused it for that reason alone, as `plan` and `run` would)."""
    code, out, err = cli(*args, "--emit-config")
    assert code == 0, err
    path = tmp_path / "emitted.yaml"
    path.write_text(out)
    code, _, err = cli("validate", "--config", path)
    assert (code, "run on a machine that has it" in err) == ((0, False) if runs_here else (2, True)), err
    return out, slimops.load_config(path)


def test_finetune_search_emits_rank_and_rate_over_eval_perplexity(tmp_path, assets, cli):
    _, config = emitted(tmp_path, cli, *finetune_flags(assets["hf"], assets["data"]), "--search")
    search = config.spec.search
    assert search.space["passes.finetune.r"] == [8, 16, 32]
    assert search.space["passes.finetune.learning_rate"].log_uniform == (2e-4, 3e-3)
    assert (search.strategy, search.trials) == ("tpe", 4)
    assert [(o.metric, o.resolved_direction) for o in search.objectives] == [("perplexity", "minimize")]
    evaluate = config.passes["eval"]
    assert (evaluate.type, evaluate.params.data, evaluate.params.split, evaluate.params.metrics) == ("evaluate", "train_data", "eval", ["perplexity"])
    assert list(config.passes) == ["finetune", "merge", "eval"]


def test_finetune_search_flags_shape_the_space(tmp_path, assets, cli):
    flags = finetune_flags(assets["hf"], assets["data"])
    _, config = emitted(tmp_path, cli, *flags, "--search", "--search_strategy", "grid", "--lora_r", "4")
    search = config.spec.search
    assert list(search.space) == ["passes.finetune.learning_rate"]  # --lora_r fixed the rank
    assert search.space["passes.finetune.learning_rate"] == [2e-4, 7.7e-4, 3e-3] and search.trial_count() == 3
    assert config.passes["finetune"].params.r == 4

    classify = ["finetune", "-m", assets["hf"], "--task", "text-classification", "--data_files", assets["data"],
                "--eval_split", "[40:]", "--text_field", "phrase", "--label_field", "tone", "--search", "--trials", "2"]
    _, config = emitted(tmp_path, cli, *classify)
    assert [(o.metric, o.resolved_direction) for o in config.spec.search.objectives] == [("accuracy", "maximize")]
    assert config.spec.search.trials == 2 and config.passes["eval"].params.metrics == ["accuracy"]


def test_quantize_search_emits_methods_and_block_sizes_over_perplexity_and_size(tmp_path, assets, cli):
    _, config = emitted(tmp_path, cli, "quantize", "-m", assets["hf"], "--search", "--eval_data", assets["text"])
    search = config.spec.search
    methods = no_calibration_int4()
    assert search.space["passes.quantize.method"] == methods and {"rtn", "hqq", "k_quant"} <= set(methods)
    assert search.space["passes.quantize.block_size"] == [32, 64, 128]
    assert search.strategy == "grid" and search.trial_count() == 3 * len(methods)
    assert [(o.metric, o.resolved_direction) for o in search.objectives] == [("perplexity", "minimize"), ("size_mb", "minimize")]
    assert list(config.passes) == ["export", "quantize", "eval"]
    assert config.passes["quantize"].params.method == "affine"  # the first point, so --no-search runs one
    assert config.passes["eval"].params.data == "eval_data" and config.spec.data["eval_data"].text == "text"

    _, config = emitted(tmp_path, cli, "quantize", "-m", assets["hf"], "--search", "--eval_data", assets["text"],
                        "--algorithm", "hqq", "--search_strategy", "random")
    assert list(config.spec.search.space) == ["passes.quantize.block_size"]
    assert config.spec.search.trials == 3 and config.passes["quantize"].params.method == "hqq"


def test_optimize_search_emits_int4_methods_and_int8_on_cpu(tmp_path, assets, cli):
    _, config = emitted(tmp_path, cli, "optimize", "-m", assets["hf"], "--search", "--eval_data", assets["text"])
    assert config.spec.search.space == {"passes.quantize.method": [*no_calibration_int4(), "int8_dynamic"]}
    assert list(config.passes) == ["export", "quantize", "eval"]
    assert config.passes["export"].params.precision == "fp32"
    assert [o.metric for o in config.spec.search.objectives] == ["perplexity", "size_mb"]

    import onnxruntime

    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    _, config = emitted(tmp_path, cli, "optimize", "-m", assets["hf"], "--device", "cuda", "--search", "--eval_data",
                        assets["text"], runs_here=cuda)
    assert config.spec.search.space == {"passes.quantize.method": no_calibration_int4("cuda")}  # int8_dynamic and affine are CPU-only
    assert config.passes["export"].params.precision == "fp16"


@pytest.mark.parametrize("argv, flag", [
    (["finetune", "-m", "{hf}", "--data_files", "{data}", "--text_field", "phrase", "--search"], "--eval_split"),
    (["quantize", "-m", "{hf}", "--search"], "--eval_data"),
    (["optimize", "-m", "{hf}", "--search"], "--eval_data"),
    (["quantize", "-m", "{hf}", "--trials", "3"], "--trials"),
], ids=["finetune", "quantize", "optimize", "trials-without-search"])
def test_a_search_without_its_objective_source_is_a_flag_error(assets, cli, argv, flag):
    args = [a.format(hf=assets["hf"], data=assets["data"]) for a in argv]
    for extra in (["--emit-config"], ["--output_path", assets["root"] / "never"]):
        code, out, err = cli(*args, *extra)
        assert code == 2 and f"slimops {argv[0]} {flag}:" in err and "Traceback" not in err
    assert not (assets["root"] / "never").exists()


def test_finetune_search_runs_names_the_best_and_reuses_the_cached_prefix(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "tone.jsonl", tone_rows(48))
    model = tiny_llama(tmp_path / "llama")
    flags = [*finetune_flags(model, tmp_path / "tone.jsonl"), "--max_steps", "2", "--per_device_train_batch_size", "4",
             "--search", "--trials", "2", "--search_strategy", "random", "--output_path", "out"]
    code, out, err = cli(*flags)
    assert code == 0, err
    assert "space of continuous points, 2 trials (random)" in err and "no cost estimate yet" in err

    body = json.loads((tmp_path / "out" / "trials.json").read_text())
    trials = body["trials"]
    assert [t["status"] for t in trials] == ["ok", "ok"]
    assert trials[0]["params"] != trials[1]["params"]
    for trial in trials:
        assert trial["params"]["passes.finetune.r"] in (8, 16, 32)
        assert 2e-4 <= trial["params"]["passes.finetune.learning_rate"] <= 3e-3
    # the input model's evaluation is the shared prefix: run by the first trial, a cache hit after
    runs = [json.loads((Path(t["output_dir"]) / "run.json").read_text())["nodes"] for t in trials]
    assert [r["eval.before"]["cached"] for r in runs] == [False, True]
    assert not any(r["finetune"]["cached"] for r in runs)

    best = min(trials, key=lambda t: t["values"][0])
    assert body["best"] == best["number"] and f"best: trial {best['number']}" in err
    # the best trial is materialised into the output folder, from the cache
    main = json.loads((tmp_path / "out" / "run.json").read_text())["nodes"]
    assert all(node["cached"] for node in main.values())
    assert json.loads((tmp_path / "out" / "eval" / "metrics.json").read_text())["after"]["perplexity"] == pytest.approx(best["values"][0])
    assert (tmp_path / "out" / "merge" / "model.safetensors").is_file()
    assert "trials" in out and "finetune: search done" in err


def test_quantize_search_runs_and_shares_the_export(tmp_path, cli, monkeypatch):
    """The ONNX side: the tone llama has 8-wide heads, below the builder's 16, so this uses the trained one."""
    from assets import CORPUS, tiny_trained_llama

    monkeypatch.chdir(tmp_path)
    model = tiny_trained_llama(tmp_path / "llama")
    write_jsonl(tmp_path / "text.jsonl", [{"text": text} for text in CORPUS])
    code, out, err = cli("quantize", "-m", model, "--search", "--eval_data", tmp_path / "text.jsonl", "--block_size", "32",
                         "--trials", "2", "--output_path", "out")
    assert code == 0, err
    assert f"space of {len(no_calibration_int4())} points, 2 trials (grid)" in err
    body = json.loads((tmp_path / "out" / "trials.json").read_text())
    trials = body["trials"]
    assert [t["params"]["passes.quantize.method"] for t in trials] == ["affine", "rtn"]
    assert all(t["status"] == "ok" and len(t["values"]) == 2 for t in trials)
    runs = [json.loads((Path(t["output_dir"]) / "run.json").read_text())["nodes"] for t in trials]
    assert [r["export@cpu"]["cached"] for r in runs] == [False, True]  # one export, shared by every trial
    assert not runs[1]["quantize@cpu"]["cached"]
    assert set(body["pareto"]) <= {0, 1} and body["best"] in body["pareto"] and f"best: trial {body['best']}" in err
    best = trials[body["best"]]
    main = json.loads((tmp_path / "out" / "cpu" / "eval" / "metrics.json").read_text())
    assert [main["after"]["perplexity"], main["after"]["size_mb"]] == pytest.approx(best["values"])
    assert main["after"]["size_mb"] < main["before"]["size_mb"]
