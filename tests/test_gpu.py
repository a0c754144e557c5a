"""GPU path (skipped without CUDA): bf16 frozen base, fp32 trainable tensors, autocast, batched generation."""

import pytest
import torch
from conftest import same_tensors, train_cli

from modalprompt.backbone import load_backbone
from modalprompt.config import EvaluationConfig, MethodConfig, ModelConfig, TrainingConfig, TrainJob
from modalprompt.evaluate import evaluate_stage
from modalprompt.train import train_stage

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


@pytest.mark.parametrize("flags", ["3", "3 --offload"])
def test_zero3_on_cuda_gives_the_plain_engines_tensors(flags, tiny_base, toy_tasks, tmp_path):
    """DeepSpeed's CUDA accelerator and NCCL, one process: the sharded (and offloaded) bf16 base trains the
    same fp32 tensors as the plain engine."""
    pytest.importorskip("deepspeed")
    job = TrainJob(
        model=ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[1]), device="cuda"),
        method=MethodConfig(prefix_length=4),
        training=TrainingConfig(epochs=2, batch_size=4, grad_accum_steps=2, lr=1e-2, warmup_ratio=0.0),
        task=toy_tasks["colors"],
    )
    train_cli(job, tmp_path / "plain")
    train_cli(job, tmp_path / "zero", "--zero-stage", *flags.split())
    same_tensors(tmp_path / "plain", tmp_path / "zero", atol=1e-3)
