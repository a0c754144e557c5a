"""GPU path (skipped without CUDA): bf16 frozen base, fp32 trainable tensors, autocast, batched generation."""

import json
from pathlib import Path

import pytest
import torch
from conftest import same_tensors, train_cli

from modalprompt.bases.backbone import load_backbone
from modalprompt.config import DType, EvaluationConfig, MethodConfig, ModelConfig, TrainingConfig
from modalprompt.jobs import TrainJob
from modalprompt.run.evaluate import evaluate_stage
from modalprompt.run.train import train_stage

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_stage_on_cuda(tiny_base, toy_tasks, tmp_path):
    backbone = load_backbone(ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[1]), device="cuda"))
    assert backbone.dtype == torch.bfloat16 and backbone.llava.dtype == torch.bfloat16
    method = MethodConfig(prefix_length=4)
    training = TrainingConfig(epochs=2, batch_size=4, lr=1e-2, gradient_checkpointing=True)
    result = train_stage(backbone, method, training, toy_tasks["colors"], [], tmp_path / "s1", progress=False)
    assert result.history[-1].loss < result.history[0].loss and result.history[-1].peak_memory_mb > 0
    evaluated = evaluate_stage(
        backbone,
        method,
        EvaluationConfig(batch_size=4, max_new_tokens=4),
        toy_tasks["colors"],
        [result.checkpoint],
        progress=False,
    )
    assert len(evaluated.predictions) == 6
    for cost in (result.cost, evaluated.cost):  # GPU-hours of one GPU, its peak allocated memory
        assert (cost.device, cost.devices) == ("gpu", 1)
        assert cost.device_hours == pytest.approx(cost.wall_seconds / 3600)
        assert cost.peak_memory_mb > 0


def _zero3_job(tiny_base, toy_tasks, dtype: DType) -> TrainJob:
    return TrainJob(
        model=ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[1]), device="cuda", dtype=dtype),
        method=MethodConfig(prefix_length=4),
        training=TrainingConfig(epochs=2, batch_size=4, grad_accum_steps=2, lr=1e-2, warmup_ratio=0.0),
        task=toy_tasks["colors"],
    )


def test_zero3_on_cuda_gives_the_plain_engines_tensors(tiny_base, toy_tasks, tmp_path):
    """DeepSpeed's CUDA accelerator and NCCL, one process, an fp32 base: ZeRO-3 and ZeRO-3 with offload train
    the plain engine's tensors."""
    pytest.importorskip("deepspeed")
    job = _zero3_job(tiny_base, toy_tasks, DType.FLOAT32)
    train_cli(job, tmp_path / "plain")
    for name, flags in (
        ("zero3", ["--zero-stage", "3"]),
        ("offload", ["--zero-stage", "3", "--offload", "yes"]),
    ):
        train_cli(job, tmp_path / name, *flags)
        same_tensors(tmp_path / "plain", tmp_path / name, atol=1e-5)


def _losses(history: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in history.read_text().splitlines()]


def test_zero3_on_cuda_with_a_bf16_base_follows_the_plain_losses(tiny_base, toy_tasks, tmp_path):
    """With a bf16 base the gathered weights are the same bf16 values, but the GEMMs may pick other kernels
    (the gathered weights live in another buffer), and AdamW turns any rounding difference in a near-zero
    gradient into an lr-sized step; so the check is the loss, step by step, not the tensors bit for bit."""
    pytest.importorskip("deepspeed")
    job = _zero3_job(tiny_base, toy_tasks, DType.BFLOAT16)
    train_cli(job, tmp_path / "plain", "--history", str(tmp_path / "plain.jsonl"))
    train_cli(job, tmp_path / "zero3", "--zero-stage", "3", "--history", str(tmp_path / "zero3.jsonl"))
    plain, zero3 = _losses(tmp_path / "plain.jsonl"), _losses(tmp_path / "zero3.jsonl")
    assert len(plain) == len(zero3) > 2 and plain[-1] < plain[0]
    assert plain[0] == pytest.approx(zero3[0], rel=1e-3)  # same weights, same batch: rounding only
    assert zero3 == pytest.approx(plain, rel=0.05)
