"""What a user writes is checked before anything runs: search ranges and the search block against
the pipeline, templates' braces, `--set KEY=null`, and the shortcut commands' own pipeline.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assets import eval_llama, tone_rows, write_eval_project, write_jsonl
from slimops.config import load_config
from slimops.errors import ConfigError

EVALUATE = "{type: evaluate, data: tone, metrics: [perplexity, accuracy], max_samples: 2}"


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return eval_llama(tmp_path_factory.mktemp("trust-llama") / "tiny")


def with_search(tmp_path: Path, llama: Path, search: str, evaluate: str = EVALUATE, extra: str = "perturb: {type: plugin:Perturb}") -> Path:
    path = write_eval_project(tmp_path, llama, evaluate, extra)
    path.write_text(path.read_text() + search)
    return path


def line_of(path: Path, text: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# A: {int: [a, b]} ranges


def test_an_int_range_validates(tmp_path, llama, cli):
    path = with_search(tmp_path, llama, "search:\n  space:\n    passes.eval.max_samples: {int: [1, 8]}\n  objectives: [{metric: accuracy}]\n")
    code, _, err = cli("validate", "--config", path)
    assert code == 0, err
    assert load_config(path).spec.search.space["passes.eval.max_samples"].int == (1, 8)


@pytest.mark.parametrize("form, fragment", [
    ("{int: [8, 1]}", "search.space.passes.eval.max_samples: int: need low < high (got 8, 1)"),
    ("{int: [1.5, 8]}", "search.space.passes.eval.max_samples.int[0]: Input should be a valid integer"),
    ("{in: [1, 8]}", "search.space.passes.eval.max_samples.in: unknown key; did you mean 'int'?"),
    ("3", "search.space.passes.eval.max_samples: give a list of values to try, or a range"),
], ids=["reversed", "fractional", "typo", "scalar"])
def test_a_bad_range_is_one_located_error(tmp_path, llama, cli, form, fragment):
    path = with_search(tmp_path, llama, f"search:\n  space:\n    passes.eval.max_samples: {form}\n  objectives: [{{metric: accuracy}}]\n")
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and f"{path}:{line_of(path, 'max_samples: ' + form)} {fragment}" in err, err
    assert "1 error in the pipeline config" in err  # not also "not a valid list" for the other form


def test_an_olive_int_search_parameter_validates(tmp_path, llama):
    write_jsonl(tmp_path / "tone.jsonl", tone_rows(60))
    text = (Path(__file__).parent / "olive" / "search.yaml").read_text()
    text = text.replace("smollm2-135m", str(llama)).replace("r: {type: choice, values: [4, 8]}", "r: {type: int, low: 4, high: 8}")
    assert "{type: int, low: 4, high: 8}" in text
    (tmp_path / "olive.yaml").write_text(text)
    assert load_config(tmp_path / "olive.yaml").spec.search.space["passes.lora.r"].int == (4, 8)


# B: the search block against the pipeline


SPACE = "search:\n  space:\n    passes.perturb.scale: [1.0, 2.0]\n"


@pytest.mark.parametrize("search, at, fragment", [
    (SPACE + "  objectives: [{metric: acuracy}]\n", "objectives:",
     "search.objectives[0].metric: no evaluate node reports 'acuracy' (they report accuracy, perplexity); did you mean 'accuracy'?"),
    (SPACE + "  objectives: [{metric: f1, node: eval}]\n", "objectives:",
     "search.objectives[0].metric: node 'eval' does not report 'f1' (it reports accuracy, perplexity); add it to the evaluate pass's metrics"),
    (SPACE + "  objectives: [{metric: latency}]\n", "objectives:",
     "search.objectives[0].metric: no evaluate node reports 'latency' (they report accuracy, perplexity); 'latency' stands for ttft_ms"),
    (SPACE + "  objectives: [{metric: accuracy, node: evl}]\n", "objectives:",
     "search.objectives[0].node: no evaluate node 'evl'; did you mean 'eval'?"),
    ("search:\n  space:\n    passes.perturb.nope: [1, 2]\n  objectives: [{metric: accuracy}]\n", "nope",
     "search.space.passes.perturb.nope: unknown key; allowed: scale"),
    ("search:\n  space:\n    passes.zz.scale: [1, 2]\n  objectives: [{metric: accuracy}]\n", "zz",
     "search.space.passes.zz.scale: no pass 'zz' in the file"),
    ("search:\n  space:\n    passes.perturb.scale:\n      - 1.0\n      - big\n  objectives: [{metric: accuracy}]\n", "- big",
     "search.space.passes.perturb.scale[1]: Input should be a valid number"),
    ("search:\n  space:\n    passes.eval.max_samples: {uniform: [1, 4]}\n  objectives: [{metric: accuracy}]\n", "uniform",
     "search.space.passes.eval.max_samples: uniform gives values between its ends, such as 2.5"),
    ("search:\n  space:\n    passes.perturb.scal: {uniform: [1, 4]}\n  objectives: [{metric: accuracy}]\n", "scal",
     "search.space.passes.perturb.scal: unknown key; did you mean 'scale'?"),
], ids=["metric-typo", "metric-not-listed", "metric-group", "unknown-node", "unknown-param", "unknown-pass", "wrong-type",
        "float-range-over-int", "range-over-unknown-param"])
def test_validate_checks_the_search_against_the_pipeline(tmp_path, llama, cli, search, at, fragment):
    path = with_search(tmp_path, llama, search)
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and f"{path}:{line_of(path, at)} {fragment}" in err, err
    assert "1 error in the pipeline config" in err  # said once, not once per value


def test_objectives_need_an_evaluate_pass(project, cli):
    path = project.write("passes:\n  a: {type: fake}\nsearch:\n  space: {passes.a.value: [x, y]}\n  objectives: [{metric: accuracy}]\n")
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and f"{path}:5 search.objectives: objectives read an evaluate pass's metrics, and this pipeline has none" in err


def test_a_per_target_evaluation_is_named_with_its_target(tmp_path, llama, cli):
    search = "targets: {a: cpu, b: cpu-int4}\n" + SPACE + "  objectives: [{metric: accuracy, node: eval}]\n"
    path = with_search(tmp_path, llama, search, extra="perturb: {type: plugin:PerTarget}")
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and "search.objectives[0].node: 'eval' runs once per target: name one of eval@a, eval@b" in err
    path.write_text(path.read_text().replace("node: eval}", "node: eval@b}"))
    code, _, err = cli("validate", "--config", path)
    assert code == 0, err


@pytest.mark.parametrize("evaluate, objective", [
    ("{type: evaluate, data: tone, max_samples: 2}", "f1"),  # default metrics follow the model's task, known when it runs
    ("{type: evaluate, data: tone, metrics: [perplexity, 'lm_eval:hellaswag'], max_samples: 2}", "hellaswag/acc_norm"),
    ("{type: evaluate, data: tone, metrics: [perplexity], max_samples: 2}", "bleu"),  # the space changes its metrics
], ids=["default-metrics", "lm-eval-task", "searched-metrics"])
def test_a_metric_known_only_at_run_time_is_not_refused(tmp_path, llama, cli, evaluate, objective):
    space = "    passes.eval.metrics: [[perplexity], [bleu]]\n" if objective == "bleu" else "    passes.perturb.scale: [1.0, 2.0]\n"
    path = with_search(tmp_path, llama, f"search:\n  space:\n{space}  objectives: [{{metric: {objective}}}]\n", evaluate)
    code, _, err = cli("validate", "--config", path)
    assert code == 0, err


def test_run_refuses_a_bad_search_before_any_trial(tmp_path, llama, cli):
    path = with_search(tmp_path, llama, SPACE + "  objectives: [{metric: acuracy}]\n")
    code, _, err = cli("run", "--config", path, "--quiet")
    assert code == 2 and "did you mean 'accuracy'?" in err and "trial 0" not in err
    assert not (tmp_path / "out" / "trials").exists()
    path.write_text(path.read_text().replace("passes.perturb.scale", "passes.perturb.nope").replace("acuracy", "accuracy"))
    code, _, err = cli("run", "--config", path, "--quiet")
    assert code == 2 and f"{path}:{line_of(path, 'nope')} search.space.passes.perturb.nope: unknown key" in err and "--set" not in err


# C: templates' braces


TEMPLATE_PROJECT = """name: t
model: {{path: "{model}"}}
data:
  tone:
    files: tone.jsonl
    splits: {{train: "[:3]", eval: "[3:]"}}
    prompt: "user {{phrase}} assistant"
    response: {response}
passes:
  eval: {{type: evaluate, data: tone, metrics: [accuracy], max_samples: 2}}
"""


@pytest.mark.parametrize("response, fragment", [
    ('"{tone"', "a '{' is never closed"),
    ('"{tone}}"', "a '}' closes nothing"),
    ('"{tone:>5}"', "'{tone:>5}' has a format spec (':>5')"),
    ('"{tone!r}"', "'{tone!r}' has a conversion ('!r')"),
    ('"{tone.x}"', "'{tone.x}' reads an attribute or item of a field"),
    ('"{}"', "'{}' names no field"),
    ('"{0}"', "'{0}' is a position, not a field name"),
], ids=["unclosed", "stray-close", "format-spec", "conversion", "attribute", "empty", "positional"])
def test_a_template_with_more_than_plain_fields_is_a_located_error(tmp_path, llama, cli, response, fragment):
    write_eval_project(tmp_path, llama, EVALUATE)  # its tone.jsonl
    path = tmp_path / "t.yaml"
    path.write_text(TEMPLATE_PROJECT.format(model=llama, response=response))
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and f"{path}:8 data.tone.response: {fragment}; a placeholder is a field name in braces" in err, err
    assert "write {{ and }} for a literal brace" in err and "slimops bug" not in err


def test_doubled_braces_are_literal_text(tmp_path, llama, cli):
    write_eval_project(tmp_path, llama, EVALUATE)
    path = tmp_path / "t.yaml"
    path.write_text(TEMPLATE_PROJECT.format(model=llama, response='"{{{{as json}}}} {tone}"'))
    code, _, err = cli("validate", "--config", path)
    assert code == 0, err


def test_a_literal_brace_after_the_answer_is_where_it_stops():
    from types import SimpleNamespace

    from slimops.passes._answers import answer_template, prompt_and_reference

    spec = SimpleNamespace(template="{phrase} => {tone} {{tone}}", prompt=None, response=None, label=None, messages=None)
    assert answer_template(spec) == ("tone", "{tone}")  # the text after the field, not a piece of '{{tone}}'
    assert prompt_and_reference({"phrase": "hi", "tone": "happy"}, spec) == ("hi => ", "happy", "happy")


def test_finetune_names_a_bad_text_template_at_its_line(tmp_path, llama, cli):
    data = write_jsonl(tmp_path / "tone.jsonl", tone_rows(8))
    code, _, err = cli("finetune", "-m", llama, "--data_files", data, "--text_template", "{phrase", "-o", tmp_path / "ft")
    assert code == 2 and "data.train_data.template: a '{' is never closed" in err and "slimops bug" not in err


# D: --set KEY=null


NULLABLE = """
name: t
data:
  tone: {type: jsonl, files: tone.jsonl, prompt: "{phrase}", response: "{tone}"}
targets:
  lap: {extends: cpu-int4, quant_format: qdq}
passes:
  a: {type: fake, value: hi}
"""


@pytest.mark.parametrize("override, read, value", [
    ("targets.lap.quant_format=null", lambda c: c.spec.targets["lap"].quant_format, None),
    ("data.tone.prompt=null", lambda c: c.spec.data["tone"].prompt, None),
    ("data.tone.prompt=~", lambda c: c.spec.data["tone"].prompt, None),
    ('data.tone.prompt="null"', lambda c: c.spec.data["tone"].prompt, "null"),
    ("data.tone.prompt='{phrase}: '", lambda c: c.spec.data["tone"].prompt, "{phrase}: "),
    ("name=null", lambda c: c.name, "null"),  # a text field that cannot be null keeps the text
    ("passes.a.value=null", lambda c: c.passes["a"].params.value, "null"),
], ids=["optional-literal", "optional-text", "tilde", "quoted-null", "quoted-text", "required-text", "param-text"])
def test_set_null_clears_an_optional_field(project, override, read, value):
    (project.root / "tone.jsonl").write_text('{"phrase": "hi", "tone": "happy"}\n')
    assert read(load_config(project.write(NULLABLE), [override])) == value


def test_a_searched_text_value_that_yaml_would_read_otherwise_reaches_its_trial_as_text(project):
    from slimops.config.search import override

    path = project.write(NULLABLE)
    (project.root / "tone.jsonl").write_text('{"phrase": "hi", "tone": "happy"}\n')
    for value in ("010", "null", "yes"):
        assert load_config(path, [override("passes.a.value", value)]).passes["a"].params.value == value


# E: the shortcut commands' pipeline.yaml


def test_a_shortcut_keeps_a_different_pipeline_yaml_and_reruns_its_own(tmp_path, llama, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "tone.jsonl", tone_rows(8))
    flags = ["finetune", "-m", llama, "--data_files", data, "--text_template", "{phrase} => {tone}", "--max_steps", "1",
             "--no_merge", "-o", "out", "-q"]
    code, _, err = cli(*flags)
    assert code == 0, err
    written = (tmp_path / "out" / "pipeline.yaml").read_text()
    code, _, err = cli(*flags)  # the same command again: the same file, every node from the cache
    assert code == 0, err
    assert all(node["cached"] for node in json.loads((tmp_path / "out" / "run.json").read_text())["nodes"].values())

    flags[flags.index("--max_steps") + 1] = "2"  # other flags would write another pipeline
    code, _, err = cli(*flags)
    assert code == 2 and "out/pipeline.yaml: holds another pipeline than this command writes" in err
    assert "give another folder with -o to keep it, or add --force to replace it" in err
    assert (tmp_path / "out" / "pipeline.yaml").read_text() == written

    edited = written.replace("max_steps: 1", "max_steps: 3")  # what the failure message invites
    (tmp_path / "out" / "pipeline.yaml").write_text(edited)
    code, _, err = cli(*flags[: flags.index("--max_steps") + 1], "1", *flags[flags.index("--max_steps") + 2:])
    assert code == 2 and (tmp_path / "out" / "pipeline.yaml").read_text() == edited
    code, _, err = cli(*flags, "--force")  # asked for: the command's own pipeline replaces the edited one
    assert code == 0, err
    assert "max_steps: 2" in (tmp_path / "out" / "pipeline.yaml").read_text()


def test_emit_config_prints_only_a_pipeline_slimops_would_run(tmp_path, llama, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "tone.jsonl", tone_rows(8))
    flags = ["finetune", "-m", llama, "--data_files", data, "--text_template", "{phrase} => {tone}", "--emit-config"]
    code, out, err = cli(*flags, "--lora_r", "0")
    assert code == 2 and out == "" and "passes.finetune.r: Input should be greater than or equal to 1" in err
    code, out, err = cli(*flags, "--target_modules", ",,")
    assert code == 2 and out == "" and "--target_modules: ',,' names no module" in err
    code, out, err = cli(*flags, "--target_modules", "q_proj, v_proj")
    assert code == 0 and "- q_proj\n    - v_proj" in out, err
