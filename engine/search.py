"""Search over pass params: each trial is a run with overrides, so trials share cached prefixes.

    search:
      space:
        passes.finetune.r: [8, 16]                     # a list: one of these values
        passes.finetune.lr: {log_uniform: [1e-5, 1e-3]}
        passes.finetune.alpha: {int: [8, 32]}           # also {uniform: [a, b]}
      strategy: tpe                                     # grid | random | tpe (Optuna samplers)
      trials: 8
      objectives: [{metric: accuracy, direction: maximize}, {metric: latency_p50_ms}]
      seed: 0

- The block's shape is `slimops.config.search.SearchSpec` (optuna is imported when a search runs).
- `run_search(config, overrides, display)`: prints the space and a cost estimate, runs the
  trials, writes `trials.json`, and materialises the best trial's artifacts into the output folder.
Objectives read an evaluate node's "after" metrics (the first node that has the metric, unless
`node:` names one). With several objectives the best trials are the Pareto front. Trials whose
run missed a goal count only when no trial met its goals.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimops.config.search import Objective, SearchSpec, objective_issues, override
from slimops.errors import ConfigError, GoalError, SlimopsError
from slimops.report import TRIALS_JSON, fmt as _fmt
from slimops.trials import headline



@dataclass
class TrialResult:
    number: int
    params: dict[str, Any]
    values: list[float | None]
    status: str
    seconds: float
    ran: int
    hits: int
    output_dir: str
    error: str | None = None
    best: bool = False
    goals_missed: list[dict] = field(default_factory=list)


def estimate(config, overrides: list[str]) -> tuple[float | None, float | None, list[str]]:
    """(seconds of the first trial, seconds of each later trial, nodes never run) from the cache."""
    import networkx as nx

    from slimops.planner import build_plan

    plan = build_plan(config)
    searched = {path.split(".")[1] for path in config.spec.search.space}
    affected = set()
    for node in plan.nodes.values():
        if node.name in searched or node.name.split(".")[0] in searched:
            affected.add(node.id)
            affected |= nx.descendants(plan.graph, node.id)
    first, later, unknown = 0.0, 0.0, []
    for node in plan.order():
        if node.source is not None:
            continue
        cached = plan.cache.get(node.key)
        seconds = _last_seconds(plan, node)
        if seconds is None:
            unknown.append(node.id)
            seconds = 0.0
        if cached is None:
            first += seconds
        if node.id in affected:
            later += seconds
    return first, later, unknown


def _last_seconds(plan, node) -> float | None:
    entry = plan.cache.get(node.key)
    if entry is not None:
        return float(entry.manifest.get("seconds", 0))
    same = [e for e in plan.cache.entries() if e.manifest.get("node") == node.id]
    if not same:
        return None
    latest = max(same, key=lambda e: e.manifest.get("created", ""))
    return float(latest.manifest.get("seconds", 0))


def _objective_values(result, objectives: list[Objective]) -> list[float | None]:
    values = []
    for objective in objectives:
        value = None
        for node_id, node in result.nodes.items():
            if objective.node is not None and node_id != objective.node:
                continue
            after = node.metrics.get("after") if isinstance(node.metrics.get("after"), dict) else None
            if after is not None and objective.metric in after:
                value = float(after[objective.metric])
                break
        values.append(value)
    return values


def _sampler(spec: SearchSpec):
    import optuna

    if spec.strategy in ("grid", "random"):  # grid points are enqueued; see run_search
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=min(5, max(1, (spec.trials or 10) // 2)))


def _suggest(trial, path: str, choice) -> Any:
    if isinstance(choice, list):
        return trial.suggest_categorical(path, choice)
    name, (low, high) = choice.kind()
    if name == "int":
        return trial.suggest_int(path, int(low), int(high))
    return trial.suggest_float(path, float(low), float(high), log=name == "log_uniform")


def pareto(trials: list[TrialResult], objectives: list[Objective]) -> list[int]:
    """Numbers of the completed trials no other completed trial dominates."""
    signs = [1 if o.resolved_direction == "maximize" else -1 for o in objectives]
    done = [t for t in trials if t.status != "failed" and all(v is not None for v in t.values)]

    def dominates(a: TrialResult, b: TrialResult) -> bool:
        pairs = [(s * x, s * y) for s, x, y in zip(signs, a.values, b.values)]
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    return [t.number for t in done if not any(dominates(o, t) for o in done if o is not t)]


def run_search(config, overrides: list[str] | None = None, display=None, echo=print) -> tuple[list[TrialResult], Any]:
    """Run every trial of `config.spec.search`, then materialise the best into the output folder.

    Returns:
        (trials, the best trial's RunResult rerun into the main output folder, from the cache).

    Raises:
        ConfigError: the pipeline is not in a file (each trial reloads it with overrides).
        SlimopsError: no trial completed.
    """
    import optuna

    from slimops.config import load_config
    from slimops.planner import build_plan
    from slimops.scheduler import execute

    overrides = list(overrides or [])
    spec: SearchSpec = config.spec.search
    if config.file is None:
        raise ConfigError("a search needs its pipeline in a file (each trial reloads it with overrides)")
    # every key and value of the space was checked when the file loaded (slimops.config.search.space_issues);
    # the objectives need the plan's nodes, and a run without the search never reads them
    problems = objective_issues(spec, build_plan(config, keys=False).nodes.values(), config.lines)
    if problems:
        raise ConfigError(problems)
    count = spec.trial_count()
    size = spec.grid_size()
    first, later, unknown = estimate(config, overrides)
    echo(f"search: {len(spec.space)} params, space of {size if size else 'continuous'} points, {count} trials ({spec.strategy}); "
         f"objectives: {', '.join(f'{o.metric} ({o.resolved_direction})' for o in spec.objectives)}")
    if unknown and not first and not later:
        echo("no cost estimate yet: none of these nodes has run with this cache; the first trial's timings will give one")
    else:
        lanes = spec.parallel if spec.parallel > 1 and config.spec.engine.executor == "ray" else 1
        total = first + later * (count - 1) / lanes
        cost = (f"estimated {first:.0f} s for the first trial, {later:.0f} s for each later one, ~{total:.0f} s in all"
                + (f" with {lanes} at once" if lanes > 1 else ""))
        echo(cost + (f" (no timing yet for: {', '.join(unknown)})" if unknown else ""))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=[o.resolved_direction for o in spec.objectives], sampler=_sampler(spec))
    if spec.strategy == "grid":
        # enqueued rather than optuna's GridSampler, which stops the study from inside tell()
        # and so cannot run under ask/tell
        paths = list(spec.space)
        for point in itertools.islice(itertools.product(*(spec.space[p] for p in paths)), count):
            study.enqueue_trial(dict(zip(paths, point)))
    out_root = config.output_dir
    trials: list[TrialResult] = []
    asked: dict[int, tuple[Any, dict[str, Any], Path]] = {}

    def record(number: int, result, error: str | None, missed: list, seconds: float) -> None:
        trial, params, trial_dir = asked.pop(number)
        values = _objective_values(result, spec.objectives) if result is not None else [None] * len(spec.objectives)
        if result is None or any(v is None for v in values):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            status = "failed"
            error = error or f"no evaluate node reported {', '.join(o.metric for o, v in zip(spec.objectives, values) if v is None)}"
        else:
            study.tell(trial, values if len(values) > 1 else values[0])
            status = "goals missed" if missed else "ok"
        ran = sum(not n.cached for n in result.nodes.values()) if result else 0
        hits = sum(n.cached and n.pass_name != "model" for n in result.nodes.values()) if result else 0
        trials.append(TrialResult(number, params, values, status, seconds, ran, hits, str(trial_dir), error, goals_missed=missed))
        shown = ", ".join(f"{p.split('.', 2)[2]}={_fmt(v)}" for p, v in params.items())
        echo(f"trial {number}: {shown} -> {', '.join(_fmt(v) for v in values)} [{status}; {ran} ran, {hits} from cache, {seconds:.1f} s]")

    pool = _pool(config, spec, echo)
    try:
        for number in range(count):
            if pool is not None and pool.full():
                record(*_outcome(pool.wait()))
            trial = study.ask()
            params = {path: _suggest(trial, path, choice) for path, choice in spec.space.items()}
            trial_dir = out_root / "trials" / f"{number:03d}"
            trial_overrides = [*overrides, *(override(p, v) for p, v in params.items()), f"engine.output_dir={trial_dir}"]
            asked[number] = (trial, params, trial_dir)
            if pool is not None:
                pool.submit(number, trial_overrides)
                continue
            t0 = time.perf_counter()
            result, error, missed = None, None, []
            try:
                result = execute(build_plan(load_config(config.file, trial_overrides)), display)
            except GoalError as err:
                result, missed = err.result, err.misses
            except SlimopsError as err:
                error = headline(err)
            record(number, result, error, missed, round(time.perf_counter() - t0, 2))
        while pool is not None and pool.pending:
            record(*_outcome(pool.wait()))
    except BaseException:
        if pool is not None:
            pool.cancel()
        raise
    trials.sort(key=lambda t: t.number)

    # trials that met every goal come first; only when none did is the front drawn from the rest
    met = [t for t in trials if t.status == "ok"]
    front = pareto(met or trials, spec.objectives)
    if not front:
        _write_trials(out_root, spec, trials, front)
        raise SlimopsError(f"no search trial completed; see {out_root / TRIALS_JSON} and the first trial's error: {trials[0].error if trials else 'none ran'}")
    signs = [1 if o.resolved_direction == "maximize" else -1 for o in spec.objectives]
    best = max((t for t in trials if t.number in front), key=lambda t: [s * v for s, v in zip(signs, t.values)])
    best.best = True
    _write_trials(out_root, spec, trials, front)
    best_overrides = [*overrides, *(override(p, v) for p, v in best.params.items())]
    try:
        result = execute(build_plan(load_config(config.file, best_overrides)), display)
    except GoalError as err:
        result = err.result
    return trials, result


def _pool(config, spec: SearchSpec, echo):
    """Ray tasks for the trials when the search runs `parallel` at once, else None (one after another)."""
    if spec.parallel == 1:
        return None
    if config.spec.engine.executor != "ray":
        echo(f"search.parallel is {spec.parallel}, but trials run at once only with engine.executor: ray; running them one at a time")
        return None
    from slimops.trials import TrialPool

    return TrialPool(config, spec.parallel)


def _outcome(finished: tuple[int, dict, float]) -> tuple[int, Any, str | None, list, float]:
    number, outcome, seconds = finished
    return number, outcome.get("result"), outcome.get("error"), outcome.get("missed", []), seconds


def _write_trials(out_root: Path, spec: SearchSpec, trials: list[TrialResult], front: list[int]) -> None:
    out_root.mkdir(parents=True, exist_ok=True)
    body = {
        "objectives": [{"metric": o.metric, "direction": o.resolved_direction, "node": o.node} for o in spec.objectives],
        "strategy": spec.strategy,
        "pareto": front,
        "best": next((t.number for t in trials if t.best), None),
        "trials": [asdict(t) for t in trials],
    }
    (out_root / TRIALS_JSON).write_text(json.dumps(body, indent=2, default=str))
