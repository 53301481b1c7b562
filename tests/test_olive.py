"""Olive workflow configs: each file of tests/olive/ converts, validates, and runs on a tiny llama to
what its hand-written slimops pipeline gives (the same cache keys, so the second run is all hits);
every Olive pass maps as its row says; what cannot convert is a located error, what is dropped a
warning or a comment; `convert-olive` writes a file that loads to the same pipeline."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from assets import tiny_llama, tone_rows, write_jsonl
from slimops.config import load_config
from slimops.config.source import parse_yaml
from slimops.errors import ConfigError
from slimops.olive import convert, is_olive
from slimops.olive.passes import search_value

HERE = Path(__file__).parent / "olive"
CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("olive-llama") / "tiny", hidden=64)  # head size 16, as GQA kernels need


def project(root: Path, model: Path, *names: str) -> dict[str, Path]:
    """The named files of tests/olive/ in `root`, on the tiny model, beside 60 tone phrases."""
    write_jsonl(root / "tone.jsonl", tone_rows(60))
    out = {}
    for name in names:
        out[name] = root / name
        out[name].write_text((HERE / name).read_text().replace("smollm2-135m", str(model)))
    return out


def olive(text: str, name: str = "olive.yaml"):
    data, lines = parse_yaml(textwrap.dedent(text).lstrip("\n"), name)
    return convert(data, lines)


def run_json(root: Path) -> dict:
    return json.loads((root / "out" / "run.json").read_text())


@pytest.mark.parametrize("olive_file, pipeline_file", [("lora.yaml", "lora.pipeline.yaml"), ("chain.json", "chain.pipeline.yaml"),
                                                       ("adapters.yaml", "adapters.pipeline.yaml"), ("quantize.yaml", "quantize.pipeline.yaml")])
def test_an_olive_file_runs_to_its_hand_written_pipelines_result(tmp_path, llama, cli, olive_file, pipeline_file):
    files = project(tmp_path, llama, olive_file, pipeline_file)
    code, _, err = cli("run", "--config", files[olive_file], "--quiet")
    assert code == 0, err
    assert f"{files[olive_file]}: an Olive workflow config; running it as the equivalent slimops pipeline" in err
    converted = run_json(tmp_path)

    code, out, err = cli("plan", "--config", files[pipeline_file], "--json")
    assert code == 0, err
    assert "Olive" not in err
    assert all(row["status"] == "cached" for row in json.loads(out))  # the same nodes, keyed alike

    code, _, err = cli("run", "--config", files[pipeline_file], "--quiet")
    assert code == 0, err
    by_hand = run_json(tmp_path)
    assert all(node["cached"] for node in by_hand["nodes"].values())
    assert {k: n["key"] for k, n in converted["nodes"].items()} == {k: n["key"] for k, n in by_hand["nodes"].items()}
    assert {k: n["metrics"] for k, n in converted["nodes"].items()} == {k: n["metrics"] for k, n in by_hand["nodes"].items()}

    written = tmp_path / "converted.yaml"
    code, _, err = cli("convert-olive", files[olive_file], "-o", written)
    assert code == 0, err
    assert load_config(written).olive is None
    code, out, err = cli("plan", "--config", written, "--json")
    assert code == 0, err
    assert all(row["status"] == "cached" for row in json.loads(out))
    elsewhere = tmp_path / "sub" / "pipeline.yaml"  # its paths are rewritten to still find the model and data
    code, _, err = cli("convert-olive", files[olive_file], "-o", elsewhere)
    assert code == 0, err
    code, _, err = cli("validate", "--config", elsewhere)
    assert code == 0, err


def test_an_olive_search_runs_the_trials_of_its_hand_written_search(tmp_path, llama, cli):
    files = project(tmp_path, llama, "search.yaml", "search.pipeline.yaml")
    code, _, err = cli("run", "--config", files["search.yaml"], "--quiet")
    assert code == 0, err
    assert "2 params, space of continuous points, 3 trials (tpe)" in err
    trials = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert [t["status"] for t in trials["trials"]] == ["ok"] * 3
    assert all(1e-4 <= t["params"]["passes.lora.learning_rate"] <= 1e-2 and t["params"]["passes.lora.r"] in (4, 8)
               for t in trials["trials"])

    code, _, err = cli("run", "--config", files["search.pipeline.yaml"], "--quiet")
    assert code == 0, err
    assert err.count("0 ran, 3 from cache") == 3  # the same points, the same keys
    again = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert [t["params"] for t in again["trials"]] == [t["params"] for t in trials["trials"]]
    assert [t["values"] for t in again["trials"]] == [t["values"] for t in trials["trials"]]
    assert again["best"] == trials["best"]


def test_olive_configs_are_told_from_pipelines():
    for template in sorted(CONFIGS.glob("*.yaml")):
        data, _ = parse_yaml(template.read_text(), template.name)
        assert not is_olive(data), template.name
    for name in ("lora.yaml", "chain.json", "search.yaml", "adapters.yaml", "quantize.yaml"):
        data, _ = parse_yaml((HERE / name).read_text().replace("\t", " "), name)
        assert is_olive(data), name
    assert is_olive({"passes": {"q": {"type": "OnnxDynamicQuantization"}}})
    assert is_olive({"model": {"type": "HfModel", "model_path": "x"}, "passes": {}})
    assert is_olive({"passes": {"lora": {"type": "lora", "config": {"r": 8}}}})  # the older config:-nested form
    assert not is_olive({"model": "smollm2-135m", "passes": {"lora": {"type": "lora", "data": "tone"}}})
    assert not is_olive({"passes": {"lora": {"type": []}}})  # a broken pipeline stays the pipeline's to report


PASS_ROWS = [
    ("{type: OnnxConversion, target_opset: 18, use_dynamo_exporter: false, torch_dtype: float16}",
     {"type": "onnx", "precision": "fp16", "exporter": "torchscript", "opset": 18}),
    ("{type: ModelBuilder, precision: int4, int4_block_size: 64, int4_accuracy_level: 4, int4_is_symmetric: false}",
     {"type": "onnx", "precision": "int4", "int4_method": "builder", "block_size": 64, "accuracy_level": 4, "symmetric": False}),
    ("{type: ModelBuilder, precision: fp16}", {"type": "onnx", "precision": "fp16"}),
    ("{type: OnnxMatMul4Quantizer, block_size: 64, is_symmetric: false, accuracy_level: 4, algorithm: HQQ}",
     {"type": "quantize", "method": "hqq", "bits": 4, "block_size": 64, "symmetric": False, "accuracy_level": 4}),
    ("{type: OnnxBlockWiseRtnQuantization, bits: 8, nodes_to_exclude: [lm_head]}",
     {"type": "quantize", "method": "rtn", "bits": 8, "nodes_to_exclude": ["lm_head"]}),
    ("{type: OnnxHqqQuantization, block_size: 32}", {"type": "quantize", "method": "hqq", "bits": 4, "block_size": 32}),
    ("{type: OnnxDynamicQuantization}", {"type": "quantize", "method": "int8_dynamic"}),
    ("{type: OnnxQuantization, quant_mode: dynamic}", {"type": "quantize", "method": "int8_dynamic"}),
    ("{type: OnnxStaticQuantization, data_config: tone, activation_type: QUInt16, weight_type: QInt8, per_channel: true}",
     {"type": "quantize", "method": "qdq", "calibration_data": "tone", "activation_type": "uint16", "weight_type": "int8",
      "per_channel": True}),
    ("{type: OrtTransformersOptimization, model_type: gpt2, opt_level: 2, float16: true, num_heads: 4, hidden_size: 64}",
     {"type": "optimize", "model_type": "gpt2", "opt_level": 2, "fp16": True, "num_heads": 4, "hidden_size": 64}),
]


@pytest.mark.parametrize("body, expected", PASS_ROWS, ids=[row[0].split(",")[0].split(": ")[1].rstrip("}") for row in PASS_ROWS])
def test_each_olive_pass_becomes_its_slimops_pass(body, expected):
    record = olive(f"""
        input_model: {{type: HfModel, model_path: smollm2-135m}}
        data_configs: [{{name: tone, load_dataset_config: {{data_name: json, data_files: tone.jsonl}}, pre_process_data_config: {{text_cols: phrase}}}}]
        passes:
          export: {{type: ModelBuilder, precision: fp32}}
          step: {body}
        """)
    assert record.pipeline["passes"]["step"] == expected


def test_adapter_passes_map_their_settings_and_carry_olives_defaults():
    record = olive("""
        input_model: {type: HfModel, model_path: smollm2-135m}
        data_configs: [{name: tone, load_dataset_config: {data_name: json, data_files: tone.jsonl, split: "train[:90%]"},
                        pre_process_data_config: {text_template: "{phrase} {tone}", max_seq_len: 128}}]
        passes:
          q:
            type: QLoRA
            config: {r: 8, lora_alpha: 16, quant_type: nf4, double_quant: true, train_data_config: tone, torch_dtype: bfloat16,
                     training_args: {num_train_epochs: 2, per_device_train_batch_size: 2, lr_scheduler_type: cosine, max_steps: -1,
                                     gradient_accumulation_steps: 4, extra_args: {warmup_steps: 5}}}
        """)
    assert record.pipeline["passes"]["q"] == {
        "type": "qlora", "r": 8, "alpha": 16, "quant_type": "nf4", "double_quant": True, "precision": "bf16", "epochs": 2,
        "batch_size": 2, "lr_scheduler": "cosine", "gradient_accumulation_steps": 4, "warmup_steps": 5,
        "dropout": 0.05, "learning_rate": 2e-4,  # Olive's defaults, said in comments (warmup_steps stands for its warmup_ratio)
        "data": "tone", "max_seq_len": 128, "packing": True}  # Olive's default strategy joins examples
    texts = {note.path: note.text for note in record.notes}
    assert texts[("passes", "q", "alpha")] == "from passes.q.config.lora_alpha"
    assert texts[("passes", "q", "learning_rate")].startswith("Olive's default learning_rate")
    assert record.pipeline["data"]["tone"] == {"type": "jsonl", "files": "tone.jsonl", "template": "{phrase} {tone}",
                                                "splits": {"train": "train[:90%]"}}


def test_a_lora_export_is_merged_first_and_extract_adapters_makes_one_generate_adapter():
    record = olive("""
        input_model: {type: HfModel, model_path: smollm2-135m}
        data_configs: [{name: tone, load_dataset_config: {data_name: json, data_files: tone.jsonl}, pre_process_data_config: {text_cols: phrase}}]
        passes:
          tune: {type: LoRA, train_data_config: tone}
          build: {type: ModelBuilder, precision: int4, int4_block_size: 32}
          extract: {type: ExtractAdapters, make_inputs: true}
          optimize: {type: OrtTransformersOptimization, model_type: gpt2}
        pass_flows: [[tune, build, extract], [tune, optimize]]
        """)
    passes = record.pipeline["passes"]
    assert list(passes) == ["tune", "build", "merge", "optimize"]
    assert passes["build"] == {"type": "generate_adapter", "precision": "int4", "block_size": 32}
    assert passes["merge"] == {"type": "merge_adapter", "inputs": ["tune"]}  # the second flow branches from the adapter
    assert "inputs" not in passes["optimize"]


def test_evaluators_become_evaluate_passes_with_goals_and_search_objectives():
    record = olive("""
        input_model: {type: HfModel, model_path: smollm2-135m}
        data_configs:
          - {name: tone, load_dataset_config: {data_name: json, data_files: tone.jsonl}, pre_process_data_config: {text_template: "{phrase}", label_col: tone}}
        evaluators:
          common:
            metrics:
              - {name: acc, type: accuracy, data_config: tone, sub_types: [
                  {name: accuracy_score, priority: 1, higher_is_better: true, goal: {type: max-degradation, value: 0.02}},
                  {name: f1_score, higher_is_better: true, goal: {type: threshold, value: 0.5}}]}
              - {name: lat, type: latency, data_config: tone, sub_types: [{name: p90, priority: 2, goal: {type: percent-max-degradation, value: 20}}]}
              - {name: size, type: size_on_disk, data_config: tone, sub_types: [{name: bytes, goal: {type: threshold, value: 1048576}}]}
        passes:
          build: {type: ModelBuilder, precision: int4}
        evaluator: common
        """)
    assert record.pipeline["passes"]["eval"] == {
        "type": "evaluate", "data": "tone", "max_samples": None, "metrics": ["accuracy", "f1", "latency_p90_ms", "size_mb"],
        "goals": {"accuracy": {"max_drop": 0.02}, "f1": {"min": 0.5}, "latency_p90_ms": {"max_increase": "20%"},
                  "size_mb": {"max": 1.0}}}
    assert record.pipeline["data"]["tone"]["splits"] == {"eval": "train"}


@pytest.mark.parametrize("form, space", [
    ([4, 8, 16], [4, 8, 16]),
    ({"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": ["a", "b"]}, ["a", "b"]),
    ({"olive_parameter_type": "SearchParameter", "type": "Boolean"}, [True, False]),
    ({"type": "choice", "values": [0.1, 0.2]}, [0.1, 0.2]),
    ({"type": "float", "low": 1e-4, "high": 1e-2, "log": True}, {"log_uniform": [1e-4, 1e-2]}),
    ({"type": "float", "low": 0.0, "high": 0.1}, {"uniform": [0.0, 0.1]}),
    ({"type": "int", "low": 4, "high": 32}, {"int": [4, 32]}),
    ({"type": "int", "low": 8, "high": 32, "step": 8}, [8, 16, 24, 32]),
    (16, None),
])
def test_olive_search_forms(form, space):
    assert search_value(form) == space


def located(text: str, name: str = "olive.yaml") -> list[str]:
    with pytest.raises(ConfigError) as err:
        olive(text, name)
    return [str(issue) for issue in err.value.issues]


def test_what_cannot_convert_is_a_located_error_naming_the_nearest_setting():
    issues = located("""
        input_model: {type: HfModel, model_path: smollm2-135m}
        pases: {}
        passes:
          lora:
            type: LoRA
            config: {r: 8, lora_alpah: 16, train_data_config: tone}
          slice: {type: SliceGPT}
          gptq: {type: Gptq}
        data_configs: [{name: tone, load_dataset_config: {data_name: json, data_files: tone.jsonl}}]
        """)
    assert "olive.yaml:2 pases: 'pases' is not a setting of an Olive workflow config; did you mean 'passes'?" in issues
    assert any(i.startswith("olive.yaml:6 passes.lora.config.lora_alpah: ") and "did you mean 'lora_alpha'?" in i for i in issues)
    assert any(i.startswith("olive.yaml:7 passes.slice.type: the Olive pass 'SliceGPT' has no slimops equivalent") for i in issues)
    assert any(i.startswith("olive.yaml:8 passes.gptq.type:") and "method: gptq after the onnx pass" in i for i in issues)


def test_a_search_value_needs_a_search_strategy():
    issues = located("""
        input_model: {type: HfModel, model_path: smollm2-135m}
        data_configs: [{name: tone, load_dataset_config: {data_name: json, data_files: tone.jsonl}}]
        passes:
          lora: {type: LoRA, train_data_config: tone, r: [8, 16]}
        """)
    assert issues == ["olive.yaml:4 passes.lora.r: a search value needs a search_strategy (e.g. {execution_order: joint, "
                      "sampler: tpe, sampler_config: {max_samples: 8}}); or give one value"]


def test_slimops_errors_in_the_converted_pipeline_name_the_olive_line_and_key(tmp_path, cli):
    path = tmp_path / "olive.yaml"
    path.write_text("input_model:\n  type: HfModel\n  model_path: no-such-model\n")
    code, _, err = cli("validate", "--config", path)
    assert code == 2
    assert f"{path}:3 input_model.model_path (slimops model.path): 'no-such-model' is neither a local path" in err


def test_docker_and_azure_systems_are_explained_and_the_target_system_becomes_a_target(tmp_path, cli):
    path = tmp_path / "olive.yaml"
    path.write_text(textwrap.dedent("""
        input_model: {type: HfModel, model_path: smollm2-135m}
        systems:
          docker: {type: Docker, config: {image_name: olive, accelerators: [{device: gpu, execution_providers: [CUDAExecutionProvider]}]}}
          local: {type: LocalSystem, config: {accelerators: [{device: cpu}]}}
        passes: {build: {type: ModelBuilder, precision: int4}}
        host: docker
        target: local
        """))
    code, _, err = cli("validate", "--config", path)
    assert code == 0, err
    assert f"warning: {path}:4 systems.docker: dropped: the Docker system runs Olive's passes in a container" in err
    assert "engine.executor: ray (docs/scale.md)" in err
    assert load_config(path).spec.targets["local"].device == "cpu"


def test_a_hub_model_offline_gets_the_usual_model_error(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "olive.json"
    path.write_text(json.dumps({"input_model": {"type": "HfModel", "model_path": "someone/not-here"},
                                "passes": {"build": {"type": "ModelBuilder", "precision": "fp32"}}}))
    code, _, err = cli("run", "--config", path, "--quiet")
    assert code == 2
    assert "someone/not-here" in err and "Traceback" not in err


def test_convert_olive_writes_comments_and_never_replaces_a_file_unasked(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)  # printed, its paths are relative to here
    shutil.copy(HERE / "lora.yaml", tmp_path / "olive.yaml")
    write_jsonl(tmp_path / "tone.jsonl", tone_rows(12))
    code, out, err = cli("convert-olive", tmp_path / "olive.yaml")
    assert code == 0, err
    assert "# from passes.lora.config.lora_alpha\n    alpha: 32" in out
    assert "# dropped passes.lora.config.training_args.output_dir: slimops runs the Trainer itself" in out
    assert "# dropped engine.log_severity_level" in out
    assert yaml.safe_load(out) == load_config(tmp_path / "olive.yaml").olive.pipeline
    assert cli("convert-olive", tmp_path / "olive.yaml", "-o", "-")[1] == out and not (tmp_path / "-").exists()  # - is stdout

    target = tmp_path / "pipeline.yaml"
    target.write_text("mine\n")
    code, _, err = cli("convert-olive", tmp_path / "olive.yaml", "-o", target)
    assert code == 2 and "add --force" in err and target.read_text() == "mine\n"
    code, _, err = cli("convert-olive", tmp_path / "olive.yaml", "-o", target, "--force")
    assert code == 0 and yaml.safe_load(target.read_text())["passes"]["lora"]["type"] == "lora"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left

    code, _, err = cli("convert-olive", target)
    assert code == 2 and "is a slimops pipeline already" in err


def test_the_older_schema_converts_too():
    record = olive("""
        input_model:
          type: PyTorchModel
          config: {hf_config: {model_name: smollm2-135m, task: text-generation}}
        data_configs:
          - name: tone
            type: HuggingfaceContainer
            params_config: {data_name: json, data_files: tone.jsonl, split: train, text_cols: [phrase], max_seq_len: 64, max_samples: 20}
        evaluators:
          harness: {type: LMEvaluator, tasks: [hellaswag], limit: 50, batch_size: 4}
          ev: {metrics: [{name: ppl, type: accuracy, data_config: tone, sub_types: [{name: perplexity}]}]}
        passes:
          lora: {type: LoRA, config: {r: [8, 16], train_data_config: tone}}
        engine:
          search_strategy: {execution_order: joint, search_algorithm: random, search_algorithm_config: {num_samples: 2, seed: 1}}
          evaluator: ev
          cache_dir: .olive-cache
          output_dir: models
        """)
    pipeline = record.pipeline
    assert pipeline["model"] == {"path": "smollm2-135m"}
    assert pipeline["data"]["tone"] == {"type": "jsonl", "files": "tone.jsonl", "text": "phrase",
                                        "splits": {"train": "train[:20]", "eval": "train[:20]"}}
    assert pipeline["passes"]["eval"] == {"type": "evaluate", "data": "tone", "max_samples": 20, "metrics": ["perplexity"]}
    assert pipeline["search"] == {"space": {"passes.lora.r": [8, 16]}, "strategy": "random", "trials": 2, "seed": 1,
                                  "objectives": [{"metric": "perplexity", "direction": "minimize"}]}
    assert pipeline["engine"] == {"output_dir": "models"}
    assert any(note.source == ("engine", "cache_dir") and not note.warn for note in record.notes)


def test_an_lm_evaluator_becomes_lm_eval_metrics():
    record = olive("""
        input_model: {type: HfModel, model_path: smollm2-135m}
        evaluators:
          harness: {type: LMEvaluator, tasks: [hellaswag, arc_easy], limit: 50, batch_size: 4}
        passes:
          build: {type: ModelBuilder, precision: int4}
        evaluator: harness
        """)
    assert record.pipeline["passes"]["eval"] == {"type": "evaluate", "metrics": ["lm_eval:hellaswag", "lm_eval:arc_easy"],
                                                 "lm_eval": {"limit": 50}}


def test_a_section_of_the_wrong_shape_or_a_mistyped_key_anywhere_is_a_located_error():
    issues = located("""
        input_model: {type: HfModel, model_path: smollm2-135m}
        data_configs: {name: tone}
        passes:
          lora: {type: LoRA, training_args: [1e-3]}
        """)
    assert issues == ["olive.yaml:2 data_configs: must be a list, as in Olive's schema (got dict)",
                      "olive.yaml:4 passes.lora.training_args: must be a mapping, as in Olive's schema (got list)"]
    issues = located("""
        input_model: {type: HfModel, model_path: smollm2-135m}
        evaluators:
          ev: {metricz: []}
        passes:
          build: {type: ModelBuilder, precision: int4, search: [true, false]}
        evaluator: ev
        search_strategy: {samplr: random}
        """)
    assert any(i.startswith("olive.yaml:3 evaluators.ev.metricz:") and "did you mean 'metrics'?" in i for i in issues)
    assert any(i.startswith("olive.yaml:7 search_strategy.samplr:") and "did you mean 'sampler'?" in i for i in issues)


def test_a_pass_with_its_own_evaluator_is_followed_by_an_evaluate_pass():
    record = olive("""
        input_model: {type: HfModel, model_path: smollm2-135m}
        data_configs: [{name: tone, load_dataset_config: {data_name: json, data_files: tone.jsonl}, pre_process_data_config: {text_cols: phrase}}]
        evaluators:
          ppl: {metrics: [{name: ppl, type: accuracy, data_config: tone, sub_types: [{name: perplexity}]}]}
        passes:
          build: {type: ModelBuilder, precision: fp32, evaluator: ppl}
          quant: {type: OnnxBlockWiseRtnQuantization}
        """)
    passes = record.pipeline["passes"]
    assert list(passes) == ["build", "eval_build", "quant"]
    assert passes["eval_build"]["metrics"] == ["perplexity"] and "inputs" not in passes["eval_build"]
    assert passes["quant"]["inputs"] == ["build"]


def test_set_overrides_the_converted_pipeline(tmp_path, cli):
    shutil.copy(HERE / "lora.yaml", tmp_path / "olive.yaml")
    write_jsonl(tmp_path / "tone.jsonl", tone_rows(12))
    config = load_config(tmp_path / "olive.yaml", ["passes.lora.r=4"])
    assert config.passes["lora"].params.r == 4
    code, _, err = cli("validate", "--config", tmp_path / "olive.yaml", "--set", "passes.lora.rr=4")
    assert code == 2 and "--set passes.lora.rr" in err and "did you mean 'r'" in err
