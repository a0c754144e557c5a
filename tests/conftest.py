"""Shared fixtures: tiny base models and toy tasks, built once per test session (no downloads)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from modalprompt.backbone import load_backbone
from modalprompt.config import EvaluationConfig, MethodConfig, ModelConfig, TaskConfig, TrainingConfig
from modalprompt.tiny import build_tiny_base, write_toy_tasks


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("base")
    return build_tiny_base(base / "llava", base / "clip", seed=0)


@pytest.fixture(scope="session")
def toy_tasks(tmp_path_factory) -> dict[str, TaskConfig]:
    folders = write_toy_tasks(tmp_path_factory.mktemp("toy"), seed=0, train_size=16, test_size=6)
    return {
        name: TaskConfig(
            name=name, train_file=str(f / "train.json"), eval_file=str(f / "test.json"), image_root=str(f)
        )
        for name, f in folders.items()
    }


@pytest.fixture(scope="session")
def backbone(tiny_base):
    llava, clip = tiny_base
    return load_backbone(ModelConfig(llava=str(llava), clip=str(clip), device="cpu"))


@pytest.fixture
def method() -> MethodConfig:
    return MethodConfig(prefix_length=4)


@pytest.fixture
def training() -> TrainingConfig:
    return TrainingConfig(epochs=1, batch_size=4, lr=1e-2, warmup_ratio=0.0)


@pytest.fixture
def evaluation() -> EvaluationConfig:
    return EvaluationConfig(batch_size=4, max_new_tokens=4)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def with_changes(obj, **changes):
    return dataclasses.replace(obj, **changes)
