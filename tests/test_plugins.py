"""Plugins: strict Params whatever the plugin wrote, import errors at the plugin's own line, no
module beside a pipeline shadowing another, and `slimops passes` reporting what it cannot load.

Each config case is a row: files written beside the pipeline, the pipeline, and the located
message `slimops validate` must print (exit 2), or None when it must pass.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

HEAD = "from typing import Any\nfrom pydantic import BaseModel, ConfigDict\nimport slimops\n"


def plugin(params: str, head: str = "", name: str = "p") -> str:
    """A plugin module: `head` at module level, then class P whose Params body is `params`."""
    return (HEAD + textwrap.dedent(head) + f"class P(slimops.Pass):\n    name = '{name}'\n    class Params({params}\n"
            "    def run(self, ctx):\n        return slimops.Artifact(path=ctx.output_dir, kind='text')\n")


TYPO = "passes:\n  b:\n    type: 'mypass:P'\n    sufix: '?'\n"

CASES = {
    # 1. Params reject unknown keys with a did-you-mean naming the plugin's own fields
    "plain BaseModel": ({"mypass.py": plugin("BaseModel):\n        suffix: str = '!'")}, TYPO,
                        (4, "passes.b.sufix", "unknown key; did you mean 'suffix'?")),
    "extra=ignore": ({"mypass.py": plugin("BaseModel):\n        model_config = ConfigDict(extra='ignore')\n        suffix: str = '!'")},
                     TYPO, (4, "passes.b.sufix", "unknown key; did you mean 'suffix'?")),
    "extra=allow": ({"mypass.py": plugin("BaseModel):\n        model_config = ConfigDict(extra='allow')\n        suffix: str = '!'")},
                    TYPO, (4, "passes.b.sufix", "unknown key; did you mean 'suffix'?")),
    "inherited Params": ({"mypass.py": plugin("Base):\n        loudness: int = 1",
                                              "class Base(BaseModel):\n    model_config = ConfigDict(extra='ignore')\n    suffix: str = '!'\n")},
                         TYPO, (4, "passes.b.sufix", "unknown key; did you mean 'suffix'?")),
    "nested model": ({"mypass.py": plugin("BaseModel):\n        inner: Inner = Inner()", "class Inner(BaseModel):\n    rank: int = 8\n")},
                     "passes:\n  b:\n    type: 'mypass:P'\n    inner:\n      rnak: 4\n",
                     (5, "passes.b.inner.rnak", "unknown key; did you mean 'rank'?")),
    "nested model in a list": ({"mypass.py": plugin("BaseModel):\n        items: list[Inner] = []",
                                                    "class Inner(BaseModel):\n    model_config = ConfigDict(extra='allow')\n    rank: int = 8\n")},
                               "passes:\n  b:\n    type: 'mypass:P'\n    items:\n      - {rank: 2}\n      - rnak: 4\n",
                               (6, "passes.b.items[1].rnak", "unknown key; did you mean 'rank'?")),
    "free-form settings go in a dict field": ({"mypass.py": plugin("BaseModel):\n        settings: dict[str, Any] = {}")},
                                              "passes:\n  b:\n    type: 'mypass:P'\n    settings: {anything: 1, goes: [2]}\n", None),
    # 2. a plugin that raises at import is shown at its own file and line, no traceback
    "raises at import": ({"mypass.py": plugin("BaseModel):\n        pass", "\n\n\nx = 1 / 0\n")},
                         "passes:\n  b: {type: 'mypass:P'}\n",
                         (2, "passes.b.type", "importing 'mypass' for pass 'mypass:P' raised ZeroDivisionError at mypass.py:7: division by zero")),
    "syntax error": ({"mypass.py": "import slimops\nclass P(slimops.Pass)\n    name = 'p'\n"}, "passes:\n  b: {type: 'mypass:P'}\n",
                     (2, "passes.b.type", "importing 'mypass' for pass 'mypass:P' raised SyntaxError at mypass.py:2: expected ':'")),
    "a helper beside it raises": ({"mypass.py": plugin("BaseModel):\n        pass", "import helper_that_breaks\n"),
                                   "helper_that_breaks.py": "X = 1\nraise RuntimeError('broken helper')\n"},
                                  "passes:\n  b: {type: 'mypass:P'}\n",
                                  (2, "passes.b.type", "importing 'mypass' for pass 'mypass:P' raised RuntimeError at helper_that_breaks.py:2: broken helper")),
    "a missing dependency": ({"mypass.py": plugin("BaseModel):\n        pass", "import not_installed_anywhere\n")},
                             "passes:\n  b: {type: 'mypass:P'}\n",
                             (2, "passes.b.type", "importing 'mypass' for pass 'mypass:P' raised ModuleNotFoundError at mypass.py:4: "
                                                  "No module named 'not_installed_anywhere'")),
    "exits at import": ({"mypass.py": plugin("BaseModel):\n        pass", "import sys\nsys.exit(3)\n")},
                        "passes:\n  b: {type: 'mypass:P'}\n",
                        (2, "passes.b.type", "importing 'mypass' for pass 'mypass:P' called sys.exit(3); a plugin module must not exit")),
    "a module that is nowhere": ({}, "passes:\n  b: {type: 'nothere:P'}\n",
                                 (2, "passes.b.type", "cannot import module 'nothere' for pass 'nothere:P': No module named 'nothere'")),
    "not module:Class": ({}, "passes:\n  b: {type: 'mypass:'}\n",
                         (2, "passes.b.type", "'mypass:' is not module:Class (e.g. 'mypass:MyPass' for class MyPass in mypass.py)")),
    # 4. no module beside a pipeline replaces one Python would otherwise import
    "a stdlib name beside the pipeline": ({"random.py": plugin("BaseModel):\n        pass").replace("class P(", "class Pass(")},
                                          "passes:\n  b: {type: 'random:Pass'}\n",
                                          (2, "passes.b.type", "'random' is a standard-library module, which a plugin of that name would "
                                                               "replace: rename random.py beside the pipeline (e.g. to random_pass.py) and "
                                                               "write 'type: random_pass:Pass'")),
    "a stdlib name for a plugin": ({}, "passes:\n  b: {type: 'random:Pass'}\n",
                                   (2, "passes.b.type", "'random' is a standard-library module, not a plugin: name your pass's module "
                                                        "otherwise (e.g. random_pass.py beside the pipeline, then 'type: random_pass:Pass')")),
    "an imported package's name": ({"yaml.py": plugin("BaseModel):\n        pass")}, "passes:\n  b: {type: 'yaml:P'}\n",
                                   (2, "passes.b.type", "slimops already uses a module 'yaml' (")),
    "helpers beside the plugin import": ({"mypass.py": plugin("BaseModel):\n        x: int = helper_that_works.X", "import helper_that_works\n"),
                                          "helper_that_works.py": "X = 3\n"}, "passes:\n  b: {type: 'mypass:P', x: 4}\n", None),
}


@pytest.mark.parametrize("files, pipeline, expected", CASES.values(), ids=CASES.keys())
def test_a_plugin_config_is_checked_and_located(project, cli, files, pipeline, expected):
    for name, text in files.items():
        (project.root / name).write_text(text)
    path = project.write(pipeline)
    code, out, err = cli("validate", "--config", path)
    if expected is None:
        assert code == 0, err
        return
    line, key, message = expected
    assert code == 2
    assert f"{path}:{line} {key}: {message}" in err
    assert "Traceback" not in err


def test_a_json_py_beside_the_pipeline_does_not_replace_the_standard_librarys(project, cli, monkeypatch):
    stdlib_json = sys.modules["json"].__file__
    monkeypatch.delitem(sys.modules, "json")  # so the plugin's `import json` looks for it afresh
    (project.root / "json.py").write_text("raise RuntimeError('the json beside the pipeline was imported')\n")
    (project.root / "uses_json.py").write_text(plugin("BaseModel):\n        text: str = json.dumps([1])", "import json\n", name="uses_json"))
    path = project.write("passes:\n  b: {type: 'uses_json:P'}\n")
    code, _, err = cli("validate", "--config", path)
    assert code == 0, err
    assert sys.modules["json"].__file__ == stdlib_json
    assert str(project.root) not in sys.path


def test_one_module_name_in_two_pipeline_folders_is_each_folders_own(project, cli):
    first, second = project.root / "one", project.root / "two"
    for folder, field in ((first, "alpha"), (second, "beta")):
        folder.mkdir()
        (folder / "mypass.py").write_text(plugin(f"BaseModel):\n        {field}: int = 1"))
    for folder, field in ((first, "alpha"), (second, "beta")):
        path = project.write(f"passes:\n  b: {{type: 'mypass:P', {field}: 2}}\n", name=f"{folder.name}/pipeline.yaml")
        code, _, err = cli("validate", "--config", path)
        assert code == 0, err


def test_an_artifact_path_the_pass_never_wrote_fails_the_node(project, cli):
    (project.root / "ghost.py").write_text(textwrap.dedent("""\
        import slimops
        from pydantic import BaseModel

        class Ghost(slimops.Pass):
            name = "ghost"

            class Params(BaseModel):
                pass

            def run(self, ctx):
                return slimops.Artifact(path=ctx.output_dir / "model.onnx", kind="onnx-model")
        """))
    path = project.write("passes:\n  g: {type: 'ghost:Ghost'}\n")
    code, _, err = cli("run", "--quiet", "--config", path)
    assert code == 1 and "the returned Artifact's path model.onnx does not exist in ctx.output_dir" in err
    assert not list((project.root / ".slimops" / "cache").glob("entries/*"))


def _install(site, name: str, source: str) -> None:
    """An installed distribution `name` whose module `name` registers pass `name`."""
    (site / f"{name}.py").write_text(source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[slimops.passes]\n{name} = {name}:P\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An installed good plugin `goodplug` and one, `brokenplug`, that raises at line 2 of its module."""
    site = tmp_path / "site"
    site.mkdir()
    _install(site, "goodplug", plugin("BaseModel):\n        level: int = 1", name="goodplug"))
    _install(site, "brokenplug", "import slimops\nraise ValueError('no config for brokenplug')\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_passes_lists_a_pass_it_cannot_load_and_exits_1(cli, site, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    code, out, err = cli("passes")
    assert code == 1
    assert "goodplug" in out and "level=1" in out
    assert (f"could not load:\n  brokenplug: the plugin pass 'brokenplug' failed to load: "
            f"ValueError at {site / 'brokenplug.py'}:2: no config for brokenplug") in out
    assert "error: 1 pass could not be loaded (listed above)" in err


def test_passes_json_for_scripts(cli, site):
    code, out, _ = cli("passes", "--json")
    assert code == 1
    listing = json.loads(out)
    assert listing["broken"] == [{"name": "brokenplug", "error": "the plugin pass 'brokenplug' failed to load: "
                                  f"ValueError at {site / 'brokenplug.py'}:2: no config for brokenplug"}]
    passes = {entry["name"]: entry for entry in listing["passes"]}
    assert passes["goodplug"] == {"name": "goodplug", "about": "", "consumes": None, "produces": None, "per_target": False,
                                  "params": [{"name": "level", "type": "int", "required": False, "default": 1, "description": ""}]}
    fake = passes["fake"]
    assert fake["consumes"] is None and fake["produces"] == "text" and fake["about"]
    for entry in listing["passes"]:  # a required param has no default; a default_factory's is its value
        for param in entry["params"]:
            assert param["required"] is ("default" not in param), (entry["name"], param)
    lora = {p["name"]: p for p in passes["lora"]["params"]}
    assert lora["data"]["required"] and lora["data"]["description"]
    assert {p["name"]: p for p in passes["generate_adapter"]["params"]}["adapters"]["default"] == {}


def test_passes_shows_required_and_factory_defaults_not_pydantic_internals(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line a pass
    code, out, _ = cli("passes")
    assert code == 0
    assert "PydanticUndefined" not in out
    assert "data (required)" in out and "adapters={}" in out
