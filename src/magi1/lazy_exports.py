"""Package namespaces whose names are imported on first use.

A package `__init__` that imports every submodule drags torch into anything that touches the package; the
torch-free parts (checkpoint layouts, chunk counts) are needed by the CLI's checks, which run before torch loads.

    __getattr__, __all__ = lazy_exports(__name__, {"load_dit": "loader", ...})
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping


def lazy_exports(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """A module `__getattr__` resolving each public name from its submodule, and the matching `__all__`."""

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    return __getattr__, sorted(where)
