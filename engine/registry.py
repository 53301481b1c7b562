"""Finding passes: built-in names, the `slimops.passes` entry-point group, or `module:Class`.

Built-ins are listed by import path in `slimops.passes.BUILTIN` and imported only when asked
for, so looking a pass up never imports torch. Every class found is checked against the plugin
contract and its Params made strict (unknown keys are errors at any depth). A plugin that fails
to import is reported at its own file and line; a module beside the pipeline never replaces one
Python would otherwise import (the standard library's `json`, an installed package).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import re
import sys
import traceback
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import to_jsonable_python

from slimops.plugin import Pass

ENTRY_POINT_GROUP = "slimops.passes"


class PassNotFound(LookupError):
    pass


def _import_path(spec: str, search_dir: Path | None = None) -> type[Pass]:
    """The class `spec` (`module:Class`) names; its module is looked for beside the pipeline
    (`search_dir`) first, then among installed ones.

    The pipeline folder is searched for the plugin's own module only: it joins the end of
    sys.path while the plugin imports, so a `json.py` beside the pipeline never replaces the
    standard library's, and a plugin module named like a module Python would otherwise import
    is refused with a rename to make.
    """
    module_name, _, attr = spec.partition(":")
    top = module_name.partition(".")[0]
    if not top or not attr:
        raise PassNotFound(f"'{spec}' is not module:Class (e.g. 'mypass:MyPass' for class MyPass in mypass.py)")
    if search_dir is not None:
        search_dir = search_dir.resolve()
    beside = importlib.machinery.PathFinder.find_spec(top, [str(search_dir)]) if search_dir is not None else None
    try:
        if beside is not None:
            module = _import_beside(beside, module_name, attr, search_dir)
        elif top in sys.stdlib_module_names:
            raise PassNotFound(f"'{top}' is a standard-library module, not a plugin: name your pass's module "
                               f"otherwise (e.g. {top}_pass.py beside the pipeline, then 'type: {top}_pass:{attr}')")
        else:
            module = importlib.import_module(module_name)
    except PassNotFound:
        raise
    except SystemExit as err:  # its exit code would be slimops's (3 reads as a missed goal), with nothing said
        raise PassNotFound(f"importing '{module_name}' for pass '{spec}' called sys.exit({err.code!r}); a plugin module "
                           "must not exit when imported (put script code under `if __name__ == \"__main__\":`)") from None
    except Exception as err:  # a plugin with a bug: say where in its files, not a traceback
        if isinstance(err, ModuleNotFoundError) and err.name and f"{module_name}.".startswith(f"{err.name}."):
            raise PassNotFound(f"cannot import module '{module_name}' for pass '{spec}': {err}") from None
        if beside is not None:  # the plugin's own package, and the modules beside the pipeline it may import
            roots = [*search_dir.glob("*.py"), *map(Path, beside.submodule_search_locations or ())]
        else:
            roots = [*_files_of(top), *_files_of(module_name.rpartition(".")[0] or top)]
        raise PassNotFound(f"importing '{module_name}' for pass '{spec}' raised {_located(err, roots, search_dir)}") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise PassNotFound(f"module '{module_name}' has no '{attr}'")
    return _checked(cls, spec)


_BESIDE: set[str] = set()  # top-level modules this process loaded from a pipeline folder


def function_problem(spec: str, folder: Path) -> str | None:
    """Why `module:function` cannot be imported beside the pipeline in `folder`, or None.

    Finds the module without running it (its code runs when the pass imports it); a dotted module
    is checked as far as its top-level package, which finding the rest would import.
    """
    module_name, _, function = spec.partition(":")
    if not module_name or not function.isidentifier():
        return f"'{spec}' is not module:function"
    top = module_name.split(".")[0]
    if importlib.machinery.PathFinder.find_spec(top, [str(folder)]) or importlib.util.find_spec(top):
        return None
    close = difflib.get_close_matches(top, [p.stem for p in folder.glob("*.py")], n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"put {top}.py next to the pipeline file"
    return f"no module '{top}' beside the pipeline ({folder}) or installed; {hint}"


def _import_beside(found: importlib.machinery.ModuleSpec, module_name: str, attr: str, folder: Path):
    """Import `module_name` whose top-level module `found` lies in the pipeline folder `folder`,
    refusing a name that another module of this process has or would have."""
    top, origin = found.name, _origin(found)
    rename = (f"rename {Path(origin).name} beside the pipeline (e.g. to {top}_pass{Path(origin).suffix}) "
              f"and write 'type: {module_name.replace(top, top + '_pass', 1)}:{attr}'")
    if top in sys.stdlib_module_names:
        raise PassNotFound(f"'{top}' is a standard-library module, which a plugin of that name would replace: {rename}")
    loaded = sys.modules.get(top)
    fresh = loaded is None or _origin(getattr(loaded, "__spec__", None)) != origin
    if fresh:
        if loaded is not None and top not in _BESIDE:
            raise PassNotFound(f"slimops already uses a module '{top}' ({getattr(loaded, '__file__', None) or 'built in'}), "
                               f"which a plugin of that name would replace: {rename}")
        other = importlib.util.find_spec(top) if loaded is None else None
        if other is not None and _origin(other) != origin:
            raise PassNotFound(f"'{top}' is also the installed module {_origin(other)}, which a plugin of that "
                               f"name would hide: {rename}")
        for name in [n for n in sys.modules if n == top or n.startswith(f"{top}.")]:
            del sys.modules[name]  # the same name loaded from another pipeline's folder
        module = importlib.util.module_from_spec(found)
        sys.modules[top] = module
        _BESIDE.add(top)
    appended = str(folder) not in sys.path
    if appended:
        sys.path.append(str(folder))  # the plugin's own helpers beside it; last, so they shadow nothing
    try:
        if fresh:
            try:
                found.loader.exec_module(module)
            except BaseException:
                del sys.modules[top]
                raise
        return importlib.import_module(module_name)
    finally:
        if appended:
            sys.path.remove(str(folder))


def _origin(spec) -> str:
    """Where a module spec points: its file, or a namespace package's first folder."""
    if spec is None:
        return ""
    return spec.origin or next(iter(spec.submodule_search_locations or ()), "")


def _files_of(name: str) -> list[Path]:
    """The folder (package) or file (module) of an importable module, without running it."""
    try:
        found = importlib.util.find_spec(name)
    except Exception:  # a broken parent package: nothing to point at
        return []
    if found is None:
        return []
    return [Path(p) for p in found.submodule_search_locations or ()] or ([Path(found.origin)] if found.origin else [])


def _located(err: BaseException, roots: list[Path], base: Path | None) -> str:
    """`Type at FILE:LINE: message` at the deepest traceback frame inside `roots` (files, and
    folders counted with everything under them), or where a SyntaxError is; FILE is relative to `base`."""
    message, place = str(err), None
    if isinstance(err, SyntaxError) and err.filename:
        message, place = err.msg, (err.filename, err.lineno)
    else:
        for frame in reversed(traceback.extract_tb(err.__traceback__)):
            path = Path(frame.filename)
            if any(path == root or (root.is_dir() and path.is_relative_to(root)) for root in roots):
                place = (frame.filename, frame.lineno)
                break
    if place is None:
        return f"{type(err).__name__}: {message}"
    path = Path(place[0])
    if base is not None and path.is_relative_to(base):
        path = path.relative_to(base)
    return f"{type(err).__name__} at {path}:{place[1]}: {message}"


class _ForbidExtra:
    """Mixed into a pass's Params by the registry: validating a config rejects unknown keys at
    every depth (nested models too), whatever `extra` the plugin set; free-form settings belong
    in a `dict` field."""

    @classmethod
    def model_validate(cls, obj, *, extra="forbid", **kwargs):
        return super().model_validate(obj, extra=extra, **kwargs)


def _checked(cls: object, where: str) -> type[Pass]:
    """`cls` if it keeps the plugin contract, else a PassNotFound that says which rule it breaks.

    Its Params becomes a strict subclass: a misspelt key is an error with a did-you-mean, never a
    silently used default, even where the plugin wrote `extra="ignore"` or `"allow"`.
    """
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise PassNotFound(f"'{where}' is not a subclass of slimops.Pass")
    if not cls.name:
        raise PassNotFound(f"pass '{where}' sets no `name` (the `type:` users write)")
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise PassNotFound(f"pass '{where}': Params must be a pydantic BaseModel")
    if not issubclass(params, _ForbidExtra):
        cls.Params = type(params.__name__, (_ForbidExtra, params), {
            "model_config": ConfigDict(extra="forbid"), "__module__": params.__module__,
            "__qualname__": params.__qualname__, "__doc__": params.__doc__})
    return cls


def describe(name: str, cls: type[Pass]) -> dict[str, Any]:
    """A pass as `slimops passes` shows it, JSON-ready: name, about (its docstring's first line),
    consumes (None: any), produces (None: its input's kind), per_target, and params, each with
    name, type, required, default (when not required) and description."""
    params = []
    for field, info in cls.Params.model_fields.items():
        row: dict[str, Any] = {"name": field, "type": _type_name(info.annotation), "required": info.is_required()}
        if not info.is_required():  # a default_factory's value, not pydantic's PydanticUndefined
            row["default"] = to_jsonable_python(info.get_default(call_default_factory=True, validated_data={}), fallback=repr)
        row["description"] = info.description or ""
        params.append(row)
    return {"name": name, "about": (cls.__doc__ or "").strip().partition("\n")[0],
            "consumes": None if cls.consumes is None else list(cls.consumes), "produces": cls.produces,
            "per_target": cls.per_target, "params": params}


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("typing.", "").replace("NoneType", "None")
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", text)  # slimops.passes.parity.X -> X


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


class Registry:
    """Every pass slimops can find from one config folder."""

    def __init__(self, search_dir: Path | None = None):
        from slimops.passes import BUILTIN

        self.search_dir = search_dir
        self._builtin = dict(BUILTIN)
        self._plugin_points: dict[str, importlib.metadata.EntryPoint] | None = None
        self._loaded: dict[str, type[Pass]] = {}

    @property
    def _plugins(self) -> dict[str, importlib.metadata.EntryPoint]:
        """Installed plugin passes; read on first need (scanning every installed package costs ~25 ms)."""
        if self._plugin_points is None:
            self._plugin_points = _entry_points()
        return self._plugin_points

    def names(self) -> list[str]:
        return sorted({*self._builtin, *self._plugins})

    def get(self, type_name: str) -> type[Pass]:
        """The pass class for a `type:` value.

        Raises:
            PassNotFound: with a did-you-mean when the name is close to a known one.
        """
        if type_name in self._loaded:
            return self._loaded[type_name]
        if ":" in type_name:
            cls = _import_path(type_name, self.search_dir)
        elif type_name in self._builtin:
            cls = _import_path(self._builtin[type_name])
        elif type_name in self._plugins:
            try:
                cls = self._plugins[type_name].load()
            except Exception as err:
                where = _located(err, _files_of(self._plugins[type_name].module.partition(".")[0]), None)
                raise PassNotFound(f"the plugin pass '{type_name}' failed to load: {where}") from None
            cls = _checked(cls, f"entry point {type_name}")
        else:
            close = difflib.get_close_matches(type_name, self.names(), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise PassNotFound(
                f"unknown pass type '{type_name}'{hint} (see 'slimops passes', or give module:Class for your own)"
            )
        self._loaded[type_name] = cls
        return cls

    def all(self) -> tuple[dict[str, type[Pass]], dict[str, str]]:
        """Every pass that loads, and for each one that does not, why (never dropped unsaid)."""
        found, broken = {}, {}
        for name in self.names():
            try:
                found[name] = self.get(name)
            except PassNotFound as err:
                broken[name] = str(err)
        return found, broken

    def converters(self) -> list[type[Pass]]:
        """Built-in passes the planner may insert to turn one kind into another (a GGUF into HF)."""
        return [cls for cls in self.all()[0].values() if cls.converts]
