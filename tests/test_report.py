"""The report and the terminal read the trust data the evaluate pass writes (issue 18): intervals
beside each value, goal statuses, sample answers side by side and one chart of every model.

Each test writes a run.json (and predictions.jsonl files) by hand: no model runs here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from slimops.errors import GoalError
from slimops.report import write_report

METHODS = {"accuracy": "wilson", "latency_p50_ms": "runs"}
UNDECIDED = {"metric": "accuracy", "rule": "max_drop 0.05", "value": 0.5, "before": 0.75, "ok": False, "fatal": True,
             "why": "the drop's interval holds the limit", "status": "undecided", "n": 4, "interval": [-0.1, 0.6],
             "limit": 0.05, "test": "paired: McNemar exact p=0.50, Newcombe 95%", "needed": 412}
GOALS = [
    {"metric": "size_mb", "rule": "max 200", "value": 50.0, "before": 100.0, "ok": True, "why": "", "fatal": True,
     "status": "met", "n": None, "interval": None, "limit": 200, "test": "", "needed": None},
    {"metric": "latency_p50_ms", "rule": "max 10", "value": 20.0, "before": 50.0, "ok": False, "fatal": False,
     "why": "20 is above 10", "status": "missed", "n": None, "interval": [18.0, 22.0], "limit": 10, "test": "", "needed": None},
    UNDECIDED,
]


def _rows(answers: dict[int, tuple[str, bool | None]]) -> list[dict]:
    return [{"index": i, "prompt": f"<|im_start|>user\nquestion {i}<|im_end|>\n<|im_start|>assistant\n",
             "reference": f"label {i}", "label": f"label {i}", "answer": a, "correct": c} for i, (a, c) in answers.items()]


BASE = {0: ("label 0", True), 1: ("label 1", True), 2: ("label 2", True), 3: ("label 3", True)}
EVAL = {0: ("label 0", True), 1: ("label 1", True), 2: ("wrong", False), 3: ("label 3", True)}
INT4 = {3: ("other", False), 0: ("label 0", True), 1: ("label 1", True), 2: ("wrong", False)}  # another order


def _node(path: Path, metrics: dict, meta: dict | None = None, goals: list | None = None, rows: list | None = None) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    if rows is not None:
        (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"pass_name": "evaluate", "path": str(path), "metrics": metrics, "meta": meta or {}, "goals": goals or []}


def _write_run(out: Path, nodes: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"name": "t", "status": "ok", "nodes": nodes}))
    return out


@pytest.fixture
def three(tmp_path) -> Path:
    """A base model and two evaluations of it on tone/eval, with intervals, goals and predictions."""
    out = tmp_path / "out"
    base = {"accuracy": 0.75, "latency_p50_ms": 50.0, "size_mb": 100.0}
    data = {"data": "tone", "split": "eval", "samples": 4}
    base_spans = {"accuracy": [0.3, 0.95], "latency_p50_ms": [45.0, 55.0]}
    nodes = {
        "model": {"pass_name": "model", "path": str(tmp_path / "llama")},
        "eval.before": _node(out / "eval.before", base, {"role": "before", **data, "intervals": {"after": base_spans},
                                                                          "interval_methods": METHODS}, rows=_rows(BASE)),
        "eval": _node(out / "eval", {"before": base, "after": {"accuracy": 0.5, "latency_p50_ms": 20.0, "size_mb": 50.0}},
                      {**data, "interval_methods": METHODS, "intervals": {"before": base_spans, "after": {"accuracy": [0.15, 0.85], "latency_p50_ms": [18.0, 22.0]}}},
                      GOALS, rows=_rows(EVAL)),
        "eval_int4@laptop": _node(out / "laptop" / "eval_int4", {"before": base, "after": {"accuracy": 0.25, "latency_p50_ms": 4.0,
                                                                                           "size_mb": 25.0}}, data, rows=_rows(INT4)),
    }
    return _write_run(out, nodes)


def _sample_indices(md: str) -> list[str]:
    """The example numbers of the first sample table, in the order shown."""
    section = md.split("## Sample answers", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| (\d+) \|", section, re.M)


def test_metric_tables_show_each_value_with_its_interval(three):
    md_path, html_path = write_report(three)
    md, page = md_path.read_text(), html_path.read_text()
    assert "| accuracy | 0.75 [0.3, 0.95] | 0.5 [0.15, 0.85] | -0.25 (-33.3%) worse |" in md
    assert "<td>0.75 [0.3, 0.95]</td><td>0.5 [0.15, 0.85]</td>" in page
    assert "| size_mb | 100 | 50 |" in md  # a metric without an interval shows its value alone
    legend = "95% intervals; Wilson score (accuracy); 2.5th to 97.5th percentile over the latency runs (latency_p50_ms)"
    assert legend in md and legend in page
    # an evaluation without intervals (an older run.json) renders as it always did, with no legend
    assert "| accuracy | 0.75 | 0.25 | -0.5 (-66.7%) worse |" in md
    assert md.count("95% intervals;") == 1


def test_the_reference_column_shows_its_interval(tmp_path):
    metrics = {"before": {"f1": 0.5}, "after": {"f1": 0.6}, "reference": {"f1": 0.7}}
    intervals = {"after": {"f1": [0.5, 0.7]}, "reference": {"f1": [0.61, 0.79]}}
    out = _write_run(tmp_path / "out", {"eval": _node(tmp_path / "out" / "eval", metrics, {"intervals": intervals})})
    md = write_report(out)[0].read_text()
    assert "| f1 | 0.5 | 0.6 [0.5, 0.7] | +0.1 (+20.0%) better | 0.7 [0.61, 0.79] |" in md


def test_goals_show_status_interval_test_and_what_would_decide_them(three):
    md_path, html_path = write_report(three)
    md, page = md_path.read_text(), html_path.read_text()
    assert "| metric | goal | status | n | before | after | interval | limit | test | note |" in md
    assert "| size_mb | max 200 | met | - | 100 | 50 | - | 200 |  |  |" in md
    assert "| latency_p50_ms | max 10 | missed (warn) | - | 50 | 20 | [18, 22] | 10 |  | 20 is above 10 |" in md
    assert ("| accuracy | max_drop 0.05 | undecided | 4 | 0.75 | 0.5 | [-0.1, 0.6] | 0.05 | paired: McNemar exact p=0.50, "
            "Newcombe 95% | the drop's interval holds the limit; about 412 examples would decide it |") in md
    assert "about 412 examples would decide it" in page and "the drop&#x27;s interval" in page


def test_a_fatal_miss_and_an_old_goal_read_missed(tmp_path):
    old = {"metric": "perplexity", "rule": "max_increase 1%", "value": 12.0, "before": 10.0, "ok": False, "why": "rose 20%"}
    metrics = {"before": {"perplexity": 10.0}, "after": {"perplexity": 12.0}}
    out = _write_run(tmp_path / "out", {"eval": _node(tmp_path / "out" / "eval", metrics, goals=[old])})
    assert "| perplexity | max_increase 1% | MISSED | - | 10 | 12 | - | - |  | rose 20% |" in write_report(out)[0].read_text()


def test_samples_put_disagreements_first_and_align_models_by_index(three):
    md = write_report(three, samples=3)[0].read_text()
    assert "## Sample answers: tone (eval)" in md
    assert "3 of 4 examples shown, those where the models disagree first; 1 where they do (the base aside)" in md
    assert "| # | prompt | reference | base (eval.before) | eval | eval_int4@laptop |" in md
    # 3: the fine-tuned model and its export differ; 2: they agree but differ from the base; then the rest by index
    assert _sample_indices(md) == ["3", "2", "0"]
    # each row reads the same example from every model, whatever the order of their files
    assert "| 2 | user question 2 assistant | label 2 | label 2 ✓ | wrong ✗ | wrong ✗ |" in md
    assert "| 3 | user question 3 assistant | label 3 | label 3 ✓ | label 3 ✓ | other ✗ |" in md
    assert "<|im_start|>" not in md


def test_samples_default_to_ten_and_zero_hides_them(three):
    md = write_report(three)[0].read_text()
    assert "4 of 4 examples shown" in md and _sample_indices(md) == ["3", "2", "0", "1"]
    assert "Sample answers" not in write_report(three, samples=0)[0].read_text()


def test_samples_escape_html_and_shorten_long_prompts(tmp_path):
    out = tmp_path / "out"
    rows = [{"index": 0, "prompt": "instructions " * 40 + "<script>alert(1)</script> is 2 < 3?", "reference": "yes & no",
             "label": "yes", "answer": "<b>yes</b>", "correct": None}]
    _write_run(out, {"eval": _node(out / "eval", {"before": {}, "after": {"accuracy": 1.0}}, {"data": "d"}, rows=rows)})
    md_path, html_path = write_report(out)
    page = html_path.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; is 2 &lt; 3?" in page and "<script>" not in page
    assert "<td>&lt;b&gt;yes&lt;/b&gt;</td>" in page and "yes &amp; no" in page  # no mark: correct is null
    (row,) = [line for line in md_path.read_text().splitlines() if line.startswith("| 0 |")]
    prompt = row.split(" | ")[1]
    assert prompt.startswith("…") and prompt.endswith("is 2 < 3?") and len(prompt) < 170  # the question at its end is kept


def test_a_missing_or_broken_predictions_file_leaves_that_model_out(three):
    (three / "eval" / "predictions.jsonl").unlink()
    (three / "laptop" / "eval_int4" / "predictions.jsonl").write_bytes(b"\xff\xfe not json")
    md = write_report(three)[0].read_text()
    assert "| # | prompt | reference | base (eval.before) |" in md and "0 where they do (the base aside)" in md


def test_predictions_outside_the_output_folder_are_not_read(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    node = _node(elsewhere, {"before": {}, "after": {"accuracy": 1.0}}, {"data": "d"}, rows=_rows(BASE))
    out = _write_run(tmp_path / "out", {"eval": node})
    assert "Sample answers" not in write_report(out)[0].read_text()


def test_one_chart_compares_every_model(three):
    md_path, html_path = write_report(three)
    chart = three / "report" / "comparison.png"
    assert chart.read_bytes()[:4] == b"\x89PNG"
    assert "report/comparison.png" in md_path.read_text() and "report/comparison.png" in html_path.read_text()
    assert (three / "report" / "eval-metrics.png").is_file()  # the per-node charts stay beside it
    stamp = json.loads(chart.with_suffix(".json").read_text())
    assert stamp[:2] == ["latency_p50_ms", "accuracy"]
    assert [p[0] for p in stamp[2]] == ["base (eval.before)", "eval", "eval_int4@laptop"]
    drawn = chart.stat().st_mtime_ns
    write_report(three)
    assert chart.stat().st_mtime_ns == drawn  # the same numbers: not drawn again


def test_no_comparison_chart_for_one_model(tmp_path):
    metrics = {"before": {}, "after": {"accuracy": 0.5, "latency_p50_ms": 20.0}}
    out = _write_run(tmp_path / "out", {"eval": _node(tmp_path / "out" / "eval", metrics)})
    md = write_report(out)[0].read_text()
    assert not (out / "report" / "comparison.png").exists() and "comparison.png" not in md


def test_the_report_command_takes_a_sample_count(three, cli, capsys):
    code, out, _ = cli("report", three, "--samples", "3")
    assert code == 0 and "report.md" in out
    md = (three / "report.md").read_text()
    assert "3 of 4 examples shown" in md and len(_sample_indices(md)) == 3
    with pytest.raises(SystemExit) as stopped:  # a usage error: argparse exits
        cli("report", three, "--samples", "-1")
    assert stopped.value.code == 2 and "'-1' is not a count" in capsys.readouterr().err


def test_the_terminal_lists_missed_and_undecided_goals(capsys):
    from slimops.cli.results import print_goals

    print_goals(SimpleNamespace(nodes={"eval": SimpleNamespace(goals=GOALS)}))
    out = capsys.readouterr().out
    assert "goals missed or undecided" in out and "size_mb" not in out  # a met goal is not listed
    assert "latency_p50_ms max 10: missed, warns" in out
    assert "accuracy max_drop 0.05: undecided, fails the run" in out
    assert "n=4, interval [-0.1, 0.6] vs limit 0.05 (paired: McNemar exact p=0.50" in " ".join(out.split())
    assert "about 412 examples would decide it" in out
    print_goals(SimpleNamespace(nodes={"eval": SimpleNamespace(goals=[UNDECIDED])}))
    assert capsys.readouterr().out.startswith("goals undecided")


def test_the_terminal_table_shows_intervals_and_their_methods(capsys):
    from slimops.cli.results import print_metrics

    meta = {"intervals": {"after": {"accuracy": [0.819, 0.964]}}, "interval_methods": {"accuracy": "wilson"}}
    node = SimpleNamespace(metrics={"before": {"accuracy": 0.95}, "after": {"accuracy": 0.917}}, meta=meta)
    print_metrics(SimpleNamespace(nodes={"eval": node}))
    out = capsys.readouterr().out
    assert "0.917 [0.819, 0.964]" in " ".join(out.split()) and "Wilson score (accuracy)" in out


def test_goal_error_says_what_to_do_for_undecided_goals():
    err = GoalError([{"node": "eval", **UNDECIDED}])
    head, line = str(err).splitlines()
    assert head == "1 goal undecided (every node is cached; set on_undecided: warn or evaluate more examples):"
    assert line == "  eval: accuracy max_drop 0.05: the drop's interval holds the limit (undecided with 4 examples; about 412 would decide it)"
    missed = {"node": "eval", "metric": "perplexity", "rule": "max 5", "why": "7 is above 5", "status": "missed"}
    assert str(GoalError([missed])).startswith("1 goal missed (every node is cached; relax the goal or set on_miss: warn):")
    assert str(GoalError([missed, {"node": "eval", **UNDECIDED}])).startswith("2 goals not met, 1 missed and 1 undecided")


def test_two_evaluations_of_the_same_base_show_it_once(three):
    """eval.before and eval_int4.before with one key measured the same model: one base column, one base point."""
    body = json.loads((three / "run.json").read_text())
    for name in ("eval.before", "eval_int4.before"):
        body["nodes"][name] = {**body["nodes"]["eval.before"], "key": "same"}
    (three / "run.json").write_text(json.dumps(body))
    md = write_report(three)[0].read_text()
    assert "| # | prompt | reference | base (eval.before) | eval | eval_int4@laptop |" in md and "eval_int4.before" not in md.split("## Plan")[0]
    stamp = json.loads((three / "report" / "comparison.json").read_text())
    assert "eval_int4.before" not in json.dumps(stamp) and "eval.before" in json.dumps(stamp)


def test_lm_eval_samples_make_a_table_per_task(tmp_path):
    out = tmp_path / "out"
    nodes = {}
    for name, answers in (("eval", ["sad", "calm"]), ("eval_onnx@cpu", ["sad", "happy"])):
        folder = out / name.replace("@", "-")
        node = _node(folder, {"before": {}, "after": {"t/acc": 0.5}}, {"data": None})
        (folder / "lm_eval_samples.jsonl").write_text("".join(
            json.dumps({"task": "t", "index": i, "prompt": f"q{i}", "reference": "sad" if i == 0 else "calm", "answer": a,
                        "correct": float(a == ("sad" if i == 0 else "calm"))}) + "\n" for i, a in enumerate(answers)))
        nodes[name] = node
    md = write_report(_write_run(out, nodes))[0].read_text()
    assert "## Sample answers: lm_eval:t" in md and "| # | prompt | reference | eval | eval_onnx@cpu |" in md
    assert _sample_indices(md) == ["1", "0"]  # the export disagrees on document 1
    assert "| 1 | q1 | calm | calm ✓ | happy ✗ |" in md
