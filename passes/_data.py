"""Data sets for training and evaluation passes: read, split, format, tokenize, batch by length.

- `load_split(spec, split, name)`: the examples (list of dicts) of one split of a `DataSpec`.
- `has_split(spec, split)`: whether a data set defines that split.
- splits are parsed by `slimops.config.splits.parse_split` (the engine validates configs with it too);
  the fields a formatting reads and the records of a json/jsonl line come from `slimops.config.data`,
  which `slimops validate` checks the data with.
- `check_fields(examples, spec, name, split)`: every field the formatting needs, in every example.
- `render(example, spec, tokenizer)`: `(prompt, response)` text of one example; loss covers the response.
- `classification_text(example, spec)`: the input text of one example for a classifier.
- `tokenize_lm(examples, spec, tokenizer, max_seq_len)`: `{"input_ids", "labels"}` per example.
- `pack(features, max_seq_len)`: causal-LM examples packed into rows, each example attending to itself only.
- `tokenize_classification(...)`: the classifier's side.
- `TokenBatches(lengths, budget, seed)`: length-grouped batches of about `budget` tokens each.
- `collate(features, pad_id)`: padding, and the positions the loss reads.

Batches are grouped by length (`TokenBatches`, or the trainer's length-grouped sampler when a
fixed batch size is asked for), so the padding left is the few tokens between similar lengths;
causal-LM examples can also be packed into rows of `max_seq_len` tokens (`pack`), attention kept
within each example.
Every problem is a `DataError` that names the data set, the split and, where it applies, the
example index, and is raised before training starts. Only `collate` imports torch.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from slimops.errors import DataError
from slimops.config.data import (  # noqa: F401  (template_fields, needed_fields: part of this module's surface)
    formatting_problem, json_records, jsonl_record, needed_fields, template_fields, text_field, valid_messages,
)
from slimops.config.splits import DEFAULT_SPLIT, Split, has_split, parse_split, source_files


def load_split(spec: Any, split: str, name: str = "data") -> list[dict[str, Any]]:
    """The examples of `split` of data set `spec` (a `slimops.config.DataSpec`, files resolved).

    Without `splits`, `train` is every example (or the `train` file of a `files` mapping).

    Raises:
        DataError: unknown split, bad split syntax, unreadable file, or an empty split.
    """
    where = f"data '{name}' split '{split}': "
    if not has_split(spec, split):
        defined = ", ".join(sorted(set(spec.splits) | set(spec.files if isinstance(spec.files, dict) else ()))) or DEFAULT_SPLIT
        raise DataError(f"{where}no such split; the data set defines: {defined}. Add it under data.{name}.splits")
    parsed = parse_split(spec.splits[split], where) if split in spec.splits else Split(split)
    rows = _read_source(spec, parsed.source, split, name, where)
    start, stop = parsed.bounds(len(rows))
    rows = rows[start:stop]
    if not rows:
        raise DataError(f"{where}is empty (its source holds no examples in that slice); check data.{name}.splits and the files")
    return rows


def _read_source(spec: Any, source: str | None, split: str, name: str, where: str) -> list[dict[str, Any]]:
    if spec.type == "hf":
        return _read_hub(spec, source or split, where)
    paths = source_files(spec, source, split, name, where)
    rows: list[dict[str, Any]] = []
    for path in paths:
        rows.extend(read_file(Path(path), spec.type, spec.text or "text"))
    return rows


def read_file(path: Path, kind: str, text_field: str = "text") -> list[dict[str, Any]]:
    """Every record of one local file, as dicts.

    Raises:
        DataError: the file is missing, unreadable, or not valid for its `kind`.
    """
    try:
        if kind == "jsonl":
            rows = []
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        rows.append(jsonl_record(line, str(path), number))
            return rows
        if kind == "json":
            with open(path, encoding="utf-8") as handle:
                return json_records(handle.read(), str(path))
        if kind == "csv":
            with open(path, encoding="utf-8", newline="") as handle:
                return [dict(row) for row in csv.DictReader(handle)]
        if kind == "text":
            with open(path, encoding="utf-8") as handle:
                return [{text_field: line.rstrip("\n")} for line in handle if line.strip()]
        if kind == "parquet":
            return _read_parquet(path)
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise DataError(f"cannot read data file {path}: {reason}") from None
    raise DataError(f"unknown data type '{kind}' for {path}")


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises its own hierarchy for corrupt files
        raise DataError(f"cannot read parquet file {path}: {err}") from None


def _read_hub(spec: Any, split: str, where: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{where}type hf needs the datasets package (pip install datasets) and a network; or download the data and use a local file") from None
    try:
        loaded = datasets.load_dataset(spec.name, spec.subset, split=split)
    except Exception as err:  # offline, unknown name, gated: the user's next step is the same
        raise DataError(
            f"{where}cannot load hub data set '{spec.name}' split '{split}' ({type(err).__name__}: {err}). "
            "Offline? Save it as a local jsonl/parquet file and use type: jsonl"
        ) from None
    return [dict(row) for row in loaded]


# -- formatting ------------------------------------------------------------------------------------


def check_fields(examples: list[dict[str, Any]], spec: Any, name: str, split: str, task: str = "text-generation") -> None:
    """Raise a `DataError` naming the first example that lacks a field the formatting reads.

    Raises:
        DataError: no formatting is configured, or example N lacks field F.
    """
    problem = formatting_problem(spec, task)
    if problem:
        raise DataError(f"data '{name}': {problem}")
    fields = needed_fields(spec, task)
    for index, example in enumerate(examples):
        for field in fields:
            if field not in example or example[field] is None:
                have = ", ".join(sorted(example)) or "none"
                raise DataError(f"data '{name}' split '{split}' example {index}: missing field '{field}' (it has: {have})")
        if spec.messages and task == "text-generation":
            _check_messages(example[spec.messages], name, split, index)


def _check_messages(messages: Any, name: str, split: str, index: int) -> None:
    if not valid_messages(messages):
        raise DataError(f"data '{name}' split '{split}' example {index}: 'messages' must be a non-empty list of {{role, content}} objects")


def render(example: dict[str, Any], spec: Any, tokenizer: Any = None) -> tuple[str, str]:
    """The `(prompt, response)` text of one example; training puts the loss on the response only.

    `template` and `text` give an empty prompt (loss on every token); `prompt`/`response` split
    where the user says; `messages` renders with the tokenizer's chat template and the last turn is
    the response.

    Raises:
        DataError: `messages` is used but the tokenizer has no chat template.
    """
    if spec.messages:
        messages = example[spec.messages]
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DataError("data with 'messages' needs a tokenizer with a chat template; this model has none (use 'template')")
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        head = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True) if len(messages) > 1 else ""
        if head and full.startswith(head):
            return head, full[len(head):]
        return "", full
    if spec.prompt:
        return spec.prompt.format_map(example), spec.response.format_map(example)
    if spec.template:
        return "", spec.template.format_map(example)
    return "", str(example[text_field(spec)])


def classification_text(example: dict[str, Any], spec: Any) -> str:
    """The text a classifier reads: the `text` column, or the `template` filled in."""
    return str(example[spec.text]) if spec.text else spec.template.format_map(example)


def formatting(spec: Any, tokenizer: Any = None) -> dict[str, Any]:
    """What later passes need to format inputs the same way (goes into `Artifact.meta`)."""
    keys = ("template", "prompt", "response", "messages", "text", "label")
    out: dict[str, Any] = {key: getattr(spec, key) for key in keys if getattr(spec, key)}
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        out["chat_template"] = tokenizer.chat_template
    return out


# -- tokenizing ------------------------------------------------------------------------------------


def tokenize_lm(examples: list[dict[str, Any]], spec: Any, tokenizer: Any, max_seq_len: int, name: str = "data", split: str = "train") -> list[dict[str, list[int]]]:
    """Token ids and labels (-100 on the prompt) for each example, cut at `max_seq_len`.

    An EOS token ends each response that does not end with one already, so the model learns to stop.

    Raises:
        DataError: every example lost its whole response to truncation (raise max_seq_len).
    """
    eos = tokenizer.eos_token or ""
    features = []
    for example in examples:
        prompt, response = render(example, spec, tokenizer)
        if eos and not response.rstrip().endswith(eos):
            response += eos
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
        response_ids = tokenizer(response, add_special_tokens=not prompt)["input_ids"]
        ids = (prompt_ids + response_ids)[:max_seq_len]
        labels = ([-100] * len(prompt_ids) + response_ids)[:max_seq_len]
        if any(label != -100 for label in labels):
            features.append({"input_ids": ids, "labels": labels})
    if not features:
        raise DataError(f"data '{name}' split '{split}': every example's response lies past max_seq_len={max_seq_len}; raise max_seq_len")
    return features


def label_names(examples: list[dict[str, Any]], spec: Any) -> list[str]:
    """The sorted distinct labels of a classification set."""
    return sorted({str(example[spec.label]) for example in examples})


def tokenize_classification(examples: list[dict[str, Any]], spec: Any, tokenizer: Any, max_seq_len: int, labels: list[str], name: str = "data", split: str = "train") -> list[dict[str, Any]]:
    """Token ids and a label id per example.

    Raises:
        DataError: an example's label is not among `labels` (those seen in training).
    """
    index = {label: i for i, label in enumerate(labels)}
    features = []
    for position, example in enumerate(examples):
        label = str(example[spec.label])
        if label not in index:
            raise DataError(f"data '{name}' split '{split}' example {position}: label '{label}' does not occur in training (labels: {', '.join(labels)})")
        encoded = tokenizer(classification_text(example, spec), truncation=True, max_length=max_seq_len)
        features.append({"input_ids": encoded["input_ids"], "labels": index[label]})
    return features


def pack(features: list[dict[str, list[int]]], max_seq_len: int) -> list[dict[str, list[int]]]:
    """Causal-LM examples packed into rows of at most `max_seq_len` tokens, first fit by decreasing length.

    Each row carries `position_ids` that restart at 0 for every example. Given position ids and no
    attention mask, transformers masks attention block by block, so no example sees another; the
    first token of each example gets the label -100, as it has no loss unpacked either (nothing
    before it predicts it). So every example's loss is what it is alone.
    """
    rows: list[dict[str, list[int]]] = []
    room: list[int] = []
    for feature in sorted(features, key=lambda f: -len(f["input_ids"])):
        n = len(feature["input_ids"])
        index = next((i for i, free in enumerate(room) if free >= n), None)
        if index is None:
            rows.append({"input_ids": [], "labels": [], "position_ids": []})
            room.append(max_seq_len)
            index = len(rows) - 1
        row = rows[index]
        row["input_ids"] += feature["input_ids"]
        row["labels"] += [-100, *feature["labels"][1:]]
        row["position_ids"] += list(range(n))
        room[index] -= n
    return rows


class TokenBatches:
    """A batch sampler of length-grouped batches that hold about `budget` tokens each, padding included.

    Examples are sorted by length (ties broken at random) and cut into batches while
    `count x longest <= budget` (one example at least, however long), then the batches are
    shuffled: short examples make wide batches and long ones narrow, so every step does about
    the same work and little of it is padding. The cut depends on the lengths alone, so the number
    of batches is the same every epoch; which examples share a batch, and the order, change with
    `set_epoch` (seeded: a resumed run sees what it would have seen).
    """

    def __init__(self, lengths: list[int], budget: int, seed: int) -> None:
        self.lengths, self.budget, self.seed, self.epoch = lengths, budget, seed, 0
        self._count = len(self._cut(sorted(range(len(lengths)), key=lengths.__getitem__)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        import random

        rng = random.Random(self.seed * 100_003 + self.epoch)
        batches = self._cut(sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], rng.random())))
        rng.shuffle(batches)
        return batches

    def _cut(self, order: list[int]) -> list[list[int]]:
        batches: list[list[int]] = []
        for index in order:  # ascending, so the newest example is the batch's longest
            if batches and (len(batches[-1]) + 1) * self.lengths[index] <= self.budget:
                batches[-1].append(index)
            else:
                batches.append([index])
        return batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return self._count


def collate(features: list[dict[str, Any]], pad_id: int, targets_only: bool = False) -> dict[str, Any]:
    """Pad a batch to its longest example (batches hold similar lengths, so little is padding).

    Returns:
        input_ids, attention_mask: (batch, longest) int64; labels: (batch, longest) with -100
        on padding, or (batch,) class ids. Packed rows (from `pack`) get `position_ids` instead of
        an attention mask; their padding is a block of its own that no real token attends to.
        With `targets_only` (token labels), also `logits_to_keep`, a (batch, longest) bool mask of
        the positions whose next token has a label, and `shift_labels`, those next tokens in the
        same order: the model then projects only those positions onto its vocabulary. The loss is
        the same; a prompt-heavy batch skips most of the output head and its softmax.
    """
    batch = _pad(features, pad_id)
    if targets_only and batch["labels"].dim() == 2:
        import torch

        labels = batch["labels"]
        wanted = labels[:, 1:] != -100
        batch["logits_to_keep"] = torch.nn.functional.pad(wanted, (0, 1), value=False)
        batch["shift_labels"] = labels[:, 1:][wanted]
    return batch


def _pad(features: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    import torch

    if "position_ids" in features[0]:
        longest = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(features), longest), -100, dtype=torch.long)
        positions = torch.arange(longest).repeat(len(features), 1)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"])
            labels[row, :n] = torch.tensor(feature["labels"])
            positions[row, :n] = torch.tensor(feature["position_ids"])
            positions[row, n:] = torch.arange(longest - n)
        return {"input_ids": ids, "labels": labels, "position_ids": positions}
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), longest), dtype=torch.long)
    token_labels = isinstance(features[0]["labels"], list)
    labels = torch.full((len(features), longest), -100, dtype=torch.long) if token_labels else torch.tensor([f["labels"] for f in features])
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        ids[row, :n] = torch.tensor(feature["input_ids"])
        mask[row, :n] = 1
        if token_labels:
            labels[row, :n] = torch.tensor(feature["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
