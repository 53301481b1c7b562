"""Finding passes: built-in names, the `slimops.passes` entry-point group, or `module:Class`.

Built-ins are listed by import path in `slimops.passes.BUILTIN` and imported only when asked
for, so looking a pass up never imports torch.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from slimops.plugin import Pass

ENTRY_POINT_GROUP = "slimops.passes"


class PassNotFound(LookupError):
    pass


def _import_path(spec: str, search_dir: Path | None = None) -> type[Pass]:
    module_name, _, attr = spec.partition(":")
    added = False
    if search_dir is not None and str(search_dir) not in sys.path:
        sys.path.insert(0, str(search_dir))
        added = True
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise PassNotFound(f"cannot import module '{module_name}' for pass '{spec}': {err}") from None
    except Exception as err:  # a plugin with a bug: say where, not a traceback
        raise PassNotFound(f"importing '{module_name}' for pass '{spec}' raised {type(err).__name__}: {err}") from None
    finally:
        if added:
            sys.path.remove(str(search_dir))
    cls = getattr(module, attr, None)
    if cls is None:
        raise PassNotFound(f"module '{module_name}' has no '{attr}'")
    return _checked(cls, spec)


def _checked(cls: object, where: str) -> type[Pass]:
    """`cls` if it keeps the plugin contract, else a PassNotFound that says which rule it breaks.

    A Params that leaves pydantic's `extra` unset gets a strict subclass (unknown keys are errors);
    one that sets `extra="allow"` keeps it.
    """
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise PassNotFound(f"'{where}' is not a subclass of slimops.Pass")
    if not cls.name:
        raise PassNotFound(f"pass '{where}' sets no `name` (the `type:` users write)")
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise PassNotFound(f"pass '{where}': Params must be a pydantic BaseModel")
    if params.model_config.get("extra") is None:
        # pydantic ignores unknown keys by default; a misspelt key must be an error, not a silent default
        cls.Params = type(params.__name__, (params,), {"model_config": ConfigDict(**params.model_config, extra="forbid"),
                                                       "__module__": params.__module__, "__doc__": params.__doc__})
    return cls


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
                raise PassNotFound(f"the plugin pass '{type_name}' failed to load: {type(err).__name__}: {err}") from None
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
