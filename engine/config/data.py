"""What validation learns from the data itself, read quickly, before anything runs; and the facts
about a data set's records that the engine's checks and the passes' loader share.

- `data_issues(config)`: (errors, warnings) as `Issue`s located at the `data:` key they concern.
- `path_problem(file, base_dir)`: why a `files:` entry is not a readable file (missing, a folder,
  `~`), or None.
- `template_problem(template)`: why a template is not text with plain `{field}` placeholders;
  `template_fields(template)`, `needed_columns(spec, task)`, `needed_fields(spec, task)`: which
  fields an example must hold for a spec's formatting; `formatting_problem(spec, task)`: a spec
  that cannot format an example at all; `valid_messages(value)`: a chat column's shape.
- `jsonl_record(line, where, number)`, `json_records(text, where)`: one record of a .jsonl line, the
  records of a .json file, or the `DataError` the loader raises too.

What `validate` checks, per local data set (type hf is skipped: no network at validate time):
- each file: a folder or a `~` path (not expanded anywhere: write it relative to the pipeline file
  or absolute), empty, not decodable, invalid JSON (jsonl: its line; json: line and column), a JSON
  record that is not an object;
- each split: a named source that `files:` does not have, a slice that selects no record;
  a split read by some pass's `train_split` that shares records with another split of the same
  files is a warning;
- each template, prompt and response (hf sets too): braces pair up and every placeholder is a
  plain `{field}`;
- for each pass that reads the set: the split the pass reads exists; and when the set has a
  formatting, that it can format an example for the model's task (calibration data: as text) and
  every field its template, prompt, response, text, label or messages names is in every record
  read (with a did-you-mean). A set with no formatting at all is not an error here: a plugin pass
  may read raw records (the built-in passes say so when they run, before any model loads).
Reading is bounded so validation stays fast: jsonl and text files up to `SMALL_BYTES` are read
whole; larger ones have their first `SAMPLE_LINES` records checked and their lines counted (blank
lines included; beyond `COUNT_BYTES` not counted, so no split of them is checked). A json file
over `SMALL_BYTES` is not read. csv: the header only, and the rows counted when the file is small
(a short row is not seen). parquet: the schema and row count from the footer (pyarrow, imported
only when a parquet set is used). Values are not checked beyond presence and `messages`' shape.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimops.config.splits import DEFAULT_SPLIT, Split, defined_splits, parse_split, source_files
from slimops.errors import DataError, Issue

# `config` below is a `slimops.config.load.PipelineConfig`; load imports `path_problem` from here,
# so this module does not import load back (not even for type checking: tests/test_layout.py).
PipelineConfig = Any

SMALL_BYTES = 4 << 20  # files read whole below this (~40 ms of JSON)
SAMPLE_LINES = 1000  # records checked of a larger jsonl or text file
COUNT_BYTES = 512 << 20  # lines counted up to this size (~0.2 s); larger files have no known count
# The Params field naming the split each data field is read at; a split named there must exist.
# (finetune reads `data`'s `eval_split` only when the set defines it, so that one is not here.)
SPLIT_OF = {"data": ("train_split", "split"), "eval_data": ("eval_split",), "calibration_data": ("calibration_split",)}
GENERATION, CLASSIFICATION = "text-generation", "text-classification"


# -- the fields a formatting reads (the passes' loader uses these too) -----------------------------


TEMPLATE_RULE = "a placeholder is a field name in braces, like {field}; write {{ and }} for a literal brace"
_UNBALANCED = {"expected '}' before end of string": "a '{' is never closed", "Single '{' encountered in format string": "a '{' is never closed",
               "Single '}' encountered in format string": "a '}' closes nothing"}


def template_problem(template: str) -> str | None:
    """Why `template` is not text with plain `{field}` placeholders, or None.

    The passes fill templates with `str.format_map`, which would also take `{0}`, `{}`, `{x.y}`,
    `{x!r}` and `{x:>5}`; those either fail on a record (positional fields) or change the text, so
    only a plain name is a placeholder.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        return f"{_UNBALANCED.get(str(err), str(err))}; {TEMPLATE_RULE}"
    for _, name, spec, conversion in parsed:
        if name is None:
            continue  # literal text after the last placeholder
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if not name.strip():
            why = "names no field"
        elif name.isdigit():
            why = "is a position, not a field name"
        elif conversion or spec:
            why = f"has a {'conversion' if conversion else 'format spec'} ('{shown[len(name) + 1:-1]}')"
        elif re.search(r"[.\[]", name):
            why = "reads an attribute or item of a field"
        else:
            continue
        return f"'{shown}' {why}; {TEMPLATE_RULE}"
    return None


def template_fields(template: str) -> list[str]:
    """The field names a template reads, in order (`template_problem(template)` is None)."""
    names = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name and name not in names:
            names.append(name)
    return names


def text_field(spec: Any) -> str | None:
    """The plain-text column: `text:`, or `text` itself for a data set of type text."""
    return spec.text or ("text" if spec.type == "text" else None)


def needed_columns(spec: Any, task: str = GENERATION) -> list[tuple[str, str]]:
    """(spec key, field) for every field an example must hold for this spec's formatting."""
    if task == CLASSIFICATION:
        pairs = [("text", spec.text)] if spec.text else [("template", f) for f in template_fields(spec.template or "")]
        return [*pairs, *([("label", spec.label)] if spec.label else [])]
    if spec.messages:
        return [("messages", spec.messages)]
    if spec.prompt or spec.response:
        prompt = template_fields(spec.prompt or "")
        return [("prompt", f) for f in prompt] + [("response", f) for f in template_fields(spec.response or "") if f not in prompt]
    if spec.template:
        return [("template", f) for f in template_fields(spec.template)]
    column = text_field(spec)
    return [("text" if spec.text else "type", column)] if column else []


def needed_fields(spec: Any, task: str = GENERATION) -> list[str]:
    """The fields every example must hold for this spec's formatting."""
    return [name for _, name in needed_columns(spec, task)]


def formatting_problem(spec: Any, task: str = GENERATION) -> str | None:
    """Why this spec cannot turn an example into what `task` reads, or None."""
    if not needed_columns(spec, task):
        what = "'text' (or 'template') and 'label'" if task == CLASSIFICATION else "one of 'template', 'prompt'+'response', 'messages' or 'text'"
        return f"set {what} so slimops knows how to turn an example into text"
    if task == CLASSIFICATION and not spec.label:
        return "a classifier needs 'label: <column>' naming the label column"
    if bool(spec.prompt) != bool(spec.response) and not spec.messages:
        return "'prompt' and 'response' go together; set both, or use 'template'"
    return None


def valid_messages(value: Any) -> bool:
    """Whether a chat column holds a non-empty list of {role, content} objects."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


# -- records of a file (the passes' loader uses these too) -----------------------------------------


def jsonl_record(line: str, where: str, number: int) -> dict[str, Any]:
    """The object on line `number` of a .jsonl file.

    Raises:
        DataError: not valid JSON, or not an object.
    """
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}:{number}: not valid JSON ({err.msg}); each line of a .jsonl file is one JSON object") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}:{number}: expected a JSON object per line, got {type(row).__name__}")
    return row


def json_records(text: str, where: str) -> list[dict[str, Any]]:
    """The records of a .json file: a list of objects, an object holding one such list, or columns.

    Raises:
        DataError: not valid JSON (names line and column), or none of those shapes.
    """
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}:{err.lineno}:{err.colno}: not valid JSON ({err.msg})") from None
    if isinstance(body, dict):
        lists = [value for value in body.values() if isinstance(value, list)]
        if len(lists) == 1 and all(isinstance(row, dict) for row in lists[0]):
            body = lists[0]  # {"data": [...]}
        elif body and all(isinstance(value, list) for value in body.values()):
            columns = list(body)
            body = [dict(zip(columns, values)) for values in zip(*body.values())]  # columns
    if not isinstance(body, list) or not all(isinstance(row, dict) for row in body):
        raise DataError(f"{where}: expected a list of objects, an object holding one such list, or an object of columns")
    return body


def path_problem(file: str, base_dir: Path) -> str | None:
    """Why `files:` entry `file` is not a data file slimops can read, or None."""
    if file.startswith("~"):
        return (f"'{file}': '~' is not expanded in data paths; write the path relative to the pipeline file "
                f"({base_dir}) or absolute")
    path = base_dir / file
    try:
        if path.is_dir():
            return f"'{file}' is a folder; name the data files in it (files: [{file.rstrip('/')}/part-1.jsonl, ...])"
        if not path.is_file():
            return f"no such file '{file}' (relative to {base_dir})"
    except (OSError, ValueError) as err:  # too long for a path, or a NUL in it
        return f"'{file[:60]}' cannot name a file ({getattr(err, 'strerror', None) or err})"
    return None


@dataclass
class Sample:
    """What was read of one file: its record count (None: not counted) and (where, record) pairs;
    for csv and parquet one record of its columns (`columns_only`)."""

    count: int | None
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    columns_only: bool = False


_SAMPLES: dict[tuple, Sample | DataError] = {}  # (path, type, text field, mtime, size): a plan may be built per trial


def sample(path: Path, shown: str, kind: str, text_name: str = "text") -> Sample:
    """Read what validation checks of one file (see the module docstring for the bounds).

    Raises:
        DataError: the file is empty, unreadable, or not valid for its `kind`.
    """
    stat = path.stat()
    key = (str(path), kind, text_name, stat.st_mtime_ns, stat.st_size)
    if key not in _SAMPLES:
        try:
            _SAMPLES[key] = _sample(path, shown, kind, text_name, stat.st_size)
        except DataError as err:
            _SAMPLES[key] = err
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            _SAMPLES[key] = DataError(f"cannot read data file {shown}: {reason}")
    found = _SAMPLES[key]
    if isinstance(found, DataError):
        raise found
    if found.count == 0 or (kind in ("jsonl", "text") and not found.records):
        raise DataError(f"{shown} is empty: it holds no records")
    return found


def _sample(path: Path, shown: str, kind: str, text_name: str, size: int) -> Sample:
    if size == 0:
        return Sample(0)
    if kind in ("jsonl", "text"):
        found = Sample(0)
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                record = jsonl_record(line, shown, number) if kind == "jsonl" else {text_name: line.rstrip("\n")}
                found.records.append((f"{shown}:{number}", record))
                if size > SMALL_BYTES and len(found.records) >= SAMPLE_LINES:
                    break
        found.count = len(found.records) if size <= SMALL_BYTES else (_count_lines(path) if size <= COUNT_BYTES else None)
        return found
    if kind == "json":
        if size > SMALL_BYTES:
            return Sample(None)
        rows = json_records(path.read_text(encoding="utf-8"), shown)
        return Sample(len(rows), [(f"record {index} of {shown}", row) for index, row in enumerate(rows)])
    if kind == "csv":
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            count = sum(1 for row in reader if row) if size <= SMALL_BYTES else None
        return Sample(count, [(f"the header of {shown}", dict.fromkeys(header, ""))] if header else [], columns_only=True)
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"reading {shown} needs pyarrow: pip install pyarrow") from None
        try:
            meta = pq.ParquetFile(path)
            return Sample(meta.metadata.num_rows, [(f"the schema of {shown}", dict.fromkeys(meta.schema_arrow.names, ""))], columns_only=True)
        except Exception as err:  # pyarrow raises its own hierarchy for corrupt files
            raise DataError(f"cannot read parquet file {shown}: {err}") from None
    return Sample(None)


def _count_lines(path: Path) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


# -- the checks ------------------------------------------------------------------------------------


def data_issues(config: PipelineConfig) -> tuple[list[Issue], list[Issue]]:
    """Problems with the local data sets a pipeline names: (errors, warnings); see the module docstring."""
    errors: list[Issue] = []
    warnings: list[Issue] = []
    task = config.spec.model.task if config.spec.model is not None else GENERATION
    uses: dict[str, list[tuple[str, str, str]]] = {}  # data set -> (pass, data field, task)
    for pc in config.passes.values():
        for name in pc.cls.data_fields:
            value = getattr(pc.params, name, None)
            if isinstance(value, str) and value in config.spec.data:
                uses.setdefault(value, []).append((pc.name, name, GENERATION if name == "calibration_data" else task))
    slices: list[tuple[str, str, tuple[str, ...], int, int]] = []  # (data set, split, files, start, stop)
    for data_name, spec in config.spec.data.items():
        bad = [(key, problem) for key in ("template", "prompt", "response")
               if isinstance(getattr(spec, key), str) and (problem := template_problem(getattr(spec, key)))]
        errors += [config.lines.issue(("data", data_name, key), problem) for key, problem in bad]
        if spec.type == "hf":
            continue
        samples = _file_issues(config, data_name, spec, errors)
        slices += _split_issues(config, data_name, spec, samples, errors)
        seen: set[tuple] = set()
        for pass_name, data_field, use_task in uses.get(data_name, []):
            if not bad:  # the fields a template reads are known once it parses
                _field_issues(config, data_name, spec, samples, pass_name, use_task, seen, errors)
            _pass_split_issue(config, data_name, spec, pass_name, data_field, errors)
    warnings += _overlaps(config, slices)
    return errors, warnings


def _file_issues(config: PipelineConfig, name: str, spec: Any, errors: list[Issue]) -> dict[str, Sample]:
    samples = {}
    for file in spec.file_list():
        path = config.base_dir / file
        if path_problem(file, config.base_dir):
            continue  # the config's own check said so
        try:
            samples[file] = sample(path, file, spec.type, text_field(spec) or "text")
        except DataError as err:
            errors.append(config.lines.issue(_file_key(spec, name, file), str(err)))
    return samples


def _file_key(spec: Any, name: str, file: str) -> tuple:
    files = spec.files
    if isinstance(files, list):
        return ("data", name, "files", files.index(file))
    if isinstance(files, dict):
        for key, value in files.items():
            if value == file:
                return ("data", name, "files", key)
            if isinstance(value, list) and file in value:
                return ("data", name, "files", key, value.index(file))
    return ("data", name, "files")


def _split_issues(config: PipelineConfig, name: str, spec: Any, samples: dict[str, Sample], errors: list[Issue]) -> list[tuple]:
    slices = []
    for split in defined_splits(spec):
        where = ("data", name, "splits", split) if split in spec.splits else ("data", name, "files")
        try:
            parsed = parse_split(spec.splits[split]) if split in spec.splits else Split(split)
            files = source_files(spec, parsed.source, split, name)
        except DataError as err:
            if split in spec.splits and "bad split" not in str(err):  # bad syntax: the config's own check said so
                errors.append(config.lines.issue(where, str(err)))
            continue
        counts = [samples[f].count if f in samples else None for f in files]
        if None in counts:
            continue
        count = sum(counts)
        start, stop = parsed.bounds(count)
        if start >= stop and count:
            errors.append(config.lines.issue(where, f"'{spec.splits[split]}' selects no record of the {count} in {', '.join(files)} "
                                             f"(it means [{start}:{stop}]); widen the slice or add data"))
        slices.append((name, split, tuple(str((config.base_dir / f).resolve()) for f in files), start, stop))
    return slices


def _field_issues(config: PipelineConfig, name: str, spec: Any, samples: dict[str, Sample], pass_name: str, task: str,
                  seen: set[tuple], errors: list[Issue]) -> None:
    if not needed_columns(spec, task):
        return  # no formatting: a plugin pass may read raw records; the built-in ones say so when they run
    problem = formatting_problem(spec, task)
    if problem:
        if problem not in seen:
            seen.add(problem)
            errors.append(config.lines.issue(("data", name), f"{problem} (pass '{pass_name}' reads it)"))
        return
    for file, found in samples.items():
        chat = task == GENERATION and spec.messages and not found.columns_only
        for key, column in needed_columns(spec, task):
            for where, record in found.records:
                if record.get(column) is None:
                    if (key, column, file) not in seen:
                        seen.add((key, column, file))
                        state = "null in" if column in record else "missing from"
                        close = difflib.get_close_matches(column, list(record), n=1)
                        hint = f"; did you mean '{close[0]}'?" if close and column not in record else ""
                        errors.append(config.lines.issue(("data", name, key), f"field '{column}' is {state} {where} "
                                                         f"(it has: {', '.join(record) or 'nothing'}){hint}"))
                    break
                if chat and key == "messages" and not valid_messages(record[column]):
                    if (key, file) not in seen:
                        seen.add((key, file))
                        errors.append(config.lines.issue(("data", name, key), f"{where}: '{column}' must be a non-empty list of {{role, content}} objects"))
                    break


def _pass_split_issue(config: PipelineConfig, name: str, spec: Any, pass_name: str, data_field: str, errors: list[Issue]) -> None:
    params = config.passes[pass_name].params
    for split_field in SPLIT_OF.get(data_field, ()):
        split = getattr(params, split_field, None)
        if isinstance(split, str) and split not in defined_splits(spec):
            written = ("passes", pass_name, split_field)
            at = written if written in config.lines.lines else ("passes", pass_name, data_field)
            errors.append(config.lines.issue(at, f"reads split '{split}' of data '{name}', which defines: {', '.join(defined_splits(spec))}; "
                                             f"add it under data.{name}.splits (e.g. {{train: '[:90%]', {split}: '[90%:]'}}) or set {split_field}"))
    # a fine-tune that evaluates during training reads its eval split from `data` when no eval_data is given
    evaluates = getattr(params, "eval_steps", None) or getattr(params, "early_stopping_patience", None)
    split = getattr(params, "eval_split", None)
    if data_field == "data" and evaluates and getattr(params, "eval_data", None) is None and isinstance(split, str) \
            and split not in defined_splits(spec):
        key = "eval_steps" if getattr(params, "eval_steps", None) else "early_stopping_patience"
        errors.append(config.lines.issue(("passes", pass_name, key), f"evaluates during training on split '{split}' of data "
                                         f"'{name}', which defines: {', '.join(defined_splits(spec))}; add it under "
                                         f"data.{name}.splits, or set eval_data or eval_split"))


def _overlaps(config: PipelineConfig, slices: list[tuple]) -> list[Issue]:
    """A training split sharing records with another split of the same files: what it scores was trained on."""
    declared = {(pc.params.data, pc.params.train_split) for pc in config.passes.values()
                if isinstance(getattr(pc.params, "data", None), str) and isinstance(getattr(pc.params, "train_split", None), str)}
    training = declared | {(name, DEFAULT_SPLIT) for name in config.spec.data}
    found = []
    for name, split, files, start, stop in slices:
        if (name, split) not in training:
            continue
        for other_name, other, other_files, other_start, other_stop in slices:
            low, high = max(start, other_start), min(stop, other_stop)
            if (other_name, other) in training or other_files != files or low >= high:
                continue
            if other_name != name and (name, split) not in declared:
                continue  # another set's `train` split counts only when a pass trains on it
            spec = config.spec.data[other_name]
            at = ("data", other_name, "splits", other) if other in spec.splits else ("data", other_name)
            mine, theirs = config.spec.data[name].splits.get(split, "all"), spec.splits.get(other, "all")
            found.append(config.lines.issue(at, f"split '{other}' ('{theirs}') shares {high - low} of its {other_stop - other_start} "
                                            f"records ([{low}:{high}]) with split '{split}' ('{mine}')"
                                            f"{'' if other_name == name else f' of data {name}'}: scoring it measures examples trained on; "
                                            "make the slices disjoint, e.g. train '[:90%]' and eval '[90%:]'"))
    return found
