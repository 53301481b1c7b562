"""The shape of the code: no import cycle, the engine reaching passes only through the registry,
modules of a readable size, one curated public API, and every registered pass run from a table.

`python tests/test_layout.py [ROOT]` prints the module graph (modules, edges, cycles) and the line
counts per package for the checkout at ROOT (this one by default).
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
import time
import types
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"engine": "slimops", "passes": "slimops.passes"}  # folder -> import name (pyproject's package-dir)
MAX_LINES = 500
# The one import from the engine into the passes: the registry reads the package's BUILTIN table.
ENGINE_TO_PASSES_ALLOWED = {("slimops.registry", "slimops.passes")}


# -- the import graph -------------------------------------------------------------------------------------


def module_files(root: Path) -> dict[str, Path]:
    """Every module of engine/ (as slimops.*) and passes/ (as slimops.passes.*) under `root`, by name."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _is_package(name: str, files: dict[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def _imported(node: ast.Import | ast.ImportFrom, module: str, files: dict[str, Path]) -> list[tuple[str, str]]:
    """(known module, name as written) for each slimops module one import statement in `module` names."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if _is_package(module, files) else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        # `from a import b` imports a.b when b is a submodule, else reads an attribute of a
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
    resolved = []
    for written in targets:
        target = written
        while target and target not in files:  # `import slimops.x.y` where y is an attribute (or gone), or an outside module
            target = target.rpartition(".")[0]
        if target:
            resolved.append((target, written))
    return resolved


def import_graph(root: Path = ROOT) -> nx.DiGraph:
    """Modules as nodes, an edge for every import between them (inside functions too), with its lines."""
    files = module_files(root)
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, written in _imported(node, module, files):
                    if target != module:
                        graph.add_edge(module, target)
                        graph.edges[module, target].setdefault("imports", set()).add((node.lineno, written))
    return graph


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    """The groups of modules that import each other, directly or around a loop (sorted, largest first)."""
    groups = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    return sorted(groups, key=lambda c: (-len(c), c))


def _in_passes(name: str) -> bool:
    return name == "slimops.passes" or name.startswith("slimops.passes.")


def engine_into_passes(graph: nx.DiGraph) -> list[tuple[str, str]]:
    """Imports from an engine module into a pass module, but the registry's read of BUILTIN."""
    return sorted((a, b) for a, b in graph.edges if not _in_passes(a) and _in_passes(b)
                  and (a, b) not in ENGINE_TO_PASSES_ALLOWED)


def _where(graph: nx.DiGraph, a: str, b: str, root: Path) -> str:
    imports = sorted(graph.edges[a, b]["imports"])
    return "; ".join(f"{module_files(root)[a].relative_to(root)}:{line} imports {written}" for line, written in imports)


def line_counts(root: Path = ROOT) -> dict[str, int]:
    return {folder: sum(len(p.read_text().splitlines()) for p in sorted((root / folder).rglob("*.py")))
            for folder in ("engine", "passes", "tests")}


def layout_summary(root: Path = ROOT) -> str:
    """Modules, edges, cycles, engine->passes imports and lines per package, as the closing note quotes them."""
    graph = import_graph(root)
    found = cycles(graph)
    lines = [f"modules: {graph.number_of_nodes()}", f"edges: {graph.number_of_edges()}", f"cycles: {len(found)}"]
    lines += [f"  {{{', '.join(m.removeprefix('slimops.') for m in group)}}}" for group in found]
    crossing = engine_into_passes(graph)
    lines.append(f"engine -> passes imports (besides the registry's BUILTIN): {len(crossing)}")
    lines += [f"  {_where(graph, a, b, root)}" for a, b in crossing]
    files = module_files(root)
    big = {m: len(p.read_text().splitlines()) for m, p in files.items() if len(p.read_text().splitlines()) > MAX_LINES}
    lines.append(f"modules over {MAX_LINES} lines: {len(big)}")
    lines += [f"  {files[m].relative_to(root)}: {n}" for m, n in sorted(big.items(), key=lambda kv: -kv[1])]
    counts = line_counts(root)
    lines.append("lines: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, f"{len(found)} import cycle(s), imports inside functions included:\n" + "\n".join(
        "  " + " <-> ".join(group) for group in found)


def test_the_engine_reaches_passes_only_through_the_registry():
    graph = import_graph()
    crossing = engine_into_passes(graph)
    assert not crossing, "the engine imports pass modules (only the registry may read slimops.passes.BUILTIN):\n" + "\n".join(
        f"  {_where(graph, a, b, ROOT)}" for a, b in crossing)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """Imports inside functions, relative ones, `from slimops import submodule` and `from slimops.passes import BUILTIN`."""
    for folder, text in {
        "engine/__init__.py": "def f():\n    from slimops.planner import x\n",
        "engine/planner.py": "from . import registry\n",
        "engine/registry.py": "def g():\n    from slimops.passes import BUILTIN\n",
        "engine/config/__init__.py": "from .spec import Spec\n",
        "engine/config/spec.py": "from ..errors import E\nfrom slimops import planner\n",
        "engine/errors.py": "",
        "passes/__init__.py": "BUILTIN = {}\n",
        "passes/onnx.py": "import slimops\nfrom ._onnx import tied\n",
        "passes/_onnx/__init__.py": "",
        "passes/_onnx/tied.py": "def h():\n    import slimops.passes.onnx\n",
    }.items():
        (tmp_path / folder).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / folder).write_text(text)
    graph = import_graph(tmp_path)
    assert set(graph.edges) == {
        ("slimops", "slimops.planner"), ("slimops.planner", "slimops.registry"), ("slimops.registry", "slimops.passes"),
        ("slimops.config", "slimops.config.spec"), ("slimops.config.spec", "slimops.errors"),
        ("slimops.config.spec", "slimops.planner"), ("slimops.passes.onnx", "slimops"),
        ("slimops.passes.onnx", "slimops.passes._onnx.tied"), ("slimops.passes._onnx.tied", "slimops.passes.onnx"),
    }
    assert cycles(graph) == [["slimops.passes._onnx.tied", "slimops.passes.onnx"]]
    assert engine_into_passes(graph) == []  # the registry's read of BUILTIN is the one allowed


def test_no_module_over_the_size_limit():
    over = {str(p.relative_to(ROOT)): n for p in module_files(ROOT).values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them along an idea): {over}"


# -- the public API ---------------------------------------------------------------------------------------


def test_every_package_folder_is_installed():
    """A package pyproject does not list is left out of a non-editable install (`pip install .`)."""
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {folder: name for name, folder in tool["package-dir"].items()}
    found = {folders[init.relative_to(ROOT).parts[0]] + "".join("." + part for part in init.relative_to(ROOT).parts[1:-1])
             for top in folders for init in (ROOT / top).rglob("__init__.py")}
    assert found == set(tool["packages"])


def test_public_api_is_exactly_all():
    import slimops
    import slimops.errors

    names = slimops.__all__
    problems = []
    if len(names) != len(set(names)):
        problems.append(f"duplicates in __all__: {sorted(n for n in set(names) if names.count(n) > 1)}")
    if missing := [n for n in names if not hasattr(slimops, n)]:
        problems.append(f"names in __all__ that do not resolve: {missing}")
    # submodules are bound as attributes once anything imports them: not part of the surface
    exposed = {n for n, v in vars(slimops).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    if leaked := sorted(exposed - set(names)):
        problems.append(f"public names of slimops missing from __all__ (make them private or export them): {leaked}")
    errors = {n for n, v in vars(slimops.errors).items()
              if inspect.isclass(v) and issubclass(v, slimops.errors.SlimopsError)}
    assert "GoalError" in errors, "the scan of slimops.errors found no GoalError"
    if unexported := sorted(errors - set(names)):
        problems.append(f"exceptions users can catch but not import from slimops: {unexported}")
    assert not problems, "\n".join(problems)


# -- every registered pass, from a table -----------------------------------------------------------------

# name -> (model asset, the `passes:` block), the pass under test named `p`, what it needs before it
# upstream. A pass that cannot run on this machine (CUDA only) keeps its row and has an entry in
# CANNOT_RUN_HERE: the words the planner's PlanError must say instead.
FT = "data: tone, max_steps: 2, batch_size: 4, eval_steps: 2"
PASS_ROWS: dict[str, tuple[str, str]] = {
    "fake": ("llama", "p: {type: fake}"),
    "lora": ("llama", f"p: {{type: lora, {FT}}}"),
    "dora": ("llama", f"p: {{type: dora, {FT}}}"),
    "qlora": ("llama64", f"p: {{type: qlora, {FT}}}"),
    "loha": ("llama", f"p: {{type: loha, {FT}}}"),
    "lokr": ("llama", f"p: {{type: lokr, {FT}}}"),
    "ia3": ("llama", f"p: {{type: ia3, {FT}}}"),
    "full": ("llama", f"p: {{type: full, {FT}}}"),
    "merge_adapter": ("llama", f"ft: {{type: lora, {FT}}}\np: {{type: merge_adapter}}"),
    "evaluate": ("llama", "p: {type: evaluate, data: tone, metrics: [perplexity], max_samples: 2}"),
    "from_gguf": ("gguf", "p: {type: from_gguf}"),
    "onnx": ("trained", "p: {type: onnx}"),
    "quantize": ("trained", "export: {type: onnx}\np: {type: quantize, method: rtn, bits: 4, block_size: 32}"),
    "optimize": ("bert", "export: {type: onnx}\np: {type: optimize}"),  # the builder's decoders come fused
    "parity": ("trained", "export: {type: onnx}\np: {type: parity}"),
    "generate_adapter": ("trained", f"ft: {{type: lora, {FT}}}\np: {{type: generate_adapter}}"),
}
CANNOT_RUN_HERE: dict[str, str] = {}  # name -> the words the planner's PlanError must contain


@pytest.fixture(scope="module")
def pass_assets(tmp_path_factory):
    from assets import CORPUS, tiny_bert, tiny_llama, tiny_trained_llama, tone_rows, write_jsonl, write_tiny_llama_gguf

    root = tmp_path_factory.mktemp("every-pass")
    write_jsonl(root / "tone.jsonl", tone_rows(48))
    write_jsonl(root / "text.jsonl", [{"text": text} for text in CORPUS])
    gguf = root / "tiny.gguf"
    write_tiny_llama_gguf(gguf)
    return {"root": root, "llama": tiny_llama(root / "llama"), "llama64": tiny_llama(root / "llama64", hidden=64),
            "trained": tiny_trained_llama(root / "trained"), "bert": tiny_bert(root / "bert"), "gguf": gguf,
            "cache": root / "cache"}


def _pipeline(folder: Path, pass_assets: dict, model: str, passes: str) -> Path:
    prompt = "<|im_start|>user\\n{phrase}<|im_end|>\\n<|im_start|>assistant\\n"
    text = f"""\
        name: every-pass
        model: {{path: {pass_assets[model]}}}
        data:
          tone: {{files: {pass_assets['root'] / 'tone.jsonl'}, splits: {{train: "[:40]", eval: "[40:]"}}, prompt: "{prompt}", response: "{{tone}}"}}
          text: {{files: {pass_assets['root'] / 'text.jsonl'}, splits: {{train: "[:3]", eval: "[3:]"}}, text: text}}
        targets: {{cpu: cpu}}
        engine: {{cache_dir: {pass_assets['cache']}, output_dir: out}}
        passes:
        """
    path = folder / "pipeline.yaml"
    path.write_text(textwrap.dedent(text) + textwrap.indent(passes.strip() + "\n", "  "))
    return path


def test_every_registered_pass_has_a_row():
    from slimops.registry import Registry

    missing = sorted(set(Registry().names()) - set(PASS_ROWS) - set(CANNOT_RUN_HERE))
    assert not missing, f"registered passes without a row: {missing}; add a row to PASS_ROWS in tests/test_layout.py"


@pytest.mark.parametrize("name", sorted(PASS_ROWS))
def test_every_pass_runs_on_a_tiny_model(name, pass_assets, tmp_path):
    import slimops
    from slimops.display import RunDisplay
    from slimops.registry import Registry

    cls = Registry().get(name)
    model, passes = PASS_ROWS[name]
    path = _pipeline(tmp_path, pass_assets, model, passes)
    if name in CANNOT_RUN_HERE:
        with pytest.raises(slimops.PlanError, match=CANNOT_RUN_HERE[name]):
            slimops.plan(path)
        return
    plan = slimops.plan(path)
    node = next(n for n in plan.nodes.values() if n.name == "p")
    upstream = [plan.nodes[i].kind for i in node.inputs]
    # the declared kind: `produces`, or the input's when None (unless the pass says otherwise in output_kind)
    declared = cls.produces or (upstream[0] if cls.output_kind is slimops.Pass.output_kind else node.kind)
    assert node.kind == declared, f"the planner expects a {node.kind} from {name}, which declares {declared}"
    started = time.monotonic()
    artifact = slimops.run(path, [], display=RunDisplay(quiet=True))[node.id]
    assert artifact.kind == declared, f"{name} returned a {artifact.kind}, not the {declared} it declares"
    assert Path(artifact.path).exists()
    print(f"{name}: {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    print(layout_summary(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT))
