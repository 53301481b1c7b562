"""The evaluate pass on tiny models: before/after, every model kind, goals, caching, reports.

Each model is built in the test: a word-level tokenizer (the `tokenizers` library) and a random
2-layer llama or BERT, or a hand-made ONNX graph. Expected numbers are computed independently,
with transformers or numpy directly, and compared with what the pass reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slimops
from assets import EVAL_TEMPLATE as TEMPLATE, EVAL_TONES as TONES, eval_llama as tiny_llama, eval_rows as rows
from assets import eval_tokenizer as build_tokenizer, quiet, tiny_onnx_lm, write_eval_project as write_project

ALL_METRICS = ["accuracy", "exact_match", "f1", "perplexity", "rouge_l", "bleu", "ttft_ms", "latency_p50_ms",
               "latency_p90_ms", "tokens_per_s", "peak_mb", "size_mb"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama") / "tiny")


def hf_perplexity(folder: Path, texts: list[str], adapter: Path | None = None) -> float:
    """Perplexity computed directly with transformers, pooling tokens over texts."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(total / count)


def hf_greedy(folder: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            generated = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, attention_mask=torch.ones_like(ids))
            out.append(tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True))
    return out


EVAL_ALL = "{type: evaluate, data: tone, metrics: [accuracy, exact_match, f1, perplexity, rouge_l, bleu, latency, peak_mb, size_mb], max_samples: 4, max_new_tokens: 3, latency_runs: 2, warmup: 1}"


def test_before_and_after_on_a_tiny_llama(tmp_path, llama):
    path = write_project(tmp_path, llama, EVAL_ALL, "perturb: {type: plugin:Perturb}")
    result = slimops.run(path, display=quiet())
    metrics = result["eval"].metrics
    assert set(metrics) == {"before", "after"}
    assert set(metrics["after"]) == set(ALL_METRICS) and set(metrics["before"]) == set(ALL_METRICS)
    # the input model is evaluated by its own node, with the same settings
    assert result["eval.before"].metrics == metrics["before"]
    assert result["eval.before"].inputs == ["model"] and result["eval"].inputs == ["perturb", "eval.before"]

    texts = [TEMPLATE.format(**r) for r in rows()[3:7]]
    assert metrics["before"]["perplexity"] == pytest.approx(hf_perplexity(llama, texts), rel=1e-4)
    assert metrics["after"]["perplexity"] == pytest.approx(hf_perplexity(Path(result["perturb"].path), texts), rel=1e-4)
    assert metrics["before"]["perplexity"] != pytest.approx(metrics["after"]["perplexity"], rel=1e-3)

    # answers come from greedy decoding of the prompt part of the template (checked against HF generate)
    from slimops.passes import _metrics as M

    prompts = [f"user {r['phrase']} assistant " for r in rows()[3:7]]
    expected = [M.answer_of(t.split("<|im_end|>")[0]) for t in hf_greedy(llama, prompts, 3)]
    labels = [r["tone"] for r in rows()[3:7]]
    assert metrics["before"]["accuracy"] == pytest.approx(M.accuracy(expected, labels))
    written = [json.loads(line) for line in (Path(result["eval.before"].path) / "predictions.jsonl").read_text().splitlines()]
    assert [w["answer"] for w in written] == [t.split("<|im_end|>")[0].strip() for t in hf_greedy(llama, prompts, 3)]

    answers = [w["answer"] for w in written]
    assert metrics["before"]["rouge_l"] == pytest.approx(M.rouge_l(answers, labels))
    assert metrics["before"]["bleu"] == pytest.approx(M.bleu(answers, labels))
    assert metrics["before"]["exact_match"] == pytest.approx(M.exact_match([M.answer_of(a) for a in answers], labels))

    size = sum(f.stat().st_size for f in llama.iterdir() if f.is_file()) / 2**20
    assert metrics["before"]["size_mb"] == pytest.approx(size)
    assert metrics["after"]["latency_p90_ms"] >= metrics["after"]["latency_p50_ms"] > 0
    assert metrics["after"]["tokens_per_s"] > 0
    # measured in a fresh process each: the after model is not hidden by what the before one freed
    assert metrics["before"]["peak_mb"] > 0 and metrics["after"]["peak_mb"] > 0

    on_disk = json.loads((tmp_path / "out" / "eval" / "metrics.json").read_text())
    assert on_disk["after"] == metrics["after"]
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["nodes"]["eval"]["metrics"]["before"]["perplexity"] == metrics["before"]["perplexity"]


def test_evaluations_are_cached_and_rekeyed_by_their_settings(tmp_path, llama):
    evaluate = "{type: evaluate, data: tone, metrics: [perplexity, size_mb], max_samples: 2}"
    path = write_project(tmp_path, llama, evaluate, "perturb: {type: plugin:Perturb}")
    first = slimops.run(path, display=quiet())
    again = slimops.run(path, display=quiet())
    assert again["eval"].cached and again["eval.before"].cached
    assert again["eval"].metrics == first["eval"].metrics

    # a new sample count re-evaluates both models; the model pass stays cached
    more = slimops.run(path, ["passes.eval.max_samples=3"], display=quiet())
    assert more["perturb"].cached and not more["eval"].cached and not more["eval.before"].cached
    assert json.loads((tmp_path / "out" / "run.json").read_text())["overrides"] == {"passes.eval.max_samples": 3}
    assert "- set: `passes.eval.max_samples=3`" in (tmp_path / "out" / "report.md").read_text()
    assert more["eval"].key != first["eval"].key

    # a new split or metric list re-evaluates too
    assert not slimops.run(path, ["passes.eval.split=train"], display=quiet())["eval"].cached
    assert not slimops.run(path, ["passes.eval.metrics=[perplexity]"], display=quiet())["eval"].cached

    # an upstream change re-evaluates the after model only: the before node is shared
    scaled = slimops.run(path, ["passes.perturb.scale=2.0"], display=quiet())
    assert scaled["eval.before"].cached and not scaled["eval"].cached

    # goals are checked, not measured: changing one reuses the evaluation
    goal = slimops.run(path, ["passes.eval.goals={size_mb: {max: 1000}}"], display=quiet())
    assert goal["eval"].cached and goal["eval"].goals[0]["ok"]


def test_goals_that_miss_fail_with_a_table_and_stay_cached(tmp_path, llama, cli):
    evaluate = ("{type: evaluate, data: tone, metrics: [perplexity, size_mb], max_samples: 2, "
                "goals: {perplexity: {max_increase: '1%'}, size_mb: {max: 1000}}}")
    path = write_project(tmp_path, llama, evaluate, "perturb: {type: plugin:Perturb, scale: 3.0}")
    code, out, err = cli("run", "--config", path, "--quiet")
    assert code == 3
    assert "goals missed" in out and "max_increase 1%" in out and "perplexity" in out
    assert "size_mb" not in out.split("goals missed", 1)[1]  # only the missed goal is listed
    assert "1 goal missed" in err
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["status"] == "goals missed"
    assert [g["ok"] for g in run_json["nodes"]["eval"]["goals"]] == [False, True]

    # rerunning is all cache hits, and still fails
    with pytest.raises(slimops.errors.GoalError) as caught:
        slimops.run(path, display=quiet())
    assert all(node.cached for node in caught.value.result.nodes.values())

    # on_miss: warn reports and succeeds, from the cache
    code, out, err = cli("run", "--config", path, "--quiet", "--set", "passes.eval.on_miss=warn")
    assert code == 0 and "goals missed" in out and "warn" in out
    # a goal that holds passes
    code, out, _ = cli("run", "--config", path, "--quiet", "--set", "passes.eval.goals={perplexity: {max_increase: '100000%'}}")
    assert code == 0 and "goals missed" not in out


def test_goal_and_metric_mistakes_are_config_errors(tmp_path, llama, cli):
    path = write_project(tmp_path, llama, "{type: evaluate, data: tone, metrics: [acuracy]}")
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and "unknown metric 'acuracy'" in err and "pipeline.yaml:" in err
    path = write_project(tmp_path, llama, "{type: evaluate, data: tone, metrics: [perplexity], goals: {bleu: {min: 1}}}")
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and "goal on 'bleu'" in err
    path = write_project(tmp_path, llama, "{type: evaluate, data: tone, metrics: [perplexity], goals: {perplexity: {max: '5%'}}}")
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and "percentage only makes sense" in err
    path = write_project(tmp_path, llama, "{type: evaluate, metrics: [accuracy, size_mb]}")
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and "metrics accuracy need a data set" in err


def test_without_data_it_measures_speed_and_size(tmp_path, llama):
    path = write_project(tmp_path, llama, "{type: evaluate, max_new_tokens: 3, latency_runs: 2, warmup: 0}", "perturb: {type: plugin:Perturb}")
    result = slimops.run(path, display=quiet())
    assert set(result["eval"].metrics["after"]) == {"ttft_ms", "latency_p50_ms", "latency_p90_ms", "tokens_per_s", "size_mb"}


def test_reports_hold_the_numbers_and_render_again(tmp_path, llama, cli):
    evaluate = "{type: evaluate, data: tone, metrics: [perplexity, size_mb], max_samples: 2}"
    path = write_project(tmp_path, llama, evaluate, "perturb: {type: plugin:Perturb}")
    code, out, err = cli("run", "--config", path, "--quiet")
    assert code == 0
    assert "before / after" in out and "perplexity" in out
    out_dir = tmp_path / "out"
    metrics = json.loads((out_dir / "run.json").read_text())["nodes"]["eval"]["metrics"]
    md = (out_dir / "report.md").read_text()
    page = (out_dir / "report.html").read_text()
    for value in (metrics["before"]["perplexity"], metrics["after"]["perplexity"], metrics["after"]["size_mb"]):
        assert f"{value:.4g}" in md and f"{value:.4g}" in page
    assert "## Plan" in md and "perturb" in md and "eval.before" in md
    chart = out_dir / "report" / "eval-metrics.png"
    assert chart.is_file() and chart.read_bytes()[:4] == b"\x89PNG"
    assert "report/eval-metrics.png" in md and "report/eval-metrics.png" in page

    (out_dir / "report.md").unlink()
    drawn = chart.stat().st_mtime_ns
    code, out, _ = cli("report", out_dir)
    assert code == 0 and (out_dir / "report.md").read_text() == md
    assert chart.stat().st_mtime_ns == drawn  # the same numbers: the chart is kept, not drawn again
    run_json = json.loads((out_dir / "run.json").read_text())
    run_json["nodes"]["eval"]["metrics"]["after"]["size_mb"] += 1.0
    (out_dir / "run.json").write_text(json.dumps(run_json))
    code, out, _ = cli("report", out_dir)
    assert code == 0 and chart.stat().st_mtime_ns != drawn  # new numbers: drawn again
    code, _, err = cli("report", tmp_path / "nowhere")
    assert code == 1 and "no run.json" in err


def test_adapter_is_evaluated_on_its_base(tmp_path, llama):
    evaluate = "{type: evaluate, data: tone, metrics: [perplexity], max_samples: 3}"
    path = write_project(tmp_path, llama, evaluate, "adapter: {type: plugin:Adapter}")
    result = slimops.run(path, display=quiet())
    texts = [TEMPLATE.format(**r) for r in rows()[3:6]]
    after = result["eval"].metrics["after"]["perplexity"]
    assert after == pytest.approx(hf_perplexity(llama, texts, adapter=Path(result["adapter"].path)), rel=1e-4)
    assert after != pytest.approx(result["eval"].metrics["before"]["perplexity"], rel=1e-3)


def test_classifier_head_predictions(tmp_path):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path / "bert"
    tokenizer = build_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        max_position_embeddings=64, num_labels=3, id2label=dict(enumerate(TONES)), label2id={t: i for i, t in enumerate(TONES)})
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    path = write_project(tmp_path, folder, "{type: evaluate, data: tone, metrics: [accuracy, f1, exact_match, latency], max_samples: 6, inputs: [model]}")
    text = path.read_text().replace(f'template: "{TEMPLATE}"', 'text: phrase')
    path.write_text(text)
    result = slimops.run(path, display=quiet())
    from slimops.passes import _metrics as M

    model.eval()
    tok = AutoTokenizer.from_pretrained(folder)
    predictions = []
    with torch.no_grad():
        for row in rows()[3:9]:
            predictions.append(TONES[int(model(**tok(row["phrase"], return_tensors="pt")).logits[0].argmax())])
    labels = [r["tone"] for r in rows()[3:9]]
    after = result["eval"].metrics["after"]
    assert after["accuracy"] == pytest.approx(M.accuracy(predictions, labels))
    assert after["f1"] == pytest.approx(M.macro_f1(predictions, labels))
    assert after["latency_p50_ms"] > 0
    # evaluating the input model itself: before is the same measurement, and no extra node
    assert result["eval"].metrics["before"] == after and "eval.before" not in result.nodes


def test_an_encoder_without_a_head_is_timed_not_scored(tmp_path):
    """Its vectors carry no label and no next token: evaluate times its forward pass (as PyTorch and as ONNX) and
    weighs it, and asking it for accuracy is an error that says why (a random LM head used to give a perplexity)."""
    from assets import tiny_bert

    from slimops.errors import PassError

    folder = tiny_bert(tmp_path / "encoder")
    path = write_project(tmp_path, folder, "{type: evaluate, data: tone, max_samples: 6, latency_runs: 3, inputs: [model]}",
                         extra_passes="export: {type: onnx}\nonnx_eval: {type: evaluate, data: tone, latency_runs: 3, inputs: [export]}")
    text = path.read_text().replace(f'template: "{TEMPLATE}"', "text: phrase")
    path.write_text(text)
    result = slimops.run(path, display=quiet())
    for node in ("eval", "onnx_eval@cpu"):
        after = result[node].metrics["after"]
        assert set(after) == {"ttft_ms", "latency_p50_ms", "latency_p90_ms", "tokens_per_s", "size_mb"}, node
        assert result[node].meta["task"] == "feature-extraction"
    path.write_text(text.replace("max_samples: 6", "metrics: [accuracy], max_samples: 6"))
    with pytest.raises(PassError, match="encoder without a classification head: it gives vectors, so accuracy cannot be measured"):
        slimops.run(path, display=quiet())


def test_onnx_model_perplexity_matches_numpy(tmp_path):
    import math

    import numpy as np

    folder = tmp_path / "onnx"
    tokenizer = build_tokenizer(folder)
    _, emb, out = tiny_onnx_lm(folder, len(tokenizer))
    path = write_project(tmp_path, folder, "{type: evaluate, data: tone, metrics: [perplexity, accuracy, latency, size_mb], max_samples: 3, max_new_tokens: 2, inputs: [model]}")
    result = slimops.run(path, display=quiet())
    after = result["eval"].metrics["after"]
    total, count = 0.0, 0
    for row in rows()[3:6]:
        ids = tokenizer(TEMPLATE.format(**row))["input_ids"]
        logits = (emb[ids] @ out).astype(np.float64)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        total -= sum(log_probs[i, ids[i + 1]] for i in range(len(ids) - 1))
        count += len(ids) - 1
    assert after["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert after["size_mb"] == pytest.approx((folder / "model.onnx").stat().st_size / 2**20 + sum(
        f.stat().st_size for f in folder.iterdir() if f.name != "model.onnx") / 2**20)
    assert after["tokens_per_s"] > 0


def test_custom_metric_by_import_path(tmp_path, llama):
    evaluate = "{type: evaluate, data: tone, metrics: [accuracy, 'my_metrics:answer_chars', {metric: 'my_metrics:answer_chars', name: chars2}], max_samples: 3, max_new_tokens: 2}"
    path = write_project(tmp_path, llama, evaluate, "perturb: {type: plugin:Perturb}")
    (tmp_path / "my_metrics.py").write_text("def answer_chars(predictions, references, examples):\n    return sum(len(p) for p in predictions) + 1000 * len(examples)\n")
    result = slimops.run(path, display=quiet())
    written = [json.loads(line) for line in (Path(result["eval"].path) / "predictions.jsonl").read_text().splitlines()]
    expected = sum(len(w["answer"]) for w in written) + 3000
    assert result["eval"].metrics["after"]["answer_chars"] == expected
    assert result["eval"].metrics["after"]["chars2"] == expected


@pytest.fixture(scope="module")
def genai_folder(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny llama (head size 16, which GroupQueryAttention needs) built by the onnxruntime-genai builder."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("genai")
    llama = tiny_llama(root / "llama", hidden=64)
    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(llama), "-o", str(root / "genai"),
                           "-p", "fp32", "-e", "cpu", "-c", str(root / "cache")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return llama, root / "genai"


@pytest.mark.parametrize("kind", ["genai-model", "onnx-model"])
def test_genai_folder_and_its_kv_cached_onnx_match_transformers(tmp_path, genai_folder, kind):
    llama, folder = genai_folder
    evaluate = "{type: evaluate, data: tone, metrics: [perplexity, accuracy, latency], max_samples: 3, max_new_tokens: 3, inputs: [model]}"
    path = write_project(tmp_path, folder, evaluate)
    path.write_text(path.read_text().replace(f'model: {{path: "{folder}"}}', f'model: {{path: "{folder}", kind: {kind}}}'))
    result = slimops.run(path, display=quiet())
    after = result["eval"].metrics["after"]
    texts = [TEMPLATE.format(**r) for r in rows()[3:6]]
    assert after["perplexity"] == pytest.approx(hf_perplexity(llama, texts), rel=1e-4)
    prompts = [f"user {r['phrase']} assistant " for r in rows()[3:6]]
    from slimops.passes import _metrics as M

    expected = [M.answer_of(t.split("<|im_end|>")[0]) for t in hf_greedy(llama, prompts, 3)]
    assert after["accuracy"] == pytest.approx(M.accuracy(expected, [r["tone"] for r in rows()[3:6]]))
    assert after["latency_p50_ms"] > 0 and after["tokens_per_s"] > 0


def test_per_target_evaluations_share_one_before_node(tmp_path, llama):
    evaluate = "{type: evaluate, data: tone, metrics: [perplexity, size_mb], max_samples: 2}"
    path = write_project(tmp_path, llama, evaluate, "perturb: {type: plugin:PerTarget}")
    path.write_text(path.read_text() + "targets: {a: cpu, b: cpu-int8}\n")
    result = slimops.run(path, display=quiet())
    assert {"eval@a", "eval@b", "eval.before"} <= set(result.nodes) and "eval.before@a" not in result.nodes
    before = result["eval.before"].metrics
    assert result["eval@a"].metrics["before"] == before == result["eval@b"].metrics["before"]
    assert (tmp_path / "out" / "a" / "eval" / "metrics.json").is_file()
    # PNGs a pass leaves (loss curves) are shown in the report
    md = (tmp_path / "out" / "report.md").read_text()
    assert "a/perturb/loss.png" in md and "b/perturb/loss.png" in md
    assert "### eval@a" in md and "### eval@b" in md


def test_reads_what_the_built_in_passes_make(tmp_path):
    """lora -> evaluate (adapter on its base); merge -> onnx (genai folder, per target) -> evaluate."""
    llama = tiny_llama(tmp_path / "llama", hidden=64)  # head size 16, which the genai builder needs
    path = write_project(tmp_path, llama, "{type: evaluate, data: tone, metrics: [accuracy, perplexity, latency], max_new_tokens: 3, latency_runs: 2}",
                         "finetune: {type: lora, data: tone, r: 4, alpha: 8, max_steps: 12, learning_rate: 0.01}\n"
                         "eval_adapter: {type: evaluate, data: tone, metrics: [perplexity], max_samples: 3}\n"
                         "merge: {type: merge_adapter, inputs: [finetune]}\n"
                         "export: {type: onnx, inputs: [merge]}", data_rows=rows(30))
    path.write_text(path.read_text().replace('"[:3]", eval: "[3:]"', '"[:24]", eval: "[24:]"') + "targets: {laptop: cpu}\n")
    result = slimops.run(path, display=quiet())
    assert result["export@laptop"].kind == "genai-model"
    texts = [TEMPLATE.format(**r) for r in rows(30)[24:]]
    after = result["eval@laptop"].metrics["after"]
    assert after["perplexity"] == pytest.approx(hf_perplexity(Path(result["merge"].path), texts), rel=1e-3)
    adapter_ppl = hf_perplexity(llama, texts[:3], adapter=Path(result["finetune"].path))
    assert result["eval_adapter"].metrics["after"]["perplexity"] == pytest.approx(adapter_ppl, rel=1e-4)
    assert result["eval@laptop"].metrics["before"] == result["eval.before"].metrics


def test_reference_evaluation_sits_beside_and_drives_goals(tmp_path, llama, cli):
    """A second evaluate pass reads the first as its reference: its numbers come along, and
    *_from_reference goals compare with them; the reference runs first even when written after."""
    evaluate = ("{type: evaluate, data: tone, metrics: [perplexity], max_samples: 2, inputs: [perturb], reference: ref, "
                "goals: {perplexity: {max_increase_from_reference: '1%'}}}")
    path = write_project(tmp_path, llama, evaluate, "perturb: {type: plugin:Perturb, scale: 3.0}")
    with path.open("a") as handle:  # the reference, written after the pass that reads it: the model itself
        handle.write("  ref: {type: evaluate, data: tone, metrics: [perplexity], max_samples: 2, inputs: [model]}\n")
    code, out, err = cli("run", "--config", path, "--quiet")
    assert code == 3 and "goals missed" in out  # the scaled model is worse than the reference
    nodes = json.loads((tmp_path / "out" / "run.json").read_text())["nodes"]
    (goal,) = nodes["eval"]["goals"]
    assert goal["rule"] == "max_increase_from_reference 1%" and not goal["ok"]
    assert nodes["eval"]["metrics"]["reference"] == nodes["ref"]["metrics"]["after"]
    assert "reference" in (tmp_path / "out" / "report.md").read_text()

    path.write_text(path.read_text().replace("reference: ref", "reference: reff"))
    code, _, err = cli("plan", "--config", path)
    assert code == 2 and "reads 'reff', which is not a pass; did you mean 'ref'?" in err
    path.write_text(path.read_text().replace("reference: reff", "reference: perturb"))  # a model, not an evaluation
    code, _, err = cli("plan", "--config", path)
    assert code == 2 and "reads 'perturb', which makes hf-model; it needs a pass that makes metrics" in err
    assert "pipeline.yaml:" in err and "Traceback" not in err
    path.write_text(path.read_text().replace("reference: perturb", "reference: reff"))
    path.write_text(path.read_text().replace("reference: reff, ", ""))
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and "set reference to another evaluate pass" in err


def test_a_template_without_the_label_field_is_the_whole_question():
    """Olive's form: a text template and a label column; the prompt is the rendered template, the answer the label.
    (The template's last field was once taken for the answer, leaving the prompt empty and the model crashing.)"""
    from slimops.config.spec import DataSpec
    from slimops.passes._answers import prompt_and_reference

    spec = DataSpec(files="tone.jsonl", template="Tone of: {phrase}", label="tone")
    assert prompt_and_reference({"phrase": "so happy", "tone": "joyful"}, spec) == ("Tone of: so happy", "joyful", "joyful")
    spec = DataSpec(files="tone.jsonl", template="{phrase} => {tone}", label="tone")
    assert prompt_and_reference({"phrase": "so happy", "tone": "joyful"}, spec) == ("so happy => ", "joyful", "joyful")


def test_an_empty_prompt_is_a_data_error_not_a_crash(tmp_path, llama, cli):
    path = write_project(tmp_path, llama, "{type: evaluate, data: tone, metrics: [accuracy], max_samples: 2}")
    path.write_text(path.read_text().replace(f'template: "{TEMPLATE}"', 'template: "{tone}"'))
    code, _, err = cli("run", "--config", path, "--quiet")
    assert code == 2 and "its prompt is empty" in err and "Traceback" not in err
