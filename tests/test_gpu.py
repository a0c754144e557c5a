"""GPU path (skipped without CUDA): bf16 frozen base, fp32 trainable tensors, autocast, batched generation."""

import pytest
import torch

from modalprompt.backbone import load_backbone
from modalprompt.config import EvaluationConfig, MethodConfig, ModelConfig, TrainingConfig
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
