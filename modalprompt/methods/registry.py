"""The registry of methods. A method's module registers its class where it is defined:

    @register
    class MyMethod(Method):
        name = "my_method"
        ...

`REGISTRY` holds one instance of each, by name, in listing order (`Method.listing_order`, then name). It
is filled when modalprompt.methods is imported: every module of that package, then the installed packages'
entry points (modalprompt/plugins.py).
"""

from __future__ import annotations

from typing import TypeVar

from modalprompt.errors import PluginError
from modalprompt.methods.base import Method, Section

M = TypeVar("M", bound=type[Method])

REGISTRY: dict[str, Method] = {}


def register(cls: M) -> M:
    """Add a method (a class decorator); a name that another class holds already is refused."""
    taken = REGISTRY.get(cls.name)
    if taken is not None and type(taken) is not cls:
        raise PluginError(
            f"method {cls.name!r} of {cls.__module__} clashes with the method of that name in "
            f"{type(taken).__module__}: give it another `name`"
        )
    entries = {**REGISTRY, cls.name: cls()}
    REGISTRY.clear()
    REGISTRY.update(sorted(entries.items(), key=lambda item: (item[1].listing_order, item[0])))
    return cls


def get(name: str) -> Method:
    try:
        return REGISTRY[str(name)]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: choose one of {sorted(REGISTRY)}") from None


def sections() -> dict[str, Section]:
    """The methods' own config sections, by key, in their owners' listing order."""
    found: dict[str, Section] = {}
    owners: dict[str, str] = {}
    for method in REGISTRY.values():
        section = method.section
        if section is None or found.get(section.key) == section:  # inherited from its owner
            continue
        if section.key in found:
            raise PluginError(
                f"methods {owners[section.key]!r} and {method.name!r} both define a config section "
                f"{section.key!r}: give one of them another key"
            )
        found[section.key], owners[section.key] = section, method.name
    for method in REGISTRY.values():
        unknown = sorted(set(method.sections) - set(found))
        if unknown:
            raise PluginError(
                f"method {method.name!r} reads config sections {unknown} that no method defines"
            )
    return found


def readers(key: str) -> list[str]:
    """The methods whose jobs read section `key`, in listing order."""
    return [method.name for method in REGISTRY.values() if key in method.sections]
