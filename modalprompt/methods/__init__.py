"""The continual-learning methods: each module (or folder) here holds one method, its settings and its model,
and registers it (`@register`, registry.py); installed packages add theirs through entry points (group
`modalprompt.methods`, modalprompt/plugins.py). Importing this package imports them all, so that
`REGISTRY` is complete; it needs no torch (the Snakefile reads the registry).
"""

from __future__ import annotations

import importlib
import pkgutil

from modalprompt import plugins
from modalprompt.methods.base import Method, Section
from modalprompt.methods.registry import REGISTRY, get, readers, register, sections

__all__ = ["REGISTRY", "Method", "Section", "get", "readers", "register", "sections"]


def _import_every_method() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    for entry_point in plugins.installed(plugins.METHODS):
        plugins.load(entry_point)  # its module registers its method


_import_every_method()
