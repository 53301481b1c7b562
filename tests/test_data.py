"""The data module: reading formats, split syntax, formatting, tokenizing; and the errors a
user sees through `slimops run` when data does not fit (exit 2, named field/index/split)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimops.config import DataSpec
from slimops.errors import DataError
from slimops.passes import _data as datalib
from assets import build_tokenizer, tiny_llama, tone_rows, write_jsonl


def spec(tmp_path: Path, **kwargs) -> DataSpec:
    """A DataSpec with `files` resolved against tmp_path, as the scheduler hands it to passes."""
    files = kwargs.pop("files", "d.jsonl")
    if isinstance(files, dict):
        files = {k: str(tmp_path / v) for k, v in files.items()}
    else:
        files = str(tmp_path / files)
    return DataSpec(files=files, **kwargs)


@pytest.fixture
def rows10(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"i": i, "text": f"t{i}"} for i in range(10)])
    return tmp_path


@pytest.mark.parametrize(
    "split, expected",
    [("[:90%]", list(range(9))), ("[90%:]", [9]), ("[2:5]", [2, 3, 4]), ("train[:30%]", [0, 1, 2]), ("[-2:]", [8, 9]), ("[:]", list(range(10)))],
)
def test_split_slices(rows10, split, expected):
    got = datalib.load_split(spec(rows10, splits={"s": split}), "s")
    assert [row["i"] for row in got] == expected


def test_without_splits_train_is_everything_and_eval_is_absent(rows10):
    s = spec(rows10)
    assert len(datalib.load_split(s, "train")) == 10
    assert not datalib.has_split(s, "eval")


def test_per_split_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"x": 1}, {"x": 2}])
    write_jsonl(tmp_path / "b.jsonl", [{"x": 3}])
    s = spec(tmp_path, files={"train": "a.jsonl", "eval": "b.jsonl"})
    assert [r["x"] for r in datalib.load_split(s, "train")] == [1, 2]
    assert [r["x"] for r in datalib.load_split(s, "eval")] == [3]
    s = spec(tmp_path, files={"train": "a.jsonl", "eval": "b.jsonl"}, splits={"dev": "train[1:]"})
    assert [r["x"] for r in datalib.load_split(s, "dev")] == [2]


@pytest.mark.parametrize("bad", ["[:90]%", "train[::2]", "[a:b]", "", "[:150%]", "train[1:2"])
def test_bad_split_syntax(rows10, bad):
    with pytest.raises(DataError, match="bad split"):
        datalib.load_split(spec(rows10, splits={"train": bad}), "train")


def test_empty_split_and_unknown_split(rows10):
    with pytest.raises(DataError, match="split 'eval'.*is empty"):
        datalib.load_split(spec(rows10, splits={"train": "[:100%]", "eval": "[100%:]"}), "eval")
    with pytest.raises(DataError, match="no such split.*defines: train"):
        datalib.load_split(spec(rows10, splits={"train": "[:5]"}), "validation")


def test_formats(tmp_path):
    (tmp_path / "d.csv").write_text("phrase,tone\nhello there,happy\n")
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"phrase": "a", "tone": "b"}]}))
    (tmp_path / "cols.json").write_text(json.dumps({"phrase": ["a", "b"], "tone": ["c", "d"]}))
    (tmp_path / "d.txt").write_text("line one\n\nline two\n")
    assert datalib.read_file(tmp_path / "d.csv", "csv") == [{"phrase": "hello there", "tone": "happy"}]
    assert datalib.read_file(tmp_path / "d.json", "json") == [{"phrase": "a", "tone": "b"}]
    assert datalib.read_file(tmp_path / "cols.json", "json")[1] == {"phrase": "b", "tone": "d"}
    assert datalib.read_file(tmp_path / "d.txt", "text") == [{"text": "line one"}, {"text": "line two"}]


def test_plain_text_files_need_no_formatting(tmp_path):
    (tmp_path / "d.txt").write_text("what a lovely day\ni miss her\n")
    s = spec(tmp_path, files="d.txt", type="text")
    rows = datalib.load_split(s, "train")
    datalib.check_fields(rows, s, "corpus", "train")
    assert datalib.render(rows[1], s) == ("", "i miss her")


def test_unreadable_files(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        datalib.read_file(tmp_path / "bad.jsonl", "jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="cannot read data file"):
        datalib.read_file(tmp_path / "bin.jsonl", "jsonl")
    with pytest.raises(DataError, match="cannot read data file .*missing.jsonl"):
        datalib.read_file(tmp_path / "missing.jsonl", "jsonl")


def test_hub_data_offline_is_a_data_error():
    with pytest.raises(DataError, match="cannot load hub data set 'nobody/nothing-here'.*Offline"):
        datalib.load_split(DataSpec(type="hf", name="nobody/nothing-here"), "train")


def test_parquet_reads_rows_and_a_corrupt_file_is_a_data_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"phrase": "so glad", "tone": "joyful"}, {"phrase": "go away", "tone": "angry"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "tone.parquet")
    assert datalib.read_file(tmp_path / "tone.parquet", "parquet") == rows
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot read parquet file .*bad.parquet"):
        datalib.read_file(tmp_path / "bad.parquet", "parquet")


def test_check_fields_names_field_and_index(tmp_path):
    rows = [{"phrase": "a", "tone": "b"}, {"phrase": "c", "tone": "d"}, {"phrase": "e"}]
    s = DataSpec(files="x", template="{phrase} -> {tone}")
    with pytest.raises(DataError, match=r"example 2: missing field 'tone'"):
        datalib.check_fields(rows, s, "tone", "train")
    with pytest.raises(DataError, match="set one of 'template'"):
        datalib.check_fields(rows, DataSpec(files="x"), "tone", "train")
    with pytest.raises(DataError, match="needs 'label"):
        datalib.check_fields(rows, DataSpec(files="x", text="phrase"), "tone", "train", task="text-classification")


def test_render_forms(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    example = {"phrase": "hello", "tone": "happy", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "happy"}]}
    assert datalib.render(example, DataSpec(files="x", template="{phrase}: {tone}")) == ("", "hello: happy")
    assert datalib.render(example, DataSpec(files="x", prompt="{phrase} ->", response=" {tone}")) == ("hello ->", " happy")
    prompt, response = datalib.render(example, DataSpec(files="x", messages="messages"), tokenizer)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert response == "happy<|im_end|>\n"


def test_tokenize_masks_the_prompt_and_ends_with_eos(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    s = DataSpec(files="x", prompt="<|im_start|>user\n{phrase}<|im_end|>\n<|im_start|>assistant\n", response="{tone}")
    [feature] = datalib.tokenize_lm([{"phrase": "what a lovely day", "tone": "happy"}], s, tokenizer, max_seq_len=64)
    prompt_len = len(tokenizer(s.prompt.format(phrase="what a lovely day"))["input_ids"])
    assert feature["labels"][:prompt_len] == [-100] * prompt_len
    assert feature["labels"][prompt_len:] == tokenizer("happy<|im_end|>", add_special_tokens=False)["input_ids"]
    assert feature["input_ids"][-1] == tokenizer.eos_token_id
    with pytest.raises(DataError, match="max_seq_len=4"):
        datalib.tokenize_lm([{"phrase": "what a lovely day", "tone": "happy"}], s, tokenizer, max_seq_len=4)


def test_collate_pads_to_the_longest_in_batch():
    batch = datalib.collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]


def test_token_batches_hold_about_the_budget_whatever_the_lengths():
    import random

    lengths = [random.Random(i).choice([6, 7, 30, 31, 200]) for i in range(300)]
    sampler = datalib.TokenBatches(lengths, budget=256, seed=1)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(300))  # every example once an epoch
        assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 256 for b in batches)
        assert len(batches) == len(sampler)
        epochs.append(batches)
    widths = {lengths[b[0]]: len(b) for b in epochs[0]}
    assert widths[6] > widths[30] > widths[200] == 1  # short examples share a batch, long ones do not
    assert epochs[0] != epochs[1] and len(epochs[0]) == len(epochs[1])  # reshuffled, same count
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1]  # seeded: a resumed epoch sees the same batches


def test_collate_can_keep_only_the_labelled_positions():
    batch = datalib.collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5, 8], "labels": [-100, -100]}], 0, targets_only=True)
    assert batch["logits_to_keep"].tolist() == [[True, True, False], [False, False, False]]
    assert batch["shift_labels"].tolist() == [6, 7]


# -- through the CLI: data problems stop the run before training, exit 2 ---------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama"))


PIPELINE = """
name: data-errors
model: {model}
data:
  tone:
    files: {files}
    splits: {splits}
    template: "{{phrase}} -> {{tone}}"
passes:
  ft: {{type: lora, data: tone, max_steps: 2}}
"""


@pytest.mark.parametrize(
    "rows, splits, content, message",
    [
        (tone_rows(6)[:5] + [{"phrase": "no tone"}], '{train: "[:100%]"}', None, "data.tone.template: field 'tone' is missing from d.jsonl:6"),
        (tone_rows(6), '{train: "[:100%]", eval: "[100%:]"}', None, "data.tone.splits.eval: '[100%:]' selects no record of the 6 in d.jsonl"),
        (tone_rows(6), '{train: "[:90]%"}', None, "bad split '[:90]%'"),
        (None, '{train: "[:100%]"}', b'{"phrase": "a", "tone": "b"}\n{not json\n', "d.jsonl:2: not valid JSON"),
    ],
    ids=["missing-field", "empty-split", "bad-split-syntax", "unreadable-file"],
)
def test_data_errors_stop_the_run(project, cli, llama_dir, rows, splits, content, message):
    if rows is not None:
        write_jsonl(project.root / "d.jsonl", rows)
    else:
        (project.root / "d.jsonl").write_bytes(content)
    config = project.write(PIPELINE.format(model=llama_dir, files="d.jsonl", splits=splits))
    code, out, err = cli("run", "--config", config, "--quiet")
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert not list((project.root / "out").glob("ft/*")), "no training output may exist"
