"""The package's shape holds: no import cycle, no circle between its folders, and the parts that must stay
light import no torch.

The import graph is read from the source (every `import` of a modalprompt module, in functions too), so a
cycle is caught even where a lazy import hides it at run time. Between modules, imports under
`if TYPE_CHECKING:` are left out (a module and its helper may name each other's types); between folders
they count too: a folder that needs another's types sits above it.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modalprompt"
HEAVY = ("torch", "transformers", "mlflow")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, type_checking: bool = False) -> set[str]:
    """The modalprompt modules a file imports (`from modalprompt.x import y` counts y when y is a module);
    those under `if TYPE_CHECKING:` only with `type_checking`."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if not type_checking and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("modalprompt"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("modalprompt"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path, type_checking) if m in modules and m != name}
        for name, path in modules.items()
    }


def _folder(module: str) -> str:
    """The folder a module belongs to (modalprompt.methods.l2p.model: modalprompt.methods); a module at the
    package's top (modalprompt.config) stands alone."""
    return ".".join(module.split(".")[:2])


def folder_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph with each folder's modules as one node."""
    graph: dict[str, set[str]] = {}
    for module, imported in modules.items():
        node = graph.setdefault(_folder(module), set())
        node.update(_folder(m) for m in imported if _folder(m) != _folder(module))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_no_circle_between_folders_type_checking_imports_included():
    """A folder imports another only if that one imports nothing of it back, even for type hints: config
    knows no method, model/ and methods/ reach no higher than model/checkpoint.py."""
    graph = folder_graph(import_graph(type_checking=True))
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_folder_check_sees_a_type_checking_import():
    """The test above can fail: a type hint of config.py on a method, or of model/ on run/, is a circle."""
    for importer, imported in (("modalprompt.config", "modalprompt.methods.base"),
                               ("modalprompt.model.pool", "modalprompt.run.train")):  # fmt: skip
        modules = import_graph(type_checking=True)
        modules[importer].add(imported)
        assert find_cycle(folder_graph(modules)) is not None, (importer, imported)


def test_the_cycle_finder_finds_a_cycle():
    """The test above can fail: a graph with a cycle through a parent package is reported."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    graph = import_graph()
    graph["modalprompt.run.submit"].add("modalprompt.cli")  # the cycle this layout removed
    assert find_cycle(graph) is not None


def _loaded_by(statements: list[str]) -> list[str]:
    """The heavy libraries loaded by running these import statements in a fresh process."""
    code = "\n".join([*statements, "import json, sys", "print(json.dumps(sorted(sys.modules)))"])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return sorted({m.split(".")[0] for m in json.loads(done.stdout)} & set(HEAVY))


def workflow_imports() -> list[str]:
    """The import statements of the Snakefile and its rules that name a modalprompt module."""
    sources = [ROOT / "workflow" / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    pattern = re.compile(
        r"^(?:from modalprompt[\w.]* import (?:\([^)]*\)|[^\n]*)|import modalprompt[^\n]*)", re.M
    )
    return [m.group(0) for source in sources for m in pattern.finditer(source.read_text())]


def test_the_workflow_parse_imports_no_torch_transformers_or_mlflow():
    """The Snakefile's own imports, run in a fresh process: parsing the DAG (on every cluster job too) pays
    for none of the heavy libraries."""
    statements = workflow_imports()
    assert any("modalprompt.config" in s for s in statements) and any("methods" in s for s in statements)
    assert _loaded_by(statements) == []


@pytest.mark.parametrize(
    "module",
    ["modalprompt.config", "modalprompt.layout", "modalprompt.methods", "modalprompt.scoring.report",
     "modalprompt.scoring.scorers", "modalprompt.data.validation", "modalprompt.tracking", "modalprompt.bench.toy",
     "modalprompt.cost", "modalprompt.scoring.overlap"],
)  # fmt: skip
def test_light_modules_stay_light(module):
    """The config, the methods' registry, the report and scoring, validation and tracking import no torch
    (tracking imports mlflow only when it records)."""
    assert _loaded_by([f"import {module}"]) == []


def test_the_light_check_can_fail():
    assert _loaded_by(["import modalprompt.model.selection"]) == ["torch"]


def test_every_package_file_is_tracked_by_git():
    """An ignore pattern must not hide a module: a clean clone has what this checkout runs (an unanchored
    `data/` once hid modalprompt/data/__init__.py)."""
    done = subprocess.run(
        ["git", "ls-files", "modalprompt", "workflow"], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = set(done.stdout.split())
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "workflow").rglob("*.smk"), *(ROOT / "workflow").rglob("*.rst")]
    untracked = [str(p.relative_to(ROOT)) for p in files if str(p.relative_to(ROOT)) not in tracked]
    assert not untracked, f"not in git (check .gitignore): {untracked}"
