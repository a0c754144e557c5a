"""The mini-CoIN base, pretrained once and shipped inside the package (a few MB), so that the embedded
default starts training at once instead of pretraining for minutes on every new machine.

`minicoin_base/` beside this file holds `llava/`, `clip/` and `manifest.json`: the settings the base was
built from (`model.pretrain`, and the corpus's `benchmark.seed`, `generic_size`, `generic_grounding_weight` and
`test_size`, since the corpus leaves every task's test images out), the sha256 of the corpus file it read, the code commit that
built it and the sha256 of every file. The DAG installs it when the config's settings equal the manifest's
(`difference` is None) and pretrains a new base otherwise; `install` refuses files whose sha256 differs.
`make shipped-base` rebuilds it (`ship`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from modalprompt.config import BenchmarkConfig, PretrainConfig, to_jsonable
from modalprompt.errors import DataError
from modalprompt.files import atomic_write_text, sha256_file

SHIPPED = Path(__file__).resolve().parent / "minicoin_base"
MANIFEST = SHIPPED / "manifest.json"
FOLDERS = ("llava", "clip")

# The weights depend on how many threads sum each product (floating-point sums in another order); on one,
# a rebuild gives the shipped base's bytes on any machine, whatever its cores. The shipped base was built so.
PRETRAIN_THREADS = 1


def build_settings(pretrain: PretrainConfig, benchmark: BenchmarkConfig) -> dict[str, Any]:
    """Everything the base's weights depend on besides the code: pretraining and the corpus's settings."""
    corpus = {
        "seed": benchmark.seed,
        "generic_size": benchmark.generic_size,
        "test_size": benchmark.test_size,
        "generic_grounding_weight": benchmark.generic_grounding_weight,
    }
    return {"pretrain": to_jsonable(pretrain), "corpus": corpus}


def read_manifest(manifest: Path = MANIFEST) -> dict[str, Any] | None:
    return json.loads(manifest.read_text()) if manifest.is_file() else None


def files_digest(manifest: Path = MANIFEST) -> str:
    """One sha256 over the shipped files' sha256s (empty without a shipped base)."""
    shipped = read_manifest(manifest)
    text = json.dumps(shipped["files"], sort_keys=True) if shipped else ""
    return hashlib.sha256(text.encode()).hexdigest() if shipped else ""


def difference(pretrain: PretrainConfig, benchmark: BenchmarkConfig, manifest: Path = MANIFEST) -> str | None:
    """None when the shipped base was built from these settings, else why it cannot stand in for them."""
    shipped = read_manifest(manifest)
    if shipped is None:
        return f"no shipped base ({manifest} is missing)"
    wanted = build_settings(pretrain, benchmark)
    changed = [
        f"{'model.pretrain' if part == 'pretrain' else 'benchmark'}.{key}: shipped {value!r}, config "
        f"{wanted[part].get(key)!r}"
        for part, values in shipped["settings"].items()
        for key, value in values.items()
        if wanted[part].get(key) != value
    ]
    changed += [f"model.pretrain.{k}: not in the manifest" for k in wanted["pretrain"] if
                k not in shipped["settings"]["pretrain"]]  # fmt: skip
    return "; ".join(changed) or None


def install(llava: Path, clip: Path, manifest: Path = MANIFEST) -> dict[str, Any]:
    """Copy the shipped `llava/` and `clip/` to these folders, each checked against the manifest's sha256
    and moved into place whole (a killed copy leaves no half folder)."""
    shipped = read_manifest(manifest)
    if shipped is None:
        raise DataError(f"{manifest}: no shipped base; set model.pretrain differently to pretrain one here")
    source = manifest.parent
    for name, target in zip(FOLDERS, (Path(llava), Path(clip)), strict=True):
        files = {k.split("/", 1)[1]: v for k, v in shipped["files"].items() if k.startswith(f"{name}/")}
        for relative, digest in files.items():
            if sha256_file(source / name / relative) != digest:
                raise DataError(
                    f"{source / name / relative}: sha256 differs from {manifest}; reinstall the package "
                    "or rebuild the base with `make shipped-base`"
                )
        _replace_folder(source / name, target, list(files))
    return {"installed": [str(llava), str(clip)], "commit": shipped["commit"]}


def ship(llava: Path, clip: Path, settings: dict[str, Any], corpus_file: Path, report: dict[str, Any],
         commit: str, into: Path = SHIPPED) -> Path:  # fmt: skip
    """Make freshly pretrained `llava`/`clip` folders the shipped base, with their manifest."""
    files = {}
    for name, folder in zip(FOLDERS, (Path(llava), Path(clip)), strict=True):
        kept = sorted(p.name for p in folder.iterdir() if p.is_file())
        _replace_folder(folder, into / name, kept)
        files.update({f"{name}/{f}": sha256_file(into / name / f) for f in kept})
    manifest = {"settings": settings, "corpus_sha256": sha256_file(corpus_file), "commit": commit,
                "pretraining": report, "files": files}  # fmt: skip
    atomic_write_text(into / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return into / "manifest.json"


def _replace_folder(source: Path, target: Path, names: list[str]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        for name in names:
            shutil.copy2(source / name, staging / name)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
