"""Stage checkpoints: only what a stage trained (ModalPrompt: P_t, MLP_t; other methods: their LoRA
adapter, prompt pool or prompt components) in safetensors, plus a self-describing JSON.

A stage folder holds `task.safetensors` and `stage.json`. Both are written atomically (temp file, fsync,
rename), the JSON last: a folder without a JSON that matches its tensors is not a checkpoint. Loading
stage s reads the folders of tasks 1..s in order and refuses files from another model family or base model,
an incompatible method config, or a chain whose earlier stages were retrained since.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch

from modalprompt import __version__
from modalprompt.errors import CheckpointError
from modalprompt.files import atomic_write_bytes, atomic_write_text, sha256_file
from modalprompt.layout import META_FILE, TENSORS_FILE

if TYPE_CHECKING:
    from modalprompt.model.wrapper import ModalPromptModel

FORMAT_VERSION = 1


@dataclass
class StageMeta:
    task: str
    stage: int  # 1-based position in the task sequence
    base_fingerprint: str
    method_structure: dict[str, Any]  # settings that define the tensors' meaning (must match to load)
    method_hash: str  # hash of all method settings used in training (recorded, not enforced)
    training_hash: str
    tensors_sha256: str
    previous: list[
        dict[str, str]
    ]  # [{"task", "tensors_sha256"}] of stages 1..s-1, the chain it was trained on
    shapes: dict[str, list[int]]
    package_version: str = __version__
    torch_version: str = torch.__version__
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    family: str = "llava"  # the base's model family (files written before it was recorded are LLaVA-1.5's)


def save_stage(trained: Any, folder: Path, meta: StageMeta) -> Path:
    """Write what the stage trained (a module or anything with `state_dict()`, or a mapping of tensors) and
    its metadata; returns the folder. `meta.tensors_sha256` is filled in."""
    folder.mkdir(parents=True, exist_ok=True)
    state = trained if isinstance(trained, Mapping) else trained.state_dict()
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    data = safetensors.torch.save(tensors)  # no header metadata: its key order varies between processes
    atomic_write_bytes(folder / TENSORS_FILE, data)
    meta.tensors_sha256 = hashlib.sha256(data).hexdigest()
    meta.shapes = {k: list(v.shape) for k, v in tensors.items()}
    atomic_write_text(folder / META_FILE, json.dumps(asdict(meta), indent=2, sort_keys=True) + "\n")
    return folder


def read_meta(folder: Path) -> StageMeta:
    path = folder / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {META_FILE}: not a finished stage checkpoint (rerun that stage)")
    try:
        raw = json.loads(path.read_text())
        meta = StageMeta(**raw)
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable stage metadata ({err})") from err
    if meta.format_version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {meta.format_version}, this package reads {FORMAT_VERSION}"
        )
    return meta


def read_stage_tensors(folder: Path, meta: StageMeta) -> dict[str, torch.Tensor]:
    path = folder / TENSORS_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder}: {TENSORS_FILE} is missing (rerun stage {meta.stage}, task {meta.task})"
        )
    actual = sha256_file(path)
    if actual != meta.tensors_sha256:
        raise CheckpointError(
            f"{path}: contents (sha256 {actual[:12]}) differ from {META_FILE} ({meta.tensors_sha256[:12]}): "
            f"the file is truncated or was replaced; rerun stage {meta.stage} ({meta.task})"
        )
    return safetensors.torch.load_file(path)


def check_compatible(
    folder: Path, meta: StageMeta, fingerprint: str, structure: dict[str, Any], family: str | None = None
) -> None:
    if family is not None and meta.family != family:
        raise CheckpointError(
            f"{folder} was trained on a {meta.family} base model, but the loaded base model is a {family}: "
            f"set model.family and model.llava to the {meta.family} base it was trained with, or retrain the stages"
        )
    if meta.base_fingerprint != fingerprint:
        raise CheckpointError(
            f"{folder} was trained on base model {meta.base_fingerprint}, but the loaded base model is "
            f"{fingerprint}: use the model.llava / model.clip it was trained with, or retrain the stages"
        )
    if meta.method_structure != structure:
        raise CheckpointError(
            f"{folder} was trained with method settings {meta.method_structure}, incompatible with the "
            f"configured {structure}: restore those method settings or retrain the stages"
        )


def check_chain(folders: list[Path], metas: list[StageMeta]) -> None:
    """Stage i must sit at position i and must have been trained on exactly the earlier files given."""
    for i, (folder, meta) in enumerate(zip(folders, metas, strict=True)):
        if meta.stage != i + 1:
            raise CheckpointError(
                f"{folder} holds stage {meta.stage} ({meta.task}) but was given as stage {i + 1}"
            )
        expected = [{"task": m.task, "tensors_sha256": m.tensors_sha256} for m in metas[:i]]
        if meta.previous != expected:
            raise CheckpointError(
                f"{folder} (stage {meta.stage}, {meta.task}) was trained after other versions of stages 1..{i}: "
                f"its record {[p['task'] + ':' + p['tensors_sha256'][:8] for p in meta.previous]} vs given "
                f"{[p['task'] + ':' + p['tensors_sha256'][:8] for p in expected]}; rerun from the first changed stage"
            )


def load_stages(model: ModalPromptModel, folders: list[Path], only_last: bool = False) -> list[StageMeta]:
    """Add the tasks of stages 1..s (in order) to the model's prompt store, frozen. With `only_last`, the
    chain is checked but only stage s's tensors are added (the shared prompt of seq_prompt)."""
    folders = [Path(f) for f in folders]
    metas = [read_meta(f) for f in folders]
    check_chain(folders, metas)
    pairs = list(zip(folders, metas, strict=True))
    for folder, meta in pairs[-1:] if only_last else pairs:
        check_compatible(
            folder, meta, model.backbone.fingerprint, model.method.structure(), model.backbone.family
        )
        tensors = read_stage_tensors(folder, meta)
        task = model.add_task(meta.task)  # frozen
        try:
            task.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{folder}: tensors do not fit this model ({err})") from err
    return metas


def read_chain(folders: list[Path]) -> list[StageMeta]:
    """The metadata of stages 1..s given in order, the chain checked (each trained on exactly the earlier
    files given)."""
    folders = [Path(f) for f in folders]
    metas = [read_meta(f) for f in folders]
    check_chain(folders, metas)
    return metas


def load_tensors(
    folder: Path, meta: StageMeta, fingerprint: str, structure: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """A stage file's tensors, after checking that it fits the loaded base and the method's structure."""
    check_compatible(Path(folder), meta, fingerprint, structure)
    return read_stage_tensors(Path(folder), meta)
