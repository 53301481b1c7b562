"""Search: a four-trial grid on a tiny llama completes, reuses its cached prefix, names its best."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assets import eval_llama as tiny_llama, write_eval_project as write_project

SEARCH = """
search:
  space:
    passes.perturb.scale: [1.0, 1.5, 3.0, 0.5]
  strategy: grid
  objectives: [{metric: perplexity}]
"""


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama") / "tiny")


def test_four_trial_grid_search(tmp_path, llama, cli):
    evaluate = "{type: evaluate, data: tone, metrics: [perplexity], max_samples: 2}"
    path = write_project(tmp_path, llama, evaluate, "base: {type: plugin:Perturb, scale: 1.1}\nperturb: {type: plugin:Perturb}")
    path.write_text(path.read_text() + SEARCH)
    code, out, err = cli("run", "--config", path, "--quiet")
    assert code == 0, err
    assert "space of 4 points, 4 trials (grid)" in err and "no cost estimate yet" in err  # nothing has run with this cache

    body = json.loads((tmp_path / "out" / "trials.json").read_text())
    trials = body["trials"]
    assert len(trials) == 4 and all(t["status"] == "ok" for t in trials)
    assert sorted(t["params"]["passes.perturb.scale"] for t in trials) == [0.5, 1.0, 1.5, 3.0]
    # the prefix (base pass, and the input model's evaluation) runs once; later trials hit the cache
    first = min(trials, key=lambda t: t["number"])
    for trial in trials:
        run_json = json.loads((Path(trial["output_dir"]) / "run.json").read_text())
        prefix_cached = run_json["nodes"]["base"]["cached"] and run_json["nodes"]["eval.before"]["cached"]
        assert prefix_cached == (trial is not first)
        assert not run_json["nodes"]["perturb"]["cached"]

    # the best trial has the lowest perplexity, and its artifacts are the output folder's
    best = min(trials, key=lambda t: t["values"][0])
    assert body["best"] == best["number"] and best["best"]
    assert f"best: trial {best['number']}" in err
    main = json.loads((tmp_path / "out" / "eval" / "metrics.json").read_text())
    assert main["after"]["perplexity"] == pytest.approx(best["values"][0])
    assert "trials" in out and "best" in out
    assert "## Search trials" in (tmp_path / "out" / "report.md").read_text()

    # again: every node has run with this cache, so the estimate comes from its timings
    code, _, err = cli("run", "--config", path, "--quiet")
    assert code == 0 and "estimated 0 s for the first trial" in err


def test_two_objectives_give_a_pareto_front():
    from slimops.search import Objective, TrialResult, pareto

    objectives = [Objective(metric="accuracy"), Objective(metric="latency_p50_ms")]
    trials = [TrialResult(i, {}, values, "ok", 0, 0, 0, "") for i, values in
              enumerate([[0.9, 30.0], [0.8, 10.0], [0.7, 20.0], [0.9, 40.0]])]
    # trial 2 is worse than 1 on both; trial 3 ties 0 on accuracy but is slower
    assert pareto(trials, objectives) == [0, 1]


def test_bad_search_keys_are_config_errors(tmp_path, llama, cli):
    evaluate = "{type: evaluate, data: tone, metrics: [perplexity], max_samples: 2}"
    path = write_project(tmp_path, llama, evaluate, "perturb: {type: plugin:Perturb}")
    path.write_text(path.read_text() + SEARCH.replace("passes.perturb.scale", "passes.perturb.scal"))
    code, _, err = cli("run", "--config", path, "--quiet")
    assert code == 2 and "scal" in err and "did you mean 'scale'" in err
    path.write_text(path.read_text().replace("passes.perturb.scal: [1.0, 1.5, 3.0, 0.5]", "model.scale: [1]"))
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and "must be passes.NAME.PARAM" in err


def test_no_search_runs_the_file_once(tmp_path, llama, cli):
    evaluate = "{type: evaluate, data: tone, metrics: [size_mb], max_samples: 2}"
    path = write_project(tmp_path, llama, evaluate, "perturb: {type: plugin:Perturb}")
    path.write_text(path.read_text() + SEARCH)
    code, _, err = cli("run", "--config", path, "--quiet", "--no-search")
    assert code == 0 and "search:" not in err
    assert not (tmp_path / "out" / "trials.json").exists() and (tmp_path / "out" / "eval" / "metrics.json").is_file()


def test_a_search_where_no_trial_meets_its_goals_fails(tmp_path, llama, cli):
    evaluate = "{type: evaluate, data: tone, metrics: [perplexity, size_mb], max_samples: 2, goals: {size_mb: {max: 0.0001}}}"
    path = write_project(tmp_path, llama, evaluate, "perturb: {type: plugin:Perturb}")
    path.write_text(path.read_text() + SEARCH.replace("[1.0, 1.5, 3.0, 0.5]", "[1.0, 2.0]"))
    code, out, err = cli("run", "--config", path, "--quiet")
    assert code == 3 and "no trial met every goal" in err and "goals missed" in out
    body = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert [t["status"] for t in body["trials"]] == ["goals missed", "goals missed"]
    assert body["best"] is not None


def test_random_search_samples_ranges_within_bounds(tmp_path, llama, cli):
    evaluate = "{type: evaluate, data: tone, metrics: [perplexity], max_samples: 2}"
    path = write_project(tmp_path, llama, evaluate, "perturb: {type: plugin:Perturb}")
    path.write_text(path.read_text() + SEARCH.replace("[1.0, 1.5, 3.0, 0.5]", "{log_uniform: [0.00001, 2.0]}").replace("strategy: grid", "strategy: random\n  trials: 2\n  seed: 3"))
    code, _, err = cli("run", "--config", path, "--quiet")
    assert code == 0, err
    assert "space of continuous points, 2 trials (random)" in err
    trials = json.loads((tmp_path / "out" / "trials.json").read_text())["trials"]
    scales = [t["params"]["passes.perturb.scale"] for t in trials]
    assert all(0.00001 <= s <= 2.0 for s in scales) and scales[0] != scales[1]
    # the value the trial ran with is the one recorded (a float survives the override's YAML)
    for trial in trials:
        run_json = json.loads((Path(trial["output_dir"]) / "run.json").read_text())
        assert run_json["overrides"]["passes.perturb.scale"] == pytest.approx(trial["params"]["passes.perturb.scale"])
