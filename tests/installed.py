"""Installing a package for a test, offline and without building it: its modules in a folder and, beside
them, a dist-info folder with its metadata and entry points, the layout an installer leaves. A process
whose PYTHONPATH holds that folder sees the package as installed (importlib.metadata reads its entry
points from there); the test's own process does not."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path


def install(site: Path, name: str, modules: dict[str, str], entry_points: dict[str, dict[str, str]],
            version: str = "0.1.0") -> Path:  # fmt: skip
    """Write `modules` (file name -> source) and the dist-info of `name` into `site`; returns `site`."""
    site.mkdir(parents=True, exist_ok=True)
    for file, source in modules.items():
        (site / file).write_text(source)
    dist_info = site / f"{re.sub(r'[-.]+', '_', name)}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
              for group, points in entry_points.items()]  # fmt: skip
    (dist_info / "entry_points.txt").write_text("\n".join(groups))
    return site


def install_project(site: Path, project: Path) -> Path:
    """Install a project folder (its pyproject.toml: name, version, py-modules and entry points) into `site`."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    modules = meta["tool"]["setuptools"]["py-modules"]
    sources = {f"{module}.py": (project / f"{module}.py").read_text() for module in modules}
    spec = meta["project"]
    return install(site, spec["name"], sources, spec.get("entry-points", {}), spec["version"])


def environment(site: Path) -> dict[str, str]:
    """This process's environment with `site` first on the path of the processes it starts."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{path}" if path else str(site)}
