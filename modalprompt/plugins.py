"""Methods, base-model families and scorers from installed packages, through entry points.

A package declares them in its pyproject.toml, one group each:

    [project.entry-points."modalprompt.methods"]
    my_method = "my_package.my_method"            # the module whose @register adds the method
    [project.entry-points."modalprompt.bases"]
    my_family = "my_package.my_base:MyAdapter"    # a BaseAdapter subclass, family = "my_family"
    [project.entry-points."modalprompt.scorers"]
    my_scorer = "my_package.my_scores:my_scorer"  # score(prediction, reference) -> float in [0, 1]

Each registry (modalprompt.methods, bases/backbone.py, scoring/scorers.py) loads its group when it is
imported. Entry points are read in name order, so that every listing they join is the same in every
process. No torch here: the config reads the names (its allowed values) without loading anything.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, EntryPoints, entry_points
from typing import Any

from modalprompt.errors import PluginError

METHODS = "modalprompt.methods"
BASES = "modalprompt.bases"
SCORERS = "modalprompt.scorers"


@functools.cache
def _every_entry_point() -> EntryPoints:
    return entry_points()  # one pass over the installed packages' metadata, for all three groups


def installed(group: str) -> tuple[EntryPoint, ...]:
    """The group's entry points of every installed package, by name."""
    return tuple(sorted(_every_entry_point().select(group=group), key=lambda ep: ep.name))


def names(group: str) -> list[str]:
    return [ep.name for ep in installed(group)]


def describe(entry_point: EntryPoint) -> str:
    """`name = value` with its group and the package that declares it, for error messages."""
    dist = entry_point.dist
    package = f"{dist.name} {dist.version}" if dist is not None else "an unknown package"
    return f"entry point {entry_point.name} = {entry_point.value} (group {entry_point.group}, from {package})"


def load(entry_point: EntryPoint) -> Any:
    """The object an entry point names, imported; any failure raises a PluginError that names it."""
    try:
        return entry_point.load()
    except PluginError as err:  # e.g. a method whose name is taken, raised while its module registers it
        raise PluginError(f"{describe(entry_point)}: {err}") from err
    except Exception as err:
        raise PluginError(
            f"{describe(entry_point)} failed to load: {type(err).__name__}: {err}; fix or uninstall that package"
        ) from err
