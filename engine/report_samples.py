"""The sample table of the run report: what each evaluated model answered on the same examples.

- `node_folder(out_dir, node)`: a node's output folder, when it lies inside `out_dir`.
- `model_label(node_id, node)`: how the report names the model an evaluate node measured.
- `sample_tables(out_dir, nodes, limit)`: one `SampleTable` per data set and split that evaluate
  nodes share: up to `limit` examples aligned by index, those where the models disagree first.

Every evaluate node (its `<name>.before` node too) leaves predictions.jsonl in its folder, one row
per example: index, prompt, reference, label, answer, correct; one with lm_eval tasks also leaves
lm_eval_samples.jsonl, the same with a task each, which makes a table per task. A missing or unreadable file leaves
that model out of the table; it is never an error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREDICTIONS = "predictions.jsonl"
TASK_SAMPLES = "lm_eval_samples.jsonl"  # lm_eval tasks' examples: the same rows, with a "task" each
SAMPLES = 10  # examples a report shows per data set and split (`slimops report --samples N`)
PROMPT_CHARS = 160  # a prompt's end holds the question; its start is the same instructions every time
TEXT_CHARS = 120
CHAT_MARKERS = re.compile(r"<\|[^|<>]{1,40}\|>|\[/?INST\]|<</?SYS>>|</?s>")


@dataclass
class SampleTable:
    """The examples of one data set and split, with one answer column per model."""

    data: str
    split: str | None
    head: list[str]
    rows: list[list[str]]
    total: int  # examples any model answered
    disagree: int  # examples where the pipeline's models (all but the base) answer differently, or are judged so

    @property
    def title(self) -> str:
        return f"{self.data} ({self.split})" if self.split else self.data

    @property
    def caption(self) -> str:
        return f"{len(self.rows)} of {self.total} examples shown, those where the models disagree first; {self.disagree} where they do (the base aside)"


def node_folder(out_dir: Path, node: dict[str, Any]) -> Path | None:
    """The folder of a node's output (its parent for a file), or None when absent or outside `out_dir`."""
    if not node.get("path"):
        return None
    path = Path(node["path"])
    if not path.exists():
        return None
    folder = path if path.is_dir() else path.parent
    return folder if folder.resolve().is_relative_to(Path(out_dir).resolve()) else None


def model_label(node_id: str, node: dict[str, Any]) -> str:
    """`base (eval.before)` for the input model's evaluation, else the node id."""
    return f"base ({node_id})" if (node.get("meta") or {}).get("role") == "before" else node_id


def repeated_baselines(nodes: dict[str, dict[str, Any]]) -> set[str]:
    """The `.before` nodes that measured what an earlier one did (the same key): one base column, one base point."""
    seen, repeated = set(), set()
    for node_id, node in nodes.items():
        if (node.get("meta") or {}).get("role") == "before":
            if node.get("key") and node["key"] in seen:
                repeated.add(node_id)
            seen.add(node.get("key"))
    return repeated


def sample_tables(out_dir: Path, nodes: dict[str, dict[str, Any]], limit: int = SAMPLES) -> list[SampleTable]:
    """The sample tables of a run, one per (meta.data, meta.split) of its evaluate nodes.

    Args:
        out_dir: the output folder; only files inside it are read.
        nodes: run.json's nodes.
        limit: examples per table; 0 gives no tables.
    """
    if limit <= 0:
        return []
    groups: dict[tuple[str, str | None], dict[str, dict[int, dict]]] = {}
    repeated = repeated_baselines(nodes)
    # the input model's evaluation comes first: the column every other one is read against
    for node_id, node in sorted(nodes.items(), key=lambda item: item[1].get("meta", {}).get("role") != "before"):
        meta = node.get("meta") or {}
        evaluation = meta.get("role") == "before" or isinstance((node.get("metrics") or {}).get("after"), dict)
        if not evaluation or node_id in repeated:
            continue
        rows = _predictions(out_dir, node, PREDICTIONS) if isinstance(meta.get("data"), str) else {}
        if rows:
            groups.setdefault((meta["data"], meta.get("split")), {})[model_label(node_id, node)] = rows
        for task, task_rows in _by_task(_predictions(out_dir, node, TASK_SAMPLES, keyed=False)).items():
            groups.setdefault((f"lm_eval:{task}", None), {})[model_label(node_id, node)] = task_rows
    bases = {model_label(node_id, node) for node_id, node in nodes.items() if (node.get("meta") or {}).get("role") == "before"}
    return [_table(data, split, models, bases, limit) for (data, split), models in groups.items()]


def _by_task(rows: dict[int, dict]) -> dict[str, dict[int, dict]]:
    """lm_eval sample rows by task, then by the document's index; a 0/1 score reads as right or wrong."""
    tasks: dict[str, dict[int, dict]] = {}
    for row in rows.values():
        if isinstance(row.get("task"), str) and type(row.get("index")) is int:
            correct = row.get("correct")
            tasks.setdefault(row["task"], {}).setdefault(row["index"], {**row, "correct": bool(correct) if correct in (0, 1) else None})
    return tasks


def _predictions(out_dir: Path, node: dict[str, Any], name: str, keyed: bool = True) -> dict[int, dict]:
    """A node's rows of file `name` by index (by line when not `keyed`); {} when there is none, or it cannot be read."""
    folder = node_folder(out_dir, node)
    if folder is None:
        return {}
    path = folder / name
    if not path.resolve().is_relative_to(Path(out_dir).resolve()):
        return {}  # a link out of the output folder
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    rows: dict[int, dict] = {}
    for number, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and not keyed:
            rows[number] = row
        elif isinstance(row, dict) and type(row.get("index")) is int:
            rows.setdefault(row["index"], row)
    return rows


def _table(data: str, split: str | None, models: dict[str, dict[int, dict]], bases: set[str], limit: int) -> SampleTable:
    indices = sorted({index for rows in models.values() for index in rows})
    # the pipeline's own models (fine-tuned, each export) disagreeing is the news; the base differs from them everywhere
    own = [rows for label, rows in models.items() if label not in bases] or list(models.values())
    differs = {index: _disagree([rows.get(index) for rows in own]) for index in indices}
    from_base = {index: _disagree([rows.get(index) for rows in models.values()]) for index in indices}
    shown = sorted(indices, key=lambda index: (not differs[index], not from_base[index], index))[:limit]
    table = []
    for index in shown:
        first = next(rows[index] for rows in models.values() if index in rows)
        reference = first.get("reference") or first.get("label")
        table.append([str(index), _tail(first.get("prompt")), _head(reference),
                      *(_answer(rows.get(index)) for rows in models.values())])
    return SampleTable(data, split, ["#", "prompt", "reference", *models], table, len(indices), sum(differs.values()))


def _disagree(rows: list[dict | None]) -> bool:
    """Whether the models answered an example differently, or were judged differently."""
    seen = {(_clean(row.get("answer")), row.get("correct")) if row else None for row in rows}
    return len(seen) > 1


def _answer(row: dict | None) -> str:
    if row is None:
        return "-"
    mark = {True: " ✓", False: " ✗"}.get(row.get("correct"), "")
    return (_head(row.get("answer")) or '""') + mark


def _clean(text: Any) -> str:
    """One line of plain text: chat markers dropped, runs of white space made one space."""
    return " ".join(CHAT_MARKERS.sub(" ", str(text or "")).split())


def _tail(text: Any) -> str:
    text = _clean(text)
    return text if len(text) <= PROMPT_CHARS else "…" + text[-PROMPT_CHARS:].lstrip()


def _head(text: Any) -> str:
    text = _clean(text)
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS].rstrip() + "…"
