"""`slimops validate` reads the data: each problem located at the `data:` key it concerns, naming the
data file and its line; and the engine's check and the passes' loader agree on the fields a spec needs.

Every case is a row: a tiny data file and pipeline, the key the message is located at, and the message.
The pipelines fine-tune and evaluate the registered `smollm2-135m`: validate builds the plan without
running anything, so no model is loaded.
"""

from __future__ import annotations

import json

import pytest

from slimops.config import parse_config
from slimops.config.data import data_issues, needed_columns, needed_fields, template_fields
from slimops.config.spec import DataSpec
from slimops.errors import DataError
from slimops.passes import _data as datalib
from slimops.templates import template_dir

ROWS = "".join(json.dumps({"phrase": f"phrase {i}", "tone": "calm"}) + "\n" for i in range(10))
TONES = "".join(json.dumps({"phrase": f"phrase {i}", "tones": "calm"}) + "\n" for i in range(10))
CHAT = json.dumps({"chat": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "calm"}]}) + "\n"
FINETUNE = "  ft: {type: lora, data: tone, max_steps: 2}\n"
EVALUATE = "  ev: {type: evaluate, data: tone}\n"
TEMPLATE = '    template: "{phrase} -> {tone}"\n'


def _parquet(columns: list[str]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({name: ["a", "b"] for name in columns}), buffer)
    return buffer.getvalue()


# id, {file: content}, the lines under `data: tone:`, passes, the key located at, the message
CASES = [
    ("template-field", {"d.jsonl": TONES}, "    files: d.jsonl\n" + TEMPLATE, FINETUNE,
     "data.tone.template", "field 'tone' is missing from d.jsonl:1 (it has: phrase, tones); did you mean 'tones'?"),
    ("response-field-line", {"d.jsonl": ROWS + '{"phrase": "no tone"}\n'},
     '    files: d.jsonl\n    prompt: "{phrase} ->"\n    response: " {tone}"\n', FINETUNE,
     "data.tone.response", "field 'tone' is missing from d.jsonl:11 (it has: phrase)"),
    ("null-field", {"d.jsonl": '{"phrase": "a", "tone": null}\n'}, "    files: d.jsonl\n" + TEMPLATE, FINETUNE,
     "data.tone.template", "field 'tone' is null in d.jsonl:1"),
    ("text-column", {"d.jsonl": ROWS}, "    files: d.jsonl\n    text: body\n", EVALUATE.replace("data: tone", "data: tone, split: train"),
     "data.tone.text", "field 'body' is missing from d.jsonl:1 (it has: phrase, tone)"),
    ("messages-column", {"d.jsonl": ROWS}, "    files: d.jsonl\n    messages: chat\n", FINETUNE,
     "data.tone.messages", "field 'chat' is missing from d.jsonl:1"),
    ("messages-shape", {"d.jsonl": CHAT + '{"chat": "hello"}\n'}, "    files: d.jsonl\n    messages: chat\n", FINETUNE,
     "data.tone.messages", "d.jsonl:2: 'chat' must be a non-empty list of {role, content} objects"),
    ("prompt-without-response", {"d.jsonl": ROWS}, '    files: d.jsonl\n    prompt: "{phrase}"\n', FINETUNE,
     "data.tone", "'prompt' and 'response' go together; set both, or use 'template' (pass 'ft' reads it)"),
    ("empty-file", {"d.jsonl": ""}, "    files: d.jsonl\n" + TEMPLATE, FINETUNE,
     "data.tone.files", "d.jsonl is empty: it holds no records"),
    ("blank-file", {"d.jsonl": "\n\n"}, "    files: d.jsonl\n" + TEMPLATE, FINETUNE,
     "data.tone.files", "d.jsonl is empty: it holds no records"),
    ("empty-split", {"d.jsonl": ROWS}, '    files: d.jsonl\n    splits: {train: "[:95%]", eval: "[95%:]"}\n' + TEMPLATE, FINETUNE,
     "data.tone.splits.eval", "'[95%:]' selects no record of the 10 in d.jsonl (it means [10:10]); widen the slice or add data"),
    ("split-not-in-files", {"a.jsonl": ROWS}, '    files: {train: a.jsonl}\n    splits: {eval: "test[:2]"}\n' + TEMPLATE, FINETUNE,
     "data.tone.splits.eval", "names 'test', which is not a key of data.tone.files (train)"),
    ("split-name-without-mapping", {"d.jsonl": ROWS}, '    files: d.jsonl\n    splits: {train: "[:5]", eval: "test[5:]"}\n' + TEMPLATE, FINETUNE,
     "data.tone.splits.eval", "names 'test', but data.tone.files is not a mapping of split names to files"),
    ("pass-reads-undefined-split", {"d.jsonl": ROWS}, "    files: d.jsonl\n" + TEMPLATE, EVALUATE,
     "passes.ev.data", "reads split 'eval' of data 'tone', which defines: train; add it under data.tone.splits"),
    ("jsonl-invalid", {"d.jsonl": '{"phrase": "a", "tone": "b"}\n{"phrase": \n'}, "    files: d.jsonl\n" + TEMPLATE, FINETUNE,
     "data.tone.files", "d.jsonl:2: not valid JSON (Expecting value); each line of a .jsonl file is one JSON object"),
    ("jsonl-not-object", {"d.jsonl": '{"phrase": "a", "tone": "b"}\n["a", "b"]\n'}, "    files: d.jsonl\n" + TEMPLATE, FINETUNE,
     "data.tone.files", "d.jsonl:2: expected a JSON object per line, got list"),
    ("json-invalid", {"d.json": '[\n  {"phrase": "a", "tone": "b"},\n  {"phrase": "c" "tone": "d"}\n]\n'},
     "    type: json\n    files: d.json\n" + TEMPLATE, FINETUNE,
     "data.tone.files", "d.json:3:18: not valid JSON (Expecting ',' delimiter)"),
    ("json-not-objects", {"d.json": "[1, 2]"}, "    type: json\n    files: d.json\n" + TEMPLATE, FINETUNE,
     "data.tone.files", "d.json: expected a list of objects, an object holding one such list, or an object of columns"),
    ("json-field", {"d.json": json.dumps([{"phrase": "a", "tone": "b"}, {"phrase": "c"}])}, "    type: json\n    files: d.json\n" + TEMPLATE, FINETUNE,
     "data.tone.template", "field 'tone' is missing from record 1 of d.json (it has: phrase)"),
    ("csv-column", {"d.csv": "phrase,tones\na,calm\n"}, "    type: csv\n    files: d.csv\n" + TEMPLATE, FINETUNE,
     "data.tone.template", "field 'tone' is missing from the header of d.csv (it has: phrase, tones); did you mean 'tones'?"),
    ("csv-header-only", {"d.csv": "phrase,tone\n"}, "    type: csv\n    files: d.csv\n" + TEMPLATE, FINETUNE,
     "data.tone.files", "d.csv is empty: it holds no records"),
    ("parquet-column", {"d.parquet": lambda: _parquet(["phrase", "label"])}, "    type: parquet\n    files: d.parquet\n" + TEMPLATE, FINETUNE,
     "data.tone.template", "field 'tone' is missing from the schema of d.parquet (it has: phrase, label)"),
    ("parquet-corrupt", {"d.parquet": b"PAR1 not really"}, "    type: parquet\n    files: d.parquet\n" + TEMPLATE, FINETUNE,
     "data.tone.files", "cannot read parquet file d.parquet:"),
    ("text-file-template", {"d.txt": "one line\nanother\n"}, "    type: text\n    files: d.txt\n" + TEMPLATE, FINETUNE,
     "data.tone.template", "field 'phrase' is missing from d.txt:1 (it has: text)"),
    ("folder", {"d/a.jsonl": ROWS}, "    files: d\n" + TEMPLATE, FINETUNE,
     "data.tone.files", "'d' is a folder; name the data files in it (files: [d/part-1.jsonl, ...])"),
    ("tilde", {}, "    files: ~/tone.jsonl\n" + TEMPLATE, FINETUNE,
     "data.tone.files", "'~/tone.jsonl': '~' is not expanded in data paths; write the path relative to the pipeline file"),
    ("list-of-files", {"a.jsonl": ROWS, "b.jsonl": TONES}, "    files: [a.jsonl, b.jsonl]\n" + TEMPLATE, FINETUNE,
     "data.tone.template", "field 'tone' is missing from b.jsonl:1 (it has: phrase, tones); did you mean 'tones'?"),
    ("unread-set-file-checks", {"d.jsonl": ROWS, "e.jsonl": ""}, "    files: d.jsonl\n" + TEMPLATE + "  spare:\n    files: e.jsonl\n", FINETUNE,
     "data.spare.files", "e.jsonl is empty: it holds no records"),
]


def _line_of(text: str, key: str) -> int:
    """The line of the YAML key that `key` (dotted, `[i]` for a list item) ends in: its last named part."""
    name = key.split("[")[0].split(".")
    part = "passes" if name[0] == "passes" else "data"
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{part}:"))
    for wanted in name[1:]:
        start = next(i for i in range(start, len(lines)) if lines[i].lstrip().startswith(f"{wanted}:") or f" {wanted}:" in lines[i] or f"{{{wanted}:" in lines[i])
    return start + 1


def _write(project, files: dict, data: str, passes: str, model: str = "smollm2-135m"):
    for name, content in files.items():
        path = project.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        content = content() if callable(content) else content
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    text = f"name: checks\nmodel: {model}\ndata:\n  tone:\n{data}passes:\n{passes}"
    return project.write(text), text


@pytest.mark.parametrize("files, data, passes, key, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_validate_reports_the_data_problem_at_its_key(project, cli, files, data, passes, key, message):
    config, text = _write(project, files, data, passes)
    code, out, err = cli("validate", "--config", config)
    assert code == 2, (out, err)
    located = f"{config}:{_line_of(text, key)} {key}: "
    assert any(line.strip().startswith(located) and message in line for line in err.splitlines()), err
    assert "Traceback" not in err


@pytest.mark.parametrize("label, message", [
    ("    label: tones\n", "data.tone.label: field 'tones' is missing from d.jsonl:1 (it has: phrase, tone); did you mean 'tone'?"),
    ("", "data.tone: a classifier needs 'label: <column>' naming the label column (pass 'ft' reads it)"),
], ids=["label-column", "no-label"])
def test_a_classifier_needs_its_label_column(project, cli, label, message):
    config, _ = _write(project, {"d.jsonl": ROWS}, "    files: d.jsonl\n    text: phrase\n" + label, FINETUNE,
                       model="{path: smollm2-135m, task: text-classification}")
    code, out, err = cli("validate", "--config", config)
    assert code == 2 and message in err, err


def test_overlapping_train_and_eval_splits_warn(project, cli):
    config, text = _write(project, {"d.jsonl": ROWS}, '    files: d.jsonl\n    splits: {train: "[:90%]", eval: "[80%:]"}\n' + TEMPLATE,
                          FINETUNE + EVALUATE)
    code, out, err = cli("validate", "--config", config)
    assert code == 0, err
    assert (f"warning: {config}:{_line_of(text, 'data.tone.splits')} data.tone.splits.eval: split 'eval' ('[80%:]') shares 1 of its 2 "
            "records ([8:9]) with split 'train' ('[:90%]')") in err
    assert "ok (2 passes" in out


def test_disjoint_splits_and_hub_data_say_nothing(project, cli):
    hub = "  hub:\n    type: hf\n    name: nobody/nothing-here\n    template: '{nothing}'\n"
    config, _ = _write(project, {"d.jsonl": ROWS}, '    files: d.jsonl\n    splits: {train: "[:90%]", eval: "[90%:]"}\n' + TEMPLATE + hub,
                       FINETUNE + EVALUATE + "  hub_eval: {type: evaluate, data: hub, split: test, inputs: [ft]}\n")
    code, out, err = cli("validate", "--config", config)
    assert (code, err) == (0, "")


def test_a_data_set_nobody_reads_gets_no_field_checks(project, cli):
    config, _ = _write(project, {"d.jsonl": ROWS, "e.jsonl": TONES}, "    files: d.jsonl\n" + TEMPLATE + "  spare:\n    files: e.jsonl\n" + TEMPLATE,
                       FINETUNE)
    assert cli("validate", "--config", config)[0] == 0


def test_a_large_file_is_sampled_but_counted(project, cli, monkeypatch):
    from slimops.config import data as checks

    monkeypatch.setattr(checks, "SMALL_BYTES", 100)
    monkeypatch.setattr(checks, "SAMPLE_LINES", 3)
    rows = ROWS.splitlines()
    rows[5] = '{"phrase": "no tone"}'  # past the first 3 records: not read
    config, _ = _write(project, {"d.jsonl": "\n".join(rows) + "\n"}, '    files: d.jsonl\n    splits: {train: "[:95%]", eval: "[95%:]"}\n' + TEMPLATE,
                       FINETUNE)
    code, out, err = cli("validate", "--config", config)
    assert code == 2 and "selects no record of the 10 in d.jsonl" in err and "missing" not in err, err


def test_quickstart_validates(tmp_path, cli):
    assert cli("init", "quickstart", tmp_path)[0] == 0
    code, out, err = cli("validate", "--config", tmp_path / "quickstart.yaml")
    assert (code, err) == (0, ""), err


# -- one home: the passes' loader reads the engine's facts, and both see the same missing field -----

SPECS = [
    ("template", dict(template="{phrase} -> {tone}"), "text-generation"),
    ("prompt-response", dict(prompt="{phrase} ->", response=" {tone} {phrase}"), "text-generation"),
    ("messages", dict(messages="chat"), "text-generation"),
    ("text", dict(text="body"), "text-generation"),
    ("classifier-text", dict(text="phrase", label="tone"), "text-classification"),
    ("classifier-template", dict(template="{phrase}!", label="tone"), "text-classification"),
]


def test_the_loader_uses_the_engines_field_facts():
    assert (datalib.template_fields, datalib.needed_fields) == (template_fields, needed_fields)


@pytest.mark.parametrize("fields, task", [case[1:] for case in SPECS], ids=[case[0] for case in SPECS])
def test_loader_and_validate_agree_on_the_fields_a_spec_needs(tmp_path, fields, task):
    spec = DataSpec(files="d.jsonl", **fields)
    needed = needed_fields(spec, task)
    assert needed and [name for _, name in needed_columns(spec, task)] == needed
    full = {name: [{"role": "user", "content": "a"}] if name == "chat" else "x" for name in needed}
    model = "{path: smollm2-135m, task: text-classification}" if task == "text-classification" else "smollm2-135m"
    body = "".join(f"    {key}: {json.dumps(value)}\n" for key, value in fields.items())
    pipeline = f"model: {model}\ndata:\n  tone:\n    files: d.jsonl\n{body}passes:\n  ft: {{type: lora, data: tone}}\n"
    data = tmp_path / "d.jsonl"

    def both() -> tuple[list[str], str | None]:
        errors, _ = data_issues(parse_config(pipeline, tmp_path))
        try:
            datalib.check_fields(datalib.read_file(data, spec.type), spec, "tone", "train", task)
        except DataError as err:
            return [e.message for e in errors], str(err)
        return [e.message for e in errors], None

    data.write_text(json.dumps(full) + "\n")
    assert both() == ([], None)
    for missing in needed:
        record = {name: value for name, value in full.items() if name != missing} | {"other": "y"}
        data.write_text(json.dumps(full) + "\n" + json.dumps(record) + "\n")
        engine, loader = both()
        assert len(engine) == 1 and f"field '{missing}' is missing from d.jsonl:2" in engine[0], engine
        assert loader is not None and f"example 1: missing field '{missing}'" in loader


def test_quickstart_data_passes_the_runtime_check_too():
    """The template's data fits both: the engine says nothing and the loader reads every split."""
    config = parse_config((template_dir() / "quickstart.yaml").read_text(), template_dir())
    assert data_issues(config) == ([], [])
    spec = config.spec.data["tone"]
    spec = spec.model_copy(update={"files": str(template_dir() / spec.files)})
    for split in ("train", "eval"):
        datalib.check_fields(datalib.load_split(spec, split, "tone"), spec, "tone", split, config.spec.model.task)
