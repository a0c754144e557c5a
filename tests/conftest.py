"""Shared fixtures: tiny base models and toy tasks, built once per test session (no downloads); helpers."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from modalprompt.bases.backbone import load_backbone
from modalprompt.bench.tiny import build_tiny_base
from modalprompt.bench.toy import write_toy_tasks
from modalprompt.config import (
    EvaluationConfig,
    MethodConfig,
    ModelConfig,
    TaskConfig,
    TrainingConfig,
    job_to_json,
)
from modalprompt.model.checkpoint import TENSORS_FILE

REQUIRED_TIERS = "MODALPROMPT_REQUIRE_TIERS"  # e.g. "slurm": set by `make test-slurm` / `make test-browser`


def skip_unless_required(tier: str, reason: str) -> None:
    """A tier whose cluster or browser is missing skips, unless $MODALPROMPT_REQUIRE_TIERS names the tier
    (the Makefile targets that CI runs set it): then the missing environment fails the tests, so that CI
    never passes a tier that ran nothing."""
    required = {t.strip() for t in os.environ.get(REQUIRED_TIERS, "").split(",")}
    if tier in required:
        pytest.fail(f"the {tier} tier is required (${REQUIRED_TIERS}) but {reason}", pytrace=False)
    pytest.skip(reason)


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


def train_cli(job, out, *flags: str, processes: int = 1) -> subprocess.CompletedProcess:
    """`modalprompt train` in its own process (torchrun with several), as the pipeline runs it; must succeed."""
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        if processes > 1
        else []
    )
    command = [sys.executable, *launcher, "-m", "modalprompt", "train", "--settings", job_to_json(job),
               "--out", str(out), "--quiet", "--threads", "1", *flags]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def same_tensors(a_dir: Path, b_dir: Path, atol: float) -> None:
    """Two stage checkpoints hold the same fp32 tensors, within `atol`."""
    a = safetensors.torch.load_file(a_dir / TENSORS_FILE)
    b = safetensors.torch.load_file(b_dir / TENSORS_FILE)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == torch.float32 and torch.allclose(a[key], b[key], atol=atol), (
            key,
            float((a[key] - b[key]).abs().max()),
        )
