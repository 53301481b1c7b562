"""lm-evaluation-harness tasks as metrics of the `evaluate` pass: `metrics: [lm_eval:TASK, ...]`.

- `LmEvalSettings`: the pass's `lm_eval:` settings (few-shot count, limit, a folder of task YAMLs, ...).
- `TASK_PREFIX`, `task_names(metrics)`: which metrics name a harness task, and the task names.
- `REQUIRES`, `INSTALL_LINE`: the distribution these metrics need, and the command that installs it.
- `task_folders(settings, config_dir)`: where task YAMLs are looked up: the project's own
  (configs/data/lm_eval/), then the `include` folder.
- `run_tasks(runner, tasks, settings, config_dir, progress)`: (values, stderrs, items, samples), scored with
  the harness's own tasks and metrics over a slimops runner (`slimops.passes._lm_eval_model`).

A local task's `data_files` (and a `dataset_path` that is a folder) are read relative to its YAML's
folder, not the process's working directory: the YAML is loaded here, its paths made absolute, and
the harness builds the task from that config. When every task asked for is local, the run is
offline (datasets and huggingface_hub), so a local json task never reaches a hub; a harness task
(`hellaswag`, ...) loads its data set as the harness does, which needs the network once.
lm_eval is imported inside the functions only: validating a pipeline never loads it.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field

from slimops.errors import DataError

TASK_PREFIX = "lm_eval:"
REQUIRES = ("lm-eval",)
INSTALL_LINE = "pip install 'slimops[eval]'"
SAMPLES_PER_TASK = 200  # rows per task kept for the report's sample table
PROMPT_CHARS = 400  # the end of a long (few-shot) prompt, where the question is


class LmEvalSettings(BaseModel):
    """How the harness runs an evaluate pass's `lm_eval:TASK` metrics."""

    model_config = ConfigDict(extra="forbid")

    num_fewshot: int | None = Field(
        None, ge=0, description="Solved examples shown before each question; null keeps each task's own (0 where it sets none)."
    )
    limit: int | None = Field(
        None, ge=1, description="Examples per task (the first ones); null runs them all. Quicker, but not a score to publish."
    )
    include: str | None = Field(
        None, description="A folder of task YAML files, relative to the pipeline's folder; the project's own tasks "
        "(configs/data/lm_eval/) are always available, and the harness's own ones (hellaswag, ...) when online."
    )
    max_gen_toks: int = Field(
        256, ge=1, description="Longest generated answer where a task's generation_kwargs do not say (the harness's default); "
        "lower it to bound the time a rambling model takes."
    )
    seed: int = Field(0, description="Seed of the few-shot sampler and of Python, numpy and torch.")
    bootstrap_iters: int = Field(
        1000, ge=1, description="Resamples for the stderr of metrics with no closed form (f1, bleu); acc and exact_match "
        "have one. More is steadier and slower."
    )


def task_names(metrics: list) -> list[str]:
    """The task of each `lm_eval:TASK` metric, in order (other metrics, custom ones too, skipped)."""
    return [m[len(TASK_PREFIX):] for m in metrics or [] if isinstance(m, str) and m.startswith(TASK_PREFIX)]


def task_folders(settings: LmEvalSettings, config_dir: Path) -> list[Path]:
    """Folders of task YAMLs, in the order they are indexed: the project's own, then `include`
    (a task there overrides one of the same name)."""
    from slimops.templates import template_dir

    folders = [template_dir() / "data" / "lm_eval"]
    if settings.include:
        folders.append((Path(config_dir) / settings.include).resolve())
    return folders


def run_tasks(runner: Any, tasks: list[str], settings: LmEvalSettings, config_dir: Path,
              progress: Any) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]], list[dict[str, Any]]]:
    """Runs harness tasks on a model, through a slimops runner.

    Args:
        runner: a causal-LM runner (`slimops.passes._runtime.runners.open_runner`).
        tasks: task (or group, or tag) names, without the `lm_eval:` prefix.
        config_dir: the pipeline's folder, which `settings.include` is relative to.
        progress: the pass's `ctx.progress` (`.update(done, total, text)`), updated per request.

    Returns:
        (values, stderrs, items, samples): values and stderrs by `TASK/METRIC` (the harness's filter
        "none"; `TASK/METRIC,FILTER` for another filter), stderrs only where the harness gives one;
        items: each example's score, in document order, for a metric that is their mean (for the
        paired tests of goals); samples are rows {task, index, prompt, reference, answer, correct},
        up to SAMPLES_PER_TASK a task.

    Raises:
        DataError: a task is unknown, or a local task's data file is missing.
        ModelError: the model is not a causal LM.
    """
    from lm_eval import simple_evaluate

    from slimops.passes._lm_eval_model import runner_lm

    folders = task_folders(settings, config_dir)
    manager, local = _task_manager(tasks, folders, settings)
    model = runner_lm(runner, settings.max_gen_toks, progress)
    if progress is not None:
        progress.update(0, None, f"lm_eval: {', '.join(tasks)}")
    with _quiet(), _own_seeds(), (_offline() if all(t in local for t in tasks) else contextlib.nullcontext()):
        results = simple_evaluate(
            model=model, tasks=list(tasks), task_manager=manager, num_fewshot=settings.num_fewshot, limit=settings.limit,
            bootstrap_iters=settings.bootstrap_iters, log_samples=True, random_seed=settings.seed,
            numpy_random_seed=settings.seed, torch_random_seed=settings.seed, fewshot_random_seed=settings.seed,
        )
    values, stderrs = _scores(results)
    return values, stderrs, _items(results, values), _samples(results)


def _items(results: dict[str, Any], values: dict[str, float]) -> dict[str, list[float]]:
    """Each document's score per `TASK/METRIC`, by doc_id, where their mean is the reported value
    (a metric aggregated otherwise, corpus BLEU say, has none: its goals fall back to the stderr)."""
    items: dict[str, list[float]] = {}
    for task, logged in (results.get("samples") or {}).items():
        scores: dict[str, list[tuple[int, float]]] = {}
        for sample in logged:
            for metric in sample.get("metrics") or []:
                value = sample.get(metric)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    scores.setdefault(_key(task, metric, sample.get("filter") or "none"), []).append((int(sample["doc_id"]), float(value)))
        for key, pairs in scores.items():
            ordered = [v for _, v in sorted(pairs)]
            if key in values and ordered and abs(sum(ordered) / len(ordered) - values[key]) < 1e-9:
                items[key] = ordered
    return items


@contextlib.contextmanager
def _own_seeds() -> Iterator[None]:
    """The harness seeds Python's, numpy's and torch's global generators: put them back afterwards,
    so a pass that runs later in this process draws what it would have drawn."""
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


# -- finding tasks ---------------------------------------------------------------------------------


def _task_manager(tasks: list[str], folders: list[Path], settings: LmEvalSettings) -> tuple[Any, set[str]]:
    """A TaskManager that knows every task asked for, and the names among them that are local.

    The harness's own index (thousands of YAMLs: seconds) is read only when a name is not local.

    Raises:
        DataError: a name is in no index.
    """
    from lm_eval.tasks import TaskManager

    existing = [str(f) for f in folders if f.is_dir()]
    if settings.include and not folders[-1].is_dir():
        raise DataError(f"lm_eval.include: no folder {folders[-1]}")
    manager = TaskManager(include_path=existing, include_defaults=False)
    local = set(manager.task_index)
    if not all(t in local for t in tasks):
        manager = TaskManager(include_path=existing, include_defaults=True)
    unknown = [t for t in tasks if t not in manager.task_index]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(manager.task_index), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DataError(f"unknown lm_eval task '{unknown[0]}': not among the YAML files of {', '.join(map(str, folders))} "
                        f"nor the harness's own tasks{hint} (`lm_eval ls tasks` lists the harness's)")
    for name in _local_leaves(tasks, manager.task_index, folders):
        _anchor(manager.task_index[name])
    return manager, local


def _local_leaves(names: list[str], index: dict[str, Any], folders: list[Path]) -> list[str]:
    """The local tasks that `names` reach (a group's members, a tag's tasks), each once."""
    from lm_eval.tasks._index import Kind

    found: list[str] = []
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        entry = index.get(name)
        if entry is None or name in seen:
            continue
        seen.add(name)
        if entry.kind == Kind.TAG:
            todo.extend(entry.tags)
        elif entry.yaml_path is not None and any(_under(entry.yaml_path, f) for f in folders):
            if entry.kind == Kind.GROUP:
                members = (entry.cfg or {}).get("task") or []
                todo.extend(m if isinstance(m, str) else m.get("task", "") for m in members if isinstance(m, (str, dict)))
            else:
                found.append(name)
    return found


def _under(path: Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def _anchor(entry: Any) -> None:
    """Loads a local task's YAML (its `include`s and `!function`s resolved) with its data paths made
    absolute against the YAML's folder; the harness then builds the task from that config.

    Raises:
        DataError: a local data file the task names is missing.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    yaml_path = Path(entry.yaml_path)
    folder = yaml_path.parent
    config = load_yaml(yaml_path, resolve_func=True)
    path = config.get("dataset_path")
    if isinstance(path, str) and not Path(path).is_absolute() and (folder / path).exists():
        config["dataset_path"] = str((folder / path).resolve())
    kwargs = dict(config.get("dataset_kwargs") or {})
    for key in ("data_files", "data_dir"):
        if key in kwargs:
            kwargs[key] = _absolute(kwargs[key], folder, f"lm_eval task '{entry.name}' ({yaml_path}) dataset_kwargs.{key}")
    if kwargs:
        config["dataset_kwargs"] = kwargs
    entry.cfg, entry.yaml_path = config, None  # the factory builds from `cfg` when there is no file


def _absolute(value: Any, folder: Path, where: str) -> Any:
    """`value` (a path, a list of them, or split -> paths) with each relative local path joined to `folder`."""
    if isinstance(value, dict):
        return {split: _absolute(v, folder, f"{where}.{split}") for split, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_absolute(v, folder, where) for v in value]
    if not isinstance(value, str) or "://" in value:
        return value
    path = Path(value).expanduser()
    path = path if path.is_absolute() else folder / path
    if not any(c in value for c in "*?[") and not path.exists():
        raise DataError(f"{where}: no file {path} (a relative path is read from the task YAML's folder)")
    return str(path)


# -- running ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """datasets and huggingface_hub offline for the block (their flags are read at import, so set there too)."""
    import datasets.config
    import huggingface_hub.constants

    saved_env = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    os.environ.update({name: "1" for name in saved_env})
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The harness's info and warnings (seeds set, few-shot overridden, ...) kept out of slimops' display,
    and its record of the environment skipped: `git describe` in the working directory (whose error
    reaches the terminal past any redirect) and torch's collect_env (seconds of subprocesses), for
    fields of its results that slimops does not read."""
    from unittest import mock

    import lm_eval.evaluator

    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None), \
                mock.patch.object(lm_eval.evaluator, "add_env_info", lambda results: None):
            yield
    finally:
        logger.setLevel(level)


def _scores(results: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """`TASK/METRIC` -> value and -> stderr, from the harness's "METRIC,FILTER" and "METRIC_stderr,FILTER"."""
    values: dict[str, float] = {}
    stderrs: dict[str, float] = {}
    for task, row in (results.get("results") or {}).items():
        for key, value in row.items():
            if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, filter_name = key.split(",", 1)
            stderr = metric.endswith("_stderr")
            metric = metric[: -len("_stderr")] if stderr else metric
            (stderrs if stderr else values)[_key(task, metric, filter_name)] = float(value)
    return values, stderrs


def _key(task: str, metric: str, filter_name: str) -> str:
    return f"{task}/{metric}" if filter_name == "none" else f"{task}/{metric},{filter_name}"


def _samples(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the report's sample table: what was asked, expected, answered, and whether it scored."""
    rows = []
    for task, logged in (results.get("samples") or {}).items():
        for sample in logged[:SAMPLES_PER_TASK]:
            arguments = sample.get("arguments") or [("", "")]
            prompt = str(arguments[0][0])
            prompt = prompt if len(prompt) <= PROMPT_CHARS else "…" + prompt[-PROMPT_CHARS:]
            metrics = sample.get("metrics") or []
            correct = sample.get(metrics[0]) if metrics else None
            rows.append({"task": task, "index": sample.get("doc_id"), "prompt": prompt, "reference": _reference(sample),
                         "answer": _answer(sample), "correct": float(correct) if isinstance(correct, (int, float)) else None})
    return rows


def _is_choice(sample: dict[str, Any]) -> bool:
    """A multiple-choice sample: one (context, continuation) request per choice, answered (loglikelihood, greedy)."""
    responses = sample.get("filtered_resps") or []
    return bool(responses) and all(isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[0], float) for r in responses)


def _answer(sample: dict[str, Any]) -> str:
    responses = sample.get("filtered_resps") or []
    if _is_choice(sample):
        best = max(range(len(responses)), key=lambda i: responses[i][0])
        return str(sample["arguments"][best][1]).strip()
    first = responses[0] if responses else ""
    first = first[0] if isinstance(first, (list, tuple)) and first else first
    return f"{first:.4f}" if isinstance(first, float) else str(first)  # a rolling task's answer is its log-likelihood


def _reference(sample: dict[str, Any]) -> str:
    target = sample.get("target")
    arguments = sample.get("arguments") or []
    if _is_choice(sample) and isinstance(target, int) and 0 <= target < len(arguments):
        return str(arguments[target][1]).strip()
    if isinstance(target, list) and len(target) == 1:
        target = target[0]
    return str(target)
