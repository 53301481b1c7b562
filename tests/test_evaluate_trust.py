"""The evaluate pass keeps its evidence: intervals, each example's answer and score, goals decided by them.

Runs on the tiny random llama of tests/assets.py; the expected intervals are recomputed from what
the pass wrote for each example, with slimops.passes._stats.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slimops
from assets import eval_llama as tiny_llama, eval_rows, hide_distribution, quiet, write_eval_project as write_project
from slimops.passes import _metrics as M
from slimops.passes import _stats as S


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama") / "tiny")


EVAL = ("{type: evaluate, data: tone, metrics: [accuracy, f1, perplexity, latency, size_mb], max_samples: 6, max_new_tokens: 3, "
        "latency_runs: 3, warmup: 0, goals: {accuracy: {max_drop: 0.5}}}")


def test_intervals_predictions_and_scores_are_kept(tmp_path, llama):
    path = write_project(tmp_path, llama, EVAL, "perturb: {type: plugin:Perturb, scale: 3.0}", data_rows=eval_rows(9))
    result = slimops.run(path, display=quiet())
    node = result["eval"]
    intervals, methods = node.meta["intervals"], node.meta["interval_methods"]
    assert methods == {"accuracy": "wilson", "f1": "bootstrap", "perplexity": "bootstrap", "ttft_ms": "runs",
                       "latency_p50_ms": "runs", "latency_p90_ms": "runs", "tokens_per_s": "runs"}
    assert set(intervals) == {"after", "before"} and "size_mb" not in intervals["after"]
    # the before node's own intervals are this node's before intervals
    assert intervals["before"] == result["eval.before"].meta["intervals"]["after"]

    rows = [json.loads(line) for line in (Path(node.path) / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(6))
    assert all(set(r) == {"index", "prompt", "reference", "label", "answer", "correct"} for r in rows)
    assert [r["correct"] for r in rows] == [M.accuracy([r["answer"]], [r["label"]]) == 1.0 for r in rows]
    right = sum(r["correct"] for r in rows)
    assert node.metrics["after"]["accuracy"] == right / 6
    assert intervals["after"]["accuracy"] == pytest.approx(list(S.wilson(right, 6)))
    low, high = intervals["after"]["perplexity"]
    assert low <= node.metrics["after"]["perplexity"] <= high

    scores = json.loads((Path(node.path) / "scores.json").read_text())
    assert scores["after"]["items"]["accuracy"] == [r["correct"] for r in rows]
    assert scores["before"]["index"] == scores["after"]["index"] == list(range(6))
    # perplexity over the kept per-example (nll, tokens) is the reported perplexity
    assert M.STATISTICS["perplexity"](scores["after"]["items"]["perplexity"]) == pytest.approx(node.metrics["after"]["perplexity"])

    (goal,) = node.goals
    assert goal["test"].startswith("paired: McNemar") and goal["n"] == 6 and goal["limit"] == 0.5
    assert goal["status"] in ("met", "missed", "undecided") and goal["ok"] == (goal["status"] == "met")
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["nodes"]["eval"]["meta"]["intervals"] == intervals
    assert run_json["nodes"]["eval"]["goals"][0]["status"] == goal["status"]


def test_an_undecided_goal_warns_by_default_and_fails_when_asked(tmp_path, llama, cli):
    # on two examples every accuracy's Wilson interval holds 0.4 (0/2: 0 to 0.66, 1/2: 0.09 to 0.91, 2/2: 0.34 to 1)
    evaluate = ("{type: evaluate, data: tone, metrics: [accuracy], max_samples: 2, max_new_tokens: 2, inputs: [model], "
                "goals: {accuracy: {min: 0.4}}}")
    path = write_project(tmp_path, llama, evaluate)
    code, out, err = cli("run", "--config", path, "--quiet")
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    (goal,) = run_json["nodes"]["eval"]["goals"]
    assert goal["status"] == "undecided" and goal["n"] == 2 and goal["needed"] > 2
    assert code == 0 and "undecided" in out and run_json["status"] == "ok"
    # on_undecided is a goal setting: the evaluation is reused, and the run now fails
    code, out, err = cli("run", "--config", path, "--quiet", "--set", "passes.eval.on_undecided=fail")
    assert code == 3 and "undecided" in err
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["nodes"]["eval"]["cached"] and run_json["status"] == "goals undecided"


def test_lm_eval_tasks_without_the_extra_are_a_plan_error(tmp_path, llama, cli, monkeypatch):
    hide_distribution(monkeypatch, "lm-eval")
    path = write_project(tmp_path, llama, "{type: evaluate, metrics: ['lm_eval:tone_choice']}")
    code, _, err = cli("plan", "--config", path)
    assert code == 2 and "lm-eval" in err and "pip install 'slimops[eval]'" in err and "Traceback" not in err
    path = write_project(tmp_path, llama, "{type: evaluate, metrics: ['lm_eval:']}")
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and "names no task" in err


def test_lm_eval_tasks_in_a_pipeline_report_stderr_intervals_and_decide_goals(tmp_path, llama):
    from assets import EVAL_TONES

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "choice.yaml").write_text(
        "task: tiny_choice\ndataset_path: json\ndataset_kwargs: {data_files: {test: ../tone.jsonl}}\ntest_split: test\n"
        f"output_type: multiple_choice\ndoc_to_text: \"user {{{{phrase}}}} assistant \"\ndoc_to_choice: {json.dumps(EVAL_TONES)}\n"
        "doc_to_target: tone\nmetric_list: [{metric: acc}]\n")
    evaluate = ("{type: evaluate, metrics: ['lm_eval:tiny_choice', size_mb], lm_eval: {include: tasks}, inputs: [model], "
                "goals: {tiny_choice/acc: {min: 0.0}}}")
    path = write_project(tmp_path, llama, evaluate)
    with path.open("a") as handle:  # the same model again, against the first as its reference
        handle.write("  again: {type: evaluate, metrics: ['lm_eval:tiny_choice'], lm_eval: {include: tasks}, inputs: [model], "
                     "reference: eval, goals: {tiny_choice/acc: {max_drop_from_reference: 0.9}}}\n")
    result = slimops.run(path, display=quiet())
    node = result["eval"]
    acc = node.metrics["after"]["tiny_choice/acc"]
    stderr = json.loads((Path(node.path) / "scores.json").read_text())["after"]["stderr"]["tiny_choice/acc"]
    assert node.meta["interval_methods"]["tiny_choice/acc"] == "stderr"
    # lm-eval's stderr, kept within 0..1 for a share
    assert node.meta["intervals"]["after"]["tiny_choice/acc"] == pytest.approx([max(0, acc - S.Z95 * stderr), min(1, acc + S.Z95 * stderr)])
    (goal,) = node.goals
    assert goal["status"] == "met" and goal["test"] == "lm-eval stderr, 95%" and goal["n"] == 9
    # the same model on the same documents: paired on each document's score, so the drop is pinned near 0
    (against,) = result["again"].goals
    assert against["test"].startswith("paired: McNemar exact p=1") and against["n"] == 9
    items = json.loads((Path(node.path) / "scores.json").read_text())["after"]["items"]["tiny_choice/acc"]
    assert against["interval"] == pytest.approx([-x for x in reversed(S.newcombe(items, items))])
    rows = (Path(node.path) / "lm_eval_samples.jsonl").read_text().splitlines()
    assert len(rows) == 9 and json.loads(rows[0])["task"] == "tiny_choice"
