"""Planning: a validated config becomes a DAG of nodes, one per pass and target, each with its key.

- File order chains passes; `inputs:` gives fan-out and fan-in.
- A pass that depends on the target (or reads a node that does) runs once per target, as
  `name@target`; the others run once.
- A GGUF (or other) input that a pass cannot read is converted by a `converts` pass, inserted here.
- Cycles, kind mismatches, missing packages and targets a pass cannot serve are `PlanError`s.
- Each node's key is the sha256 of what it is made from (`slimops.keys.node_key`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from slimops.cache import Cache
from slimops.storage import cache_of
from slimops.config import MODEL_INPUT, PassConfig, PipelineConfig
from slimops.config.data import data_issues
from slimops.config.search import objective_issues
from slimops.errors import ConfigError, ModelError, PlanError
from slimops.families import family_issue
from slimops.keys import canonical, node_key
from slimops.inputs import DETECTED_KINDS, resolve_model
from slimops.needs import install_line, installed
from slimops.plugin import BASELINE_SUFFIX, Artifact, Pass
from slimops.targets import TargetProfile, builtin, machine_has_cuda, machine_support

DEFAULT_TARGET = "cpu"


@dataclass
class Node:
    """One unit of work: a pass, for one target when it depends on one."""

    id: str
    name: str
    config: PassConfig | None  # None for the pipeline's input model
    target_name: str | None
    target: TargetProfile
    inputs: list[str]
    kind: str
    parts: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    source: Artifact | None = None

    @property
    def short(self) -> str:
        return self.key[:12]

    @property
    def per_target(self) -> bool:
        return self.target_name is not None

    @property
    def pass_name(self) -> str:
        return self.config.type if self.config else "model"


@dataclass
class Plan:
    config: PipelineConfig
    graph: nx.DiGraph
    nodes: dict[str, Node]
    cache: Cache
    warnings: list[str] = field(default_factory=list)  # located, for the CLI to show before it runs

    def order(self) -> list[Node]:
        return [self.nodes[node_id] for node_id in nx.lexicographical_topological_sort(self.graph, key=self._position)]

    def _position(self, node_id: str) -> str:
        return f"{list(self.nodes).index(node_id):06d}"

    def cached(self, node: Node) -> bool:
        return node.source is not None or self.cache.has(node.key)

    def explain(self, node: Node) -> str:
        """Why `node` is not cached: the fields that differ from its nearest cached entry."""
        if self.cached(node):
            return "cached"
        candidates = [e for e in self.cache.entries() if e.manifest.get("node") == node.id]
        if not candidates:
            candidates = [e for e in self.cache.entries() if e.manifest.get("pass") == node.pass_name]
        if not candidates:
            return "never run"
        best, best_diff = None, None
        for entry in candidates:
            diff = _diff(entry.manifest.get("parts", {}), node.parts)
            if best_diff is None or len(diff) < len(best_diff):
                best, best_diff = entry, diff
        assert best is not None and best_diff is not None
        shown = "; ".join(best_diff[:4]) + (f"; +{len(best_diff) - 4} more" if len(best_diff) > 4 else "")
        return f"differs from {best.key[:12]}: {shown}" if best_diff else f"same parts as {best.key[:12]} (pass code changed?)"


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_diff(a, b, name + "."))
        elif canonical(a) != canonical(b):
            if name.startswith("inputs."):
                out.append(f"{name} changed (upstream node reran)")
            else:
                out.append(f"{name}: {_short(a)} -> {_short(b)}")
    return out


def _short(value: Any) -> str:
    text = canonical(value)
    return text if len(text) <= 40 else text[:37] + "..."


def build_plan(config: PipelineConfig, cache: Cache | None = None, keys: bool = True) -> Plan:
    """Expand passes into nodes, check that they fit together and that the data fits them, and key
    each one (`keys=False`: every check, the search block's objectives too, no keys; what `slimops
    validate` runs).

    Raises:
        PlanError: a cycle, a kind mismatch, a missing package, or a target a pass cannot serve.
        ModelError: the input model cannot be found.
        ConfigError: a data set does not fit the passes that read it.
    """
    cache = cache or cache_of(config)
    spec = config.spec
    targets = dict(spec.targets) or {DEFAULT_TARGET: builtin(DEFAULT_TARGET)}
    first_target = next(iter(targets.values()))
    passes = config.passes
    instances = {name: pc.cls() for name, pc in passes.items()}

    _check_cycles(config)
    _check_output_folder(config)
    if spec.engine.executor == "ray" and installed(("ray",))["ray"] is None:
        raise PlanError(f"{config.where('engine', 'executor')} engine.executor: ray needs the ray package; "
                        "pip install 'slimops[cluster]' (or use executor: local)")

    nodes: dict[str, Node] = {}
    graph = nx.DiGraph()
    expanded: dict[str, dict[str | None, str]] = {}  # pass name -> {target name or None: node id}

    family_warnings: list[str] = []
    if spec.model is not None:
        _check_model_kind(config)
        try:
            source = resolve_model(spec.model.path, spec.model.kind, config.base_dir)
        except ModelError as err:
            raise ModelError(f"{config.where('model')}: {err}") from None
        source.meta["task"] = spec.model.task
        family_warnings = _check_family(config, source)
        node = Node(MODEL_INPUT, MODEL_INPUT, None, None, first_target, [], source.kind, source=source)
        nodes[node.id] = node
        graph.add_node(node.id)
        expanded[MODEL_INPUT] = {None: node.id}

    order = _pass_order(config)
    previous: str | None = MODEL_INPUT if spec.model is not None else None
    for name in order:
        pc = passes[name]
        inst = instances[name]
        input_names = pc.inputs if pc.inputs is not None else ([] if inst.consumes == () else ([previous] if previous else []))
        if inst.consumes is not None and inst.consumes and not input_names:
            raise PlanError(f"{config.where('passes', name)} pass '{name}' ({pc.type}) needs an input ({', '.join(inst.consumes)}); add 'model:' or 'inputs:'")
        baseline_id = _baseline_node(config, nodes, graph, expanded, pc, inst, input_names, first_target)
        by_target = any(None not in expanded[i] for i in input_names) or pc.cls.per_target
        target_names: list[str | None] = list(pc.targets or targets) if by_target else [None]
        expanded[name] = {}
        for target_name in target_names:
            target = targets[target_name] if target_name is not None else first_target
            input_ids = []
            for input_name in input_names:
                ids = expanded[input_name]
                input_id = ids.get(target_name) if target_name in ids else ids.get(None)
                if input_id is None:
                    raise PlanError(f"{config.where('passes', name)} pass '{name}' reads '{input_name}', which is not built for target '{target_name}'")
                input_ids.append(_convert_if_needed(config, nodes, graph, input_id, pc, inst))
            kinds = [nodes[i].kind for i in input_ids]
            if baseline_id is not None:
                input_ids.append(baseline_id)
            for extra in inst.extra_inputs(pc.params):
                ids = expanded.get(extra)
                if ids is None:
                    known = [n for n in passes if n != name]
                    hint = difflib.get_close_matches(extra, known, n=1)
                    raise PlanError(f"{config.where('passes', name)} pass '{name}' reads '{extra}', which is not a pass"
                                    + (f"; did you mean '{hint[0]}'?" if hint else f"; passes: {', '.join(known)}"))
                extra_id = ids.get(target_name) if target_name in ids else ids.get(None)
                if extra_id is None:
                    raise PlanError(f"{config.where('passes', name)} pass '{name}' reads '{extra}', which is not built for target '{target_name}'")
                if inst.extra_input_kind and nodes[extra_id].kind != inst.extra_input_kind:
                    raise PlanError(f"{config.where('passes', name)} pass '{name}' reads '{extra}', which makes {nodes[extra_id].kind}; "
                                    f"it needs a pass that makes {inst.extra_input_kind}")
                input_ids.append(extra_id)
            node_id = f"{name}@{target_name}" if target_name else name
            node = Node(node_id, name, pc, target_name, target, input_ids, inst.output_kind(pc.params, kinds))
            _check_needs(config, node, inst)
            nodes[node_id] = node
            graph.add_node(node_id)
            for input_id in input_ids:
                graph.add_edge(input_id, node_id)
            expanded[name][target_name] = node_id
        previous = name

    _check_followed(config, nodes, instances)
    errors, warnings = data_issues(config)
    if not keys:  # validate: objectives name nodes and metrics, known from here (a search checks them itself)
        errors += objective_issues(spec.search, nodes.values(), config.lines)
    if errors:
        raise ConfigError(errors)
    warnings = [*warnings, *family_warnings]
    plan = Plan(config, graph, nodes, cache, [str(w) for w in [*config.warnings, *warnings]])
    if keys:
        for node in plan.order():
            node_key(plan, node)
        cache.memo.save()
    return plan


def _kinds(config: PipelineConfig) -> dict[str, list[str]]:
    """Every artifact kind a model can be, with the passes that make it."""
    makers: dict[str, list[str]] = {kind: [] for kind in DETECTED_KINDS}
    for name, cls in config.registry.all()[0].items():
        for kind in (*(cls.consumes or ()), cls.produces):
            if kind:
                makers.setdefault(kind, [])
        if cls.produces and not cls.converts:
            makers[cls.produces].append(name)
    return makers


def _check_model_kind(config: PipelineConfig) -> None:
    kind = config.spec.model.kind
    if kind is None:
        return
    known = sorted(_kinds(config))
    if kind not in known:
        close = difflib.get_close_matches(kind, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise PlanError(f"{config.where('model', 'kind')}: unknown kind '{kind}'; {hint}"
                        f"kinds: {', '.join(known)} (or leave it out: slimops detects it from the files)")


def _check_family(config: PipelineConfig, source: Artifact) -> list[str]:
    """A model no built-in pass can serve is a plan error; one outside the tested families, a warning."""
    issue = family_issue(Path(source.path), source.kind)
    if issue is None:
        return []
    severity, message = issue
    builtin = any(pc.cls.__module__.startswith("slimops.passes.") for pc in config.passes.values())
    if severity == "error" and builtin:
        raise PlanError(f"{config.where('model')}: {message}")
    return [f"{config.where('model')}: {message}"]


def _pass_order(config: PipelineConfig) -> list[str]:
    """File order, except that a pass comes after the passes it names in `inputs:`."""
    graph = nx.DiGraph()
    names = list(config.passes)
    for index, name in enumerate(names):
        graph.add_node(name)
        for input_name in _reads(config.passes[name]):
            if input_name != MODEL_INPUT and input_name in config.passes:
                graph.add_edge(input_name, name)
    return list(nx.lexicographical_topological_sort(graph, key=lambda n: f"{names.index(n):06d}"))


def _reads(pc: PassConfig) -> list[str]:
    """The passes a pass reads: its inputs, and what its class adds (evaluate's `reference`)."""
    return [*(pc.inputs or []), *pc.cls().extra_inputs(pc.params)]


def _check_output_folder(config: PipelineConfig) -> None:
    """What the run's claim would refuse (a folder of the user's own), found by validate and plan too."""
    from slimops.outputs import OutputFolder

    try:
        OutputFolder(config.output_dir).check()
    except ConfigError as err:
        raise ConfigError([config.lines.issue(("engine", "output_dir"), err.issues[0].message)]) from None


def _check_cycles(config: PipelineConfig) -> None:
    graph = nx.DiGraph()
    for name, pc in config.passes.items():
        for input_name in _reads(pc):
            graph.add_edge(input_name, name)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    names = [edge[0] for edge in cycle] + [cycle[0][0]]
    raise PlanError(f"{config.where('passes', cycle[0][1], 'inputs')} passes form a cycle: {' -> '.join(names)}; a pass cannot read its own output")


def _convert_if_needed(config: PipelineConfig, nodes: dict[str, Node], graph: nx.DiGraph, input_id: str, pc: PassConfig, inst: Pass) -> str:
    kind = nodes[input_id].kind
    accepts = inst.consumes
    if accepts is None or kind in accepts or kind == "any":
        return input_id
    for cls in config.registry.converters():
        if cls.consumes and kind in cls.consumes and cls.produces in accepts:
            conv_id = f"{input_id}.{cls.name}"
            if conv_id not in nodes:
                source = nodes[input_id]
                conv_pc = PassConfig(conv_id, cls.name, cls, cls.Params(), [source.name], None)
                node = Node(conv_id, conv_id, conv_pc, source.target_name, source.target, [input_id], cls.produces)
                _check_needs(config, node, cls())
                nodes[conv_id] = node
                graph.add_edge(input_id, conv_id)
            return conv_id
    kinds = _kinds(config)
    makers = sorted({name for wanted in accepts for name in kinds.get(wanted, [])})
    fix = f"read the output of a pass that makes it ({', '.join(makers)})" if makers else f"put a pass that makes {accepts[0]} before it"
    raise PlanError(
        f"{config.where('passes', pc.name)} pass '{pc.name}' ({pc.type}) reads {', '.join(accepts)}, "
        f"but its input '{input_id}' is {kind}; {fix}"
    )


def _baseline_node(config: PipelineConfig, nodes: dict[str, Node], graph: nx.DiGraph, expanded: dict, pc: PassConfig, inst: Pass, input_names: list[str], target: TargetProfile) -> str | None:
    """For a `baseline` pass, the node `<name>.before`: the same pass and params on the input model.

    It is target-independent and keyed like any node, so every target (and every search trial)
    shares one cached evaluation of the input model. None when there is no input model, or when
    the pass reads only the input model anyway.
    """
    if not pc.cls.baseline or MODEL_INPUT not in expanded or input_names == [MODEL_INPUT]:
        return None
    model_id = _convert_if_needed(config, nodes, graph, expanded[MODEL_INPUT][None], pc, inst)
    node_id = f"{pc.name}{BASELINE_SUFFIX}"
    node = Node(node_id, node_id, pc, None, target, [model_id], inst.output_kind(pc.params, [nodes[model_id].kind]))
    _check_needs(config, node, inst)
    nodes[node_id] = node
    graph.add_node(node_id)
    graph.add_edge(model_id, node_id)
    return node_id


def _check_followed(config: PipelineConfig, nodes: dict[str, Node], instances: dict[str, Pass]) -> None:
    """A node whose pass says another must finish its job (`Pass.needs_after`) has one reading it."""
    readers: dict[str, set[str]] = {}
    for node in nodes.values():
        for input_id in node.inputs:
            if node.config is not None:
                readers.setdefault(input_id, set()).add(node.config.type)
    for node in nodes.values():
        if node.config is None or node.config.name not in instances:
            continue
        need = instances[node.config.name].needs_after(node.config.params, node.target)
        if need and need[0] not in readers.get(node.id, set()):
            raise PlanError(f"{config.where('passes', node.config.name)} pass '{node.config.name}' ({node.config.type}) "
                            f"on target '{node.target_name}': {need[1]}")


def _check_needs(config: PipelineConfig, node: Node, inst: Pass) -> None:
    assert node.config is not None
    pc = node.config
    where = config.where("passes", pc.name) if pc.name in config.passes else f"pass '{node.id}'"
    alt = f"; use type: {inst.alternative} instead" if inst.alternative else ""
    libraries = installed(inst.requirements(pc.params))
    missing = [dist for dist, version in libraries.items() if version is None]
    if missing:
        names = ", ".join(f"'{d}'" for d in missing)
        raise PlanError(f"{where} pass '{pc.name}' ({pc.type}) needs the package{'s' if len(missing) > 1 else ''} {names}: "
                        f"{install_line(missing)}{alt} ('slimops doctor' checks every pass)")
    node.parts["libraries"] = libraries
    if "cuda" in inst.devices and not machine_has_cuda():
        raise PlanError(f"{where} pass '{pc.name}' ({pc.type}) needs a CUDA device, and this machine has none{alt}")
    if node.per_target and inst.executes_on_target:
        ok, why = machine_support(node.target)
        if not ok:
            raise PlanError(
                f"{where} pass '{pc.name}' ({pc.type}) must run the model on target '{node.target_name}', but {why}; "
                "run on a machine that has it, or limit this pass with `targets: [...]`"
            )
    reason = inst.check(pc.params, node.target)
    if reason:
        raise PlanError(f"{where} pass '{pc.name}' ({pc.type}) cannot serve target '{node.target_name or 'any'}': {reason}{alt}")
