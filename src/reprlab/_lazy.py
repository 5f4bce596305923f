"""Packages whose public names load on first use, so importing a package (or a CLI module
inside it) costs nothing until a name is used.

``install(__name__, {"name": "package.module", ...})`` in a package's ``__init__`` replaces
eager ``from .module import name`` lines. A public name that is also a submodule's name (a
function ``validate`` in ``validate.py``) stays the function, as the eager import made it; with
``callable_submodules=True`` it is the submodule made callable instead (``reprlab.capture(...)``
calls the function, ``import reprlab.capture as m`` still gives the module).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    """A module that calls its namesake function (``reprlab.capture(...)``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _LazyPackage(types.ModuleType):
    _lazy_exports: dict[str, str]

    def __getattr__(self, name: str) -> Any:
        exports = self.__dict__.get("_lazy_exports", {})
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        module = importlib.import_module(target)
        if isinstance(self.__dict__.get(name), _CallableModule):  # bound by that import
            return self.__dict__[name]
        value = getattr(module, name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # importing submodule ``pkg.validate`` binds it on the package: keep the public
        # function of that name instead, or bind the submodule made callable
        if (isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}"
                and name in self.__dict__.get("_lazy_exports", {})):
            if not self.__dict__.get("_callable_submodules"):
                return
            value.__class__ = _CallableModule
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__) | set(self.__dict__.get("_lazy_exports", {})))


def install(package: str, exports: dict[str, str], callable_submodules: bool = False) -> None:
    """Make ``exports`` (name -> module defining it) attributes of ``package`` on first use."""
    module = sys.modules[package]
    module.__class__ = _LazyPackage
    module.__dict__["_lazy_exports"] = dict(exports)
    module.__dict__["_callable_submodules"] = callable_submodules
    for name in exports:  # a submodule imported before install() may have bound the name
        if isinstance(module.__dict__.get(name), types.ModuleType):
            del module.__dict__[name]
