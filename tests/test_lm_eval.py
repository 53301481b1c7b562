"""lm-evaluation-harness tasks through slimops' runners (`slimops.passes._lm_eval`): a tiny random llama
scores the same in PyTorch, as its fp32 onnxruntime-genai export and as that export's plain ONNX
graph, and the same as the harness's own `hf` model; local task YAMLs find their data beside them.

The tasks are written here (a multiple-choice one, a generation one, a rolling log-likelihood one)
on six tone rows; the model is `assets.tiny_llama` at hidden 64 (head size 16, which the genai
builder needs), exported once for the module.
"""

from __future__ import annotations

import importlib.resources
import json
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from slimops.errors import DataError
from slimops.passes._lm_eval import LmEvalSettings, run_tasks, task_names
from slimops.passes._runtime.runners import open_runner

from assets import TONES, tiny_llama, tone_rows, write_jsonl

TASKS = ["tiny_choice", "tiny_gen", "tiny_rolling"]
PROMPT = "phrase {{phrase}} tone :"
# fp32 PyTorch and fp32 onnxruntime add up in different orders: here log-likelihoods agree to
# about 1e-7; 1e-3 leaves room for other CPUs' kernels and is still far below a flipped choice
LOGPROB_TOLERANCE = 1e-3


class Progress:
    def __init__(self):
        self.calls = []

    def update(self, done, total, text):
        self.calls.append((done, total, text))


def write_tasks(folder: Path) -> Path:
    """Three task YAMLs in folder/sub/, reading folder/sub/data/rows.jsonl by a relative path."""
    sub = folder / "sub"
    write_jsonl(sub / "data" / "rows.jsonl", tone_rows(6))
    common = "dataset_path: json\ndataset_kwargs: {data_files: {test: data/rows.jsonl}}\ntest_split: test\n"
    (sub / "choice.yaml").write_text(
        f"task: tiny_choice\n{common}output_type: multiple_choice\ndoc_to_text: \"{PROMPT}\"\n"
        f"doc_to_choice: {json.dumps(TONES)}\ndoc_to_target: tone\nmetric_list: [{{metric: acc}}, {{metric: acc_norm}}]\n")
    (sub / "gen.yaml").write_text(
        f"task: tiny_gen\n{common}output_type: generate_until\ndoc_to_text: \"{PROMPT}\"\ndoc_to_target: tone\n"
        "generation_kwargs: {until: [\"<|im_end|>\", \"sad\"], max_gen_toks: 4}\nmetric_list: [{metric: exact_match}]\n")
    (sub / "rolling.yaml").write_text(
        f"task: tiny_rolling\n{common}output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{{{phrase}}}}\"\n"
        "metric_list: [{metric: word_perplexity}]\n")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The llama, its fp32 genai export, the task folder and a project folder that includes it."""
    root = tmp_path_factory.mktemp("lm-eval")
    llama = tiny_llama(root / "llama", hidden=64)
    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(llama), "-o", str(root / "genai"),
                           "-p", "fp32", "-e", "cpu", "-c", str(root / "cache")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    write_tasks(root / "project" / "tasks")
    return SimpleNamespace(root=root, llama=llama, genai=root / "genai", project=root / "project")


def runner(world, kind: str):
    path = world.llama if kind == "hf-model" else world.genai
    base = SimpleNamespace(path=world.llama, kind="hf-model")
    # max_new_tokens 2, below the tasks' max_gen_toks 4: a task's own length must size the genai generator
    return open_runner(SimpleNamespace(path=path, kind=kind), base, ["CPUExecutionProvider"], "cpu", 2)


@pytest.fixture(scope="module")
def scored(world):
    """run_tasks on every kind, from a working directory where the tasks' relative paths do not exist."""
    settings = LmEvalSettings(include="tasks")
    results = {}
    elsewhere = world.root / "elsewhere"
    elsewhere.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(elsewhere)
        for kind in ("hf-model", "genai-model", "onnx-model"):
            model = runner(world, kind)
            progress = Progress()
            results[kind] = (*run_tasks(model, TASKS, settings, world.project, progress), progress)
            model.close()
    return results


@pytest.mark.parametrize("kind", ["genai-model", "onnx-model"])
def test_an_export_scores_as_pytorch_does(scored, kind):
    values, stderrs, _, samples, _ = scored[kind]
    ref_values, ref_stderrs, _, ref_samples, _ = scored["hf-model"]
    assert set(values) == set(ref_values) >= {"tiny_choice/acc", "tiny_choice/acc_norm", "tiny_gen/exact_match", "tiny_rolling/word_perplexity"}
    for name, value in ref_values.items():
        assert values[name] == pytest.approx(value, rel=LOGPROB_TOLERANCE), name
    assert values["tiny_choice/acc"] == ref_values["tiny_choice/acc"]
    # the same choice picked and the same text generated, example by example
    picked = [(s["task"], s["index"], s["answer"]) for s in samples if s["task"] != "tiny_rolling"]
    assert picked == [(s["task"], s["index"], s["answer"]) for s in ref_samples if s["task"] != "tiny_rolling"]
    assert stderrs.keys() == ref_stderrs.keys()


def test_logprobs_of_every_runner_agree(world):
    models = {kind: runner(world, kind) for kind in ("hf-model", "genai-model", "onnx-model")}
    reference = models["hf-model"]
    for row in tone_rows(4):
        context = reference.encode(f"phrase {row['phrase']} tone :")
        for tone in TONES[:3]:
            continuation = reference.encode(tone, add_special_tokens=False)
            expected, greedy = reference.logprobs(context, continuation)
            for kind in ("genai-model", "onnx-model"):
                got, got_greedy = models[kind].logprobs(context, continuation)
                assert got == pytest.approx(expected, abs=LOGPROB_TOLERANCE), (kind, row, tone)
                assert got_greedy == greedy
    for model in models.values():
        model.close()


def test_results_name_task_and_metric_with_stderr_samples_and_progress(scored):
    values, stderrs, items, samples, progress = scored["hf-model"]
    assert {"tiny_choice/acc", "tiny_choice/acc_norm", "tiny_gen/exact_match"} <= set(stderrs)
    assert all(stderr >= 0 for stderr in stderrs.values())
    # each document's score, where their mean is the value (word_perplexity is aggregated otherwise)
    assert {key: len(scores) for key, scores in items.items()} == {key: 6 for key in values if "perplexity" not in key}
    assert all(sum(scores) / 6 == pytest.approx(values[key]) for key, scores in items.items())
    choice = [s for s in samples if s["task"] == "tiny_choice"]
    rows = tone_rows(6)
    assert [s["index"] for s in choice] == list(range(6))
    assert [s["reference"] for s in choice] == [r["tone"] for r in rows]
    assert all(s["answer"] in TONES and s["prompt"] == f"phrase {rows[s['index']]['phrase']} tone :" for s in choice)
    assert values["tiny_choice/acc"] == pytest.approx(sum(s["correct"] for s in choice) / 6)
    generated = [s for s in samples if s["task"] == "tiny_gen"]
    assert len(generated) == 6 and all("sad" not in s["answer"] for s in generated)  # cut at the stop string
    # progress over requests: six choices of six examples, then six generations
    assert (36, 36, "lm_eval: loglikelihood") in progress.calls
    assert (6, 6, "lm_eval: generate_until") in progress.calls


def test_matches_the_harness_hf_model(world):
    """The harness's own HFLM on the same folder: the same log-likelihoods and choices, the same text."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from slimops.passes._lm_eval_model import runner_lm

    ours = runner_lm(runner(world, "hf-model"), max_gen_toks=4)
    theirs = HFLM(pretrained=str(world.llama), device="cpu", batch_size=1)
    rows = tone_rows(6)
    pairs = [(f"phrase {r['phrase']} tone :", f" {tone}") for r in rows for tone in TONES]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=0) for pair in pairs]
    mine, reference = ours.loglikelihood(requests), theirs.loglikelihood(requests, disable_tqdm=True)
    assert [m[0] for m in mine] == pytest.approx([r[0] for r in reference], abs=LOGPROB_TOLERANCE)
    assert [m[1] for m in mine] == [r[1] for r in reference]
    until = {"until": ["<|im_end|>"], "max_gen_toks": 4, "do_sample": False}
    prompts = [Instance(request_type="generate_until", doc={}, arguments=(f"phrase {r['phrase']} tone :", until), idx=0) for r in rows]
    assert ours.generate_until(prompts) == theirs.generate_until(prompts, disable_tqdm=True)


def test_unknown_task_is_a_data_error_naming_it_and_where_it_looked(world):
    with pytest.raises(DataError, match=r"unknown lm_eval task 'tiny_choise'.*tasks.*did you mean tiny_choice") as caught:
        run_tasks(runner(world, "hf-model"), ["tiny_choise"], LmEvalSettings(include="tasks"), world.project, Progress())
    assert str((world.project / "tasks").resolve()) in str(caught.value)


def test_a_missing_data_file_is_a_data_error_with_the_path_read(world, tmp_path):
    (tmp_path / "tasks").mkdir()
    text = (world.project / "tasks" / "sub" / "choice.yaml").read_text()
    (tmp_path / "tasks" / "choice.yaml").write_text(text)  # data/rows.jsonl is not beside this copy
    with pytest.raises(DataError, match=r"tiny_choice.*no file .*tasks/data/rows.jsonl"):
        run_tasks(runner(world, "hf-model"), ["tiny_choice"], LmEvalSettings(include="tasks"), tmp_path, Progress())


def test_local_tasks_run_offline(world, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    import random

    import numpy as np

    before = random.getstate(), np.random.get_state()[1].tolist()
    values, _, counts, _ = run_tasks(runner(world, "hf-model"), ["tiny_choice"], LmEvalSettings(include="tasks", limit=2),
                                     world.project, Progress())
    assert "tiny_choice/acc" in values and len(counts["tiny_choice/acc"]) == 2
    # the harness seeds the global generators; they are put back for whatever runs next
    assert (random.getstate(), np.random.get_state()[1].tolist()) == before


def test_the_project_tasks_ship_and_run(world, tmp_path):
    """tone_choice and tone_name are found without `include`, and read their held-out phrases."""
    values, stderrs, _, samples = run_tasks(runner(world, "hf-model"), ["tone_choice", "tone_name"], LmEvalSettings(limit=2),
                                         tmp_path, Progress())
    assert {"tone_choice/acc", "tone_choice/acc_norm", "tone_name/exact_match"} <= set(values)
    shipped = Path(importlib.resources.files("slimops.configs")) / "data" / "lm_eval" / "tone_heldout.jsonl"
    first = [json.loads(line)["tone"] for line in shipped.read_text().splitlines()[:2]]
    assert [s["reference"] for s in samples if s["task"] == "tone_choice"] == first


def test_settings_and_task_names():
    assert task_names(["accuracy", "lm_eval:tone_choice", "my.metrics:f2", "lm_eval:hellaswag"]) == ["tone_choice", "hellaswag"]
    with pytest.raises(ValidationError):
        LmEvalSettings(limit=0)
    with pytest.raises(ValidationError):
        LmEvalSettings(fewshot=5)


def test_the_project_tasks_are_in_the_package_data():
    """`data/*` takes no subfolder: a wheel would ship configs/data/lm_eval/ only if pyproject names it."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["slimops.configs"]
    files = [p.relative_to(root / "configs").as_posix() for p in (root / "configs" / "data").rglob("*") if p.is_file()]
    # fnmatch's * crosses "/", setuptools' does not: compare folder by folder
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert not missing
