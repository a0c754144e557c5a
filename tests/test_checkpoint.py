"""Stage files: self-describing, atomic, refused when they do not belong."""

import dataclasses
import json

import pytest

from modalprompt.bases.backbone import load_backbone
from modalprompt.bench.tiny import build_tiny_base
from modalprompt.config import ModelConfig
from modalprompt.model.wrapper import ModalPromptModel
from modalprompt.run.checkpoint import (
    META_FILE,
    TENSORS_FILE,
    CheckpointError,
    atomic_write_text,
    load_stages,
    read_meta,
)
from modalprompt.run.train import train_stage


@pytest.fixture
def stage1(backbone, method, training, toy_tasks, tmp_path):
    return train_stage(
        backbone, method, training, toy_tasks["colors"], [], tmp_path / "s1", progress=False
    ).checkpoint


def test_metadata_describes_the_stage(stage1, backbone, method):
    meta = read_meta(stage1)
    assert (meta.task, meta.stage, meta.base_fingerprint) == ("colors", 1, backbone.fingerprint)
    assert meta.method_structure == method.structure() and meta.previous == []
    assert meta.package_version and meta.torch_version and len(meta.tensors_sha256) == 64


def test_load_restores_tensors_frozen(stage1, backbone, method):
    model = ModalPromptModel(backbone, method)
    load_stages(model, [stage1])
    assert model.prompts.names == ["colors"]
    assert not any(p.requires_grad for p in model.parameters())


def test_refuses_another_base_model(stage1, method, tiny_base, tmp_path):
    other_llava, _ = build_tiny_base(tmp_path / "other" / "llava", tmp_path / "other" / "clip", seed=5)
    other = load_backbone(ModelConfig(llava=str(other_llava), clip=str(tiny_base[1]), device="cpu"))
    with pytest.raises(CheckpointError, match=r"trained on base model .* but the loaded base model is"):
        load_stages(ModalPromptModel(other, method), [stage1])


def test_refuses_incompatible_method_config(stage1, backbone, method):
    changed = dataclasses.replace(method, prefix_length=method.prefix_length + 1)
    with pytest.raises(CheckpointError, match="prefix_length"):
        load_stages(ModalPromptModel(backbone, changed), [stage1])


def test_lam_and_k_changes_still_load(stage1, backbone, method):
    load_stages(ModalPromptModel(backbone, dataclasses.replace(method, lam=0.9, transfer_num=1)), [stage1])


def test_refuses_truncated_tensors(stage1, backbone, method):
    path = stage1 / TENSORS_FILE
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated or was replaced"):
        load_stages(ModalPromptModel(backbone, method), [stage1])


def test_refuses_missing_metadata(stage1, backbone, method):
    (stage1 / META_FILE).unlink()
    with pytest.raises(CheckpointError, match="not a finished stage checkpoint"):
        load_stages(ModalPromptModel(backbone, method), [stage1])


def test_refuses_stale_chain_and_wrong_order(stage1, backbone, method, training, toy_tasks, tmp_path):
    stage2 = train_stage(
        backbone, method, training, toy_tasks["shapes"], [stage1], tmp_path / "s2", progress=False
    ).checkpoint
    with pytest.raises(CheckpointError, match="given as stage 1"):
        load_stages(ModalPromptModel(backbone, method), [stage2, stage1])
    retrained = train_stage(
        backbone,
        method,
        dataclasses.replace(training, seed=9),
        toy_tasks["colors"],
        [],
        tmp_path / "s1b",
        progress=False,
    ).checkpoint
    with pytest.raises(CheckpointError, match="trained after other versions"):
        load_stages(ModalPromptModel(backbone, method), [retrained, stage2])


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, json.dumps({"v": 1}))

    class Boom(str):
        def encode(self, *args):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write_text(target, Boom("x"))
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left
