"""An Olive workflow config, section by section, as a slimops pipeline.

- `convert(data, lines)`: the pipeline (plain data), with a `Record` of where each key came from,
  the notes for the written file and the located issues.

Sections: `workflow_id` -> name; `input_model` (or `model`) -> model; the `target` system's
accelerators -> targets; `data_configs` -> data; `passes` (in `pass_flows` order when given) ->
passes, a `merge_adapter` put in where Olive builds an adapter into an export, and ModelBuilder
followed by ExtractAdapters -> one `generate_adapter`; the engine's `evaluator` -> evaluate
passes after each flow; `search_strategy` and the passes' search values -> search; `engine`
(or the same keys at the top, as Olive's current schema has them) -> engine.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from slimops.config.names import name_problem
from slimops.config.source import Lines
from slimops.metrics import lower_is_better
from slimops.olive import data as olive_data
from slimops.olive.evaluators import Evaluation, evaluate_passes
from slimops.olive.passes import Step, convert_pass
from slimops.olive.record import Record

ENGINE_KEYS = {"search_strategy", "evaluator", "host", "target", "cache_dir", "output_dir", "packaging_config",
               "log_severity_level", "ort_log_severity_level", "ort_py_log_severity_level", "log_to_file",
               "evaluate_input_model", "clean_cache", "clean_evaluation_cache", "plot_pareto_frontier", "no_artifacts",
               "output_name", "execution_providers", "cache_config", "verbose"}
TOP_KEYS = {"$schema", "workflow_id", "input_model", "model", "systems", "data_configs", "data_root", "evaluators",
            "passes", "pass_flows", "engine", "azureml_client", "workflow_host", "auto_optimizer_config", "search_space",
            *ENGINE_KEYS}
MODEL_TYPES = {"hfmodel", "pytorchmodel", "onnxmodel", "hfmodelhandler", "pytorchmodelhandler", "onnxmodelhandler"}
TASKS = {"text-generation": None, "text-generation-with-past": None, "causal-lm": None,
         "text-classification": "text-classification", "sequence-classification": "text-classification"}
SAMPLERS = {"tpe": "tpe", "random": "random", "sequential": "grid", "exhaustive": "grid", "optuna": "tpe"}


def convert(data: dict[str, Any], lines: Lines) -> Record:
    """The slimops pipeline an Olive config stands for; `Record.issues` lists what cannot convert."""
    rec = Record(lines)
    engine = data.get("engine") if isinstance(data.get("engine"), dict) else {}
    settings = {**{k: v for k, v in data.items() if k in ENGINE_KEYS}, **engine}
    where = {key: (("engine", key) if key in engine else (key,)) for key in settings}
    for key in data:
        if key not in TOP_KEYS:
            rec.unknown((key,), TOP_KEYS - {"$schema"}, "an Olive workflow config")
    for key in engine:
        if key not in ENGINE_KEYS:
            rec.unknown(("engine", key), ENGINE_KEYS, "Olive's engine")
    stem = PurePath(lines.file).stem if lines.file else "olive-workflow"
    rec.put(("name",), str(data.get("workflow_id") or stem), ("workflow_id",))
    _model(rec, data)
    _explain(rec, data, settings, where)
    names = olive_data.read_all(rec, data.get("data_configs") or [], data.get("data_root"))
    steps = _steps(rec, data)
    evaluation = _evaluator(rec, data, settings.get("evaluator"), where.get("evaluator"))
    chains = _chains(rec, data, steps)
    _passes(rec, chains, evaluation, names, lambda ref, source: _evaluator(rec, data, ref, source))
    _search(rec, data, settings, where, steps, evaluation)
    olive_data.write_all(rec, names)
    for key, target in (("output_dir", "output_dir"),):
        if key in settings:
            rec.put(("engine", target), str(settings[key]), where[key])
    return rec


def _model(rec: Record, data: dict[str, Any]) -> None:
    key = "input_model" if "input_model" in data else "model"
    body = data.get(key)
    if not isinstance(body, dict):
        rec.error((key,), "the input model is a mapping: {type: HfModel, model_path: NAME_OR_FOLDER}")
        return
    config = {**{k: v for k, v in body.items() if k != "config"}, **(body.get("config") or {})}
    at = lambda name: (key, "config", name) if name in (body.get("config") or {}) else (key, name)  # noqa: E731
    kind = str(config.pop("type", "HfModel"))
    if kind.lower() not in MODEL_TYPES:
        rec.error(at("type"), f"slimops reads Hugging Face folders, GGUF and ONNX files; the Olive model type '{kind}' has no "
                  "equivalent (nearest: HfModel with model_path)")
        return
    hf_config = config.pop("hf_config", None) or {}
    path = config.pop("model_path", None) or hf_config.get("model_name")
    if not path:
        rec.error(at("model_path"), "give model_path: a folder, a .gguf or .onnx file, a registered name (smollm2-135m) or a hub id")
        return
    task = config.pop("task", None) or hf_config.get("task") or "text-generation"
    if task not in TASKS:
        rec.error(at("task"), f"slimops adapts causal LMs (text-generation) and classifiers (text-classification); "
                  f"the task '{task}' has no equivalent")
    hf_at = at("hf_config")
    model_source = at("model_path") if at("model_path") in rec.source.lines else (*hf_at, "model_name")
    rec.put(("model", "path"), str(path), model_source)
    if TASKS.get(task):
        rec.put(("model", "task"), TASKS[task], at("task"))
    loaders = ("model_loader", "model_script", "script_dir", "dummy_inputs_func", "io_config")
    for name, value in config.items():
        if name in loaders:
            rec.drop(("model",), at(name), "slimops loads Hugging Face folders itself; a model that needs its own loader "
                     "needs a custom pass (docs/plugins.md)")
        elif name == "adapter_path":
            rec.error(at(name), "slimops starts from a whole model: merge the adapter first (a merge_adapter pass over it), "
                      "or give the base model and fine-tune here")
        else:
            rec.drop(("model",), at(name), f"slimops reads the model's own files ({name} has no equivalent)", warn=False)


def _explain(rec: Record, data: dict[str, Any], settings: dict[str, Any], where: dict[str, tuple]) -> None:
    """Systems to targets, and every engine setting slimops has no use for, said."""
    systems = data.get("systems") or {}
    target_name = settings.get("target")
    host_name = settings.get("host")
    for name, system in systems.items() if isinstance(systems, dict) else []:
        body = {**(system or {}), **((system or {}).get("config") or {})}
        kind = str(body.get("type", "LocalSystem"))
        remote = kind.lower() in ("docker", "azureml", "dockersystem", "azuremlsystem")
        if remote:
            rec.drop(("targets",), ("systems", name), f"the {kind} system runs Olive's passes in a container or on Azure ML "
                     "compute; slimops runs them on this machine, or across machines with engine.executor: ray (docs/scale.md)")
        if name == target_name:
            _targets(rec, name, body.get("accelerators") or [], ("systems", name), settings.get("execution_providers"))
        elif name != host_name and not remote:
            rec.drop(("targets",), ("systems", name), "no engine host or target names this system", warn=False)
    if target_name and target_name not in (systems or {}):
        rec.error(where["target"], f"names the system '{target_name}', which systems does not define")
    quiet = {"log_severity_level", "ort_log_severity_level", "ort_py_log_severity_level", "log_to_file", "verbose",
             "clean_cache", "clean_evaluation_cache", "cache_config", "no_artifacts", "output_name", "$schema"}
    for key, value in {**settings, **{k: data[k] for k in ("$schema", "azureml_client", "workflow_host", "auto_optimizer_config") if k in data}}.items():
        at = where.get(key, (key,))
        if key in quiet:
            rec.drop(("engine",), at, "slimops logs each node to its cache entry and keeps every result cached", warn=False)
        elif key == "cache_dir":
            rec.drop(("engine",), at, "slimops keeps its own cache (engine.cache_dir, default .slimops/cache); Olive's is "
                     "left as it is", warn=False)
        elif key == "evaluate_input_model":
            rec.note(("engine",), at, "slimops evaluates the input model too (the evaluate pass's .before node), since its "
                     "goals compare against it", warn=value is False)
        elif key == "plot_pareto_frontier":
            rec.drop(("engine",), at, "the report (out/report.html) charts every model and a search's trials", warn=False)
        elif key == "packaging_config":
            rec.drop(("engine",), at, "slimops leaves each model as a folder under engine.output_dir (no zip package)")
        elif key in ("azureml_client", "workflow_host"):
            rec.drop(("engine",), at, "slimops runs here, or on a Ray cluster (engine.executor: ray); Azure ML has no equivalent")
        elif key == "auto_optimizer_config":
            rec.drop(("engine",), at, "slimops does not choose passes; a target profile (cpu-int4) sets their defaults")
        elif key == "execution_providers" and not target_name:
            rec.drop(("targets",), at, "no target system names the accelerator these run on")
        elif key == "host" and value not in (systems or {}):
            rec.error(at, f"names the system '{value}', which systems does not define")


def _targets(rec: Record, name: str, accelerators: list, source: tuple, providers: Any) -> None:
    """The target profiles a system's accelerators describe, one per accelerator."""
    for index, accelerator in enumerate(accelerators or [{"device": "cpu"}]):
        body = accelerator if isinstance(accelerator, dict) else {"device": accelerator}
        device = str(body.get("device", "cpu")).lower()
        eps = body.get("execution_providers") or providers or []
        eps = [ep for ep in ([eps] if isinstance(eps, str) else eps)]
        if device == "gpu":
            device = "dml" if "DmlExecutionProvider" in eps else "cuda"
        if device not in ("cpu", "cuda", "dml", "npu"):
            rec.error((*source, "accelerators", index, "device"), f"slimops targets cpu, gpu (cuda or dml) and npu; not '{device}'")
            continue
        target = name if len(accelerators or [1]) == 1 else f"{name}_{device}_{index + 1}"
        rec.put(("targets", target), {"device": device, **({"providers": eps} if eps else {})}, (*source, "accelerators", index))


def _steps(rec: Record, data: dict[str, Any]) -> dict[str, Step]:
    passes = data.get("passes") or {}
    if not isinstance(passes, dict):
        rec.error(("passes",), "passes is a mapping of a pass's name to its {type, ...}")
        return {}
    for pass_name, body in passes.items():
        if isinstance(body, dict) and isinstance(body.get("search_space"), dict):
            nested = "config" in body
            for key, value in body.pop("search_space").items():
                parts = str(key).split(".")
                _inject(rec, body.setdefault("config", {}) if nested else body, parts, value,
                        ("passes", pass_name, *(("config",) if nested else ()), *parts), ("passes", pass_name, "search_space", key))
    top = data.get("search_space") or {}
    for key, value in top.items() if isinstance(top, dict) else []:
        parts = str(key).removeprefix("passes.").split(".")
        body = passes.get(parts[0])
        if not isinstance(body, dict) or len(parts) < 2:
            rec.error(("search_space", key), f"a search_space key is PASS.PARAM (passes: {', '.join(passes)})")
            continue
        nested = "config" in body
        _inject(rec, body.setdefault("config", {}) if nested else body, parts[1:], value,
                ("passes", parts[0], *(("config",) if nested else ()), *parts[1:]), ("search_space", key))
    steps: dict[str, Step] = {}
    for pass_name, body in passes.items():
        problem = name_problem(str(pass_name), "pass")
        if problem or not isinstance(body, dict) or "type" not in body:
            rec.error(("passes", pass_name), problem or "a pass is a mapping with its Olive type: {type: LoRA, ...}")
            continue
        step = convert_pass(rec, str(pass_name), body, ("passes", pass_name))
        if step is not None:
            steps[str(pass_name)] = step
    return steps


def _inject(rec: Record, body: dict[str, Any], parts: list[str], value: Any, path: tuple, source: tuple) -> None:
    """Put a `search_space` entry where the pass's own value would be, located at the entry's line."""
    for part in parts[:-1]:
        body = body.setdefault(part, {})
    body[parts[-1]] = value
    if source in rec.source.lines:
        rec.source.lines[path] = rec.source.lines[source]


def _chains(rec: Record, data: dict[str, Any], steps: dict[str, Step]) -> list[list[Step]]:
    flows = data.get("pass_flows")
    if flows is None:
        return [list(steps.values())] if steps else []
    chains = []
    for index, flow in enumerate(flows if isinstance(flows, list) else []):
        chain = []
        for position, name in enumerate(flow if isinstance(flow, list) else []):
            if name not in (data.get("passes") or {}):
                rec.error(("pass_flows", index, position), f"names the pass '{name}', which passes does not define")
            elif name in steps:
                chain.append(steps[name])
        chains.append(chain)
    return chains


def _passes(rec: Record, chains: list[list[Step]], evaluation: Evaluation | None, names: dict[str, str], evaluator) -> None:
    """Each flow as a chain of slimops passes; a pass two flows share with the same prefix is written once.
    A pass with its own evaluator (`evaluator(ref, source)` reads it) is followed by an evaluate pass
    `eval_PASS`; the engine's evaluator evaluates each flow's last output."""
    written: dict[tuple, str] = {}  # (prefix of Olive pass names) -> slimops pass name
    olive_names = {step.name for chain in chains for step in chain}
    order: list[str] = []
    for index, chain in enumerate(chains):
        prefix: tuple = ()
        previous, kind = "model", "model"
        position = 0
        while position < len(chain):
            step = chain[position]
            following = chain[position + 1] if position + 1 < len(chain) else None
            prefix = (*prefix, step.name)
            if prefix in written:
                previous, kind = written[prefix], _kind_after(step)
                position += 1
                continue
            name = step.name if step.name not in order else f"{step.name}_{index + 1}"
            if step.role in ("export", "quantize", "optimize") and kind == "adapter":
                if step.role == "export" and following is not None and following.role == "extract":
                    _write(rec, name, step, "generate_adapter", previous, order, names, extract=following)
                    rec.note(("passes", name), following.source, f"Olive's {step.olive_type} then ExtractAdapters: one "
                             "generate_adapter pass (the base model in ONNX, the adapter as an .onnx_adapter file)")
                    written[prefix] = written[(*prefix, following.name)] = name
                    prefix = (*prefix, following.name)
                    previous, kind = name, "onnx"
                    position += 2
                    continue
                merge = "merge" if "merge" not in order and "merge" not in olive_names else f"{previous}_merged"
                if merge not in order:
                    rec.put(("passes", merge, "type"), "merge_adapter", step.source)
                    if _branches(previous, order):
                        rec.put(("passes", merge, "inputs"), [previous], step.source)
                    rec.note(("passes", merge), step.source, f"Olive builds the adapter into its {step.olive_type}; here "
                             "it is merged into the base first")
                    order.append(merge)
                previous, kind = merge, "model"
            if step.role == "extract":
                rec.error(step.source, "ExtractAdapters reads a model built from a LoRA adapter: put ModelBuilder between "
                          "the LoRA pass and it")
                position += 1
                continue
            _write(rec, name, step, step.type, previous, order, names)
            written[prefix] = name
            previous, kind = name, _kind_after(step)
            position += 1
            own = evaluator(*step.evaluator) if step.evaluator else None
            if own is not None and not (position == len(chain) and evaluation is not None):
                _evaluate(rec, own, name, order, names, True)
        if evaluation is not None and previous != "model":
            _evaluate(rec, evaluation, previous, order, names, len(chains) > 1)


def _branches(previous: str, order: list[str]) -> bool:
    """Whether a pass reading `previous` needs `inputs:` (it is not the pass written just before)."""
    return previous != (order[-1] if order else "model")


def _kind_after(step: Step) -> str:
    return {"adapter": "adapter", "merge": "model"}.get(step.role, "onnx")


def _write(rec: Record, name: str, step: Step, type_: str, previous: str, order: list[str], names: dict[str, str],
           extract: Step | None = None) -> None:
    where = ("passes", name)
    rec.put((*where, "type"), type_, (*step.source, "type"), f"Olive's {step.olive_type}" + (" + ExtractAdapters" if extract else ""))
    if _branches(previous, order):
        rec.put((*where, "inputs"), [previous], step.source)
    for key, (value, source, note) in step.params.items():
        if type_ == "generate_adapter" and key not in ("precision", "block_size"):
            if key != "int4_method":
                rec.drop(where, source, f"generate_adapter builds the base with its own settings ({key} has no equivalent)")
            continue
        rec.put((*where, key), value, source, note)
    for key, (ref, source) in step.data.items():
        data_name = olive_data.reference(rec, ref, source, names, "eval" if key == "eval_data" else "train")
        if data_name:
            rec.put((*where, key), data_name, source)
            if key == "data":
                for setting, value in olive_data.training_settings(names, data_name).items():
                    rec.put((*where, setting), value[0], value[1], value[2])
    order.append(name)


def _evaluate(rec: Record, evaluation: Evaluation, previous: str, order: list[str], names: dict[str, str], several: bool) -> None:
    for index, (ref, body, source) in enumerate(evaluation.bodies):
        name = "eval" if not several else f"eval_{previous}"
        name = name if index == 0 else f"{name}_{index + 1}"
        while name in order or name in (rec.pipeline.get("passes") or {}):
            name = f"{name}_"  # an Olive pass has the name already
        where = ("passes", name)
        rec.put((*where, "type"), "evaluate", source, "the engine's evaluator, on this flow's output")
        if _branches(previous, order):
            rec.put((*where, "inputs"), [previous], source)
        if ref is not None:
            data_name = olive_data.reference(rec, ref, (*source, "data_config"), names, "eval")
            if data_name:
                rec.put((*where, "data"), data_name, (*source, "data_config"))
                samples = olive_data.eval_samples(names, data_name)
                rec.put((*where, "max_samples"), samples, (*source, "data_config"),
                        "Olive evaluates the whole data config" if samples is None else "the data config's max_samples")
        for key, value in body.items():
            if key != "type":
                rec.put((*where, key), value, source)
        order.append(name)


def _evaluator(rec: Record, data: dict[str, Any], ref: Any, source: tuple | None) -> Evaluation | None:
    evaluators = data.get("evaluators") or {}
    if ref is None:
        for name in evaluators:
            rec.drop(("passes",), ("evaluators", name), "no engine evaluator names it, so Olive runs no evaluation with it, nor does this pipeline")
        return None
    if isinstance(ref, dict):
        return evaluate_passes(rec, ref, source)
    if ref not in evaluators:
        rec.error(source, f"names the evaluator '{ref}', which evaluators does not define ({', '.join(evaluators) or 'none'})")
        return None
    return evaluate_passes(rec, evaluators[ref], ("evaluators", ref))


def _search(rec: Record, data: dict[str, Any], settings: dict[str, Any], where: dict[str, tuple], steps: dict[str, Step],
            evaluation: Evaluation | None) -> None:
    found = [(rec.source.lines.get(source, 0), f"passes.{step.name}.{key}", value)
             for step in steps.values() for key, (value, source) in step.search.items()]
    space = {key: value for _, key, value in sorted(found, key=lambda item: item[0])}  # in the file's order, as a sampler draws them
    strategy = settings.get("search_strategy")
    at = where.get("search_strategy", ("search_strategy",))
    if not strategy:
        if space:
            first = next(iter(step.search.values() for step in steps.values() if step.search))
            rec.error(next(iter(first))[1], "a search value needs a search_strategy (e.g. {execution_order: joint, sampler: tpe, "
                      "sampler_config: {max_samples: 8}}); or give one value")
        return
    body = strategy if isinstance(strategy, dict) else {}
    known = {"execution_order", "sampler", "sampler_config", "search_algorithm", "search_algorithm_config", "max_iter",
             "max_time", "output_model_num", "stop_when_goals_met", "include_pass_params"}
    for key in body:
        if key not in known:
            rec.unknown((*at, key), known, "Olive's search_strategy")
    for key in (set(body.get("sampler_config") or {}) | set(body.get("search_algorithm_config") or {})) - {"max_samples", "num_samples", "seed"}:
        inner = "sampler_config" if key in (body.get("sampler_config") or {}) else "search_algorithm_config"
        rec.drop(("search",), (*at, inner, key), "slimops's samplers take trials and seed only", warn=False)
    if not space:
        rec.drop(("search",), at, "no pass has search values, so there is nothing to search; the pipeline runs once")
        return
    config = {**(body.get("sampler_config") or {}), **(body.get("search_algorithm_config") or {})}
    sampler = str(body.get("sampler") or body.get("search_algorithm") or "tpe").lower()
    search: dict[str, Any] = {"space": space, "strategy": SAMPLERS.get(sampler, "tpe")}
    if sampler not in SAMPLERS:
        rec.error((*at, "sampler"), f"the sampler '{sampler}' has no slimops equivalent; give tpe, random or sequential")
    trials = config.get("max_samples") or config.get("num_samples") or body.get("max_iter")
    if trials:
        search["trials"] = int(trials)
    if "seed" in config:
        search["seed"] = int(config["seed"])
    if str(body.get("execution_order", "joint")).lower() == "pass-by-pass":
        rec.note(("search",), (*at, "execution_order"), "slimops searches every pass's values jointly; each trial reuses the "
                 "cached nodes it shares with earlier ones", warn=True)
    for key in ("max_time", "stop_when_goals_met"):
        if body.get(key):
            rec.drop(("search",), (*at, key), "slimops runs the trials it is given (search.trials)")
    for key in ("output_model_num", "include_pass_params"):
        if key in body:
            rec.drop(("search",), (*at, key), "slimops keeps every trial's results and marks the best (or the Pareto front)", warn=False)
    objectives = sorted(evaluation.objectives) if evaluation else []
    if not objectives:
        metrics = [metric for _, body_, _ in (evaluation.bodies if evaluation else []) for metric in body_["metrics"]]
        if not metrics:
            rec.error(at, "a search ranks its trials by an evaluator's metrics: set the engine's evaluator")
            return
        if metrics[0].startswith("lm_eval:"):
            rec.error(at, f"a search over an LMEvaluator ranks trials by a metric of its task, which lm-eval names only when it "
                      f"runs: convert without search_strategy, then add search.objectives (e.g. {{metric: "
                      f"{metrics[0].removeprefix('lm_eval:')}/acc}}) and the search values to the pipeline")
            return
        objectives = [(1, metrics[0], "minimize" if lower_is_better(metrics[0]) else "maximize")]
        rec.note(("search",), at, f"no metric has a priority; trials are ranked by {metrics[0]}", warn=True)
    search["objectives"] = [{"metric": metric, "direction": direction} for _, metric, direction in objectives]
    for key, value in search.items():
        rec.put(("search", key), value, at)

