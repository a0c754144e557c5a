"""Mid-stage resume for every method that trains, with its default settings (LoRA dropout on): a stage
crashed after a saved state and resumed ends with exactly the tensors of an uninterrupted run."""

from __future__ import annotations

import dataclasses

import pytest
import safetensors.torch
import torch

from modalprompt import methods
from modalprompt.experiment import METHOD_SECTIONS
from modalprompt.methods.coda_prompt import CodaPromptConfig
from modalprompt.methods.l2p import L2PConfig
from modalprompt.methods.lora_ft import LoraSettings
from modalprompt.methods.moe_lora import MoeLoraSettings
from modalprompt.model.checkpoint import TENSORS_FILE
from modalprompt.run.resume import ResumeState
from modalprompt.run.train import train_stage

TRAINING = sorted(name for name, m in methods.REGISTRY.items() if m.trains)
# Each method's own sections at their defaults, shrunk only in size for the tiny base; dropout and every
# other random-number consumer keep their defaults.
SMALL = {
    "lora": LoraSettings(rank=4, alpha=8.0),
    "l2p": L2PConfig(pool_size=4, prompt_length=2, top_k=2),
    "coda_prompt": CodaPromptConfig(components_per_task=3, prompt_length=2),
    "moe_lora": MoeLoraSettings(experts=2, rank=4, alpha=8.0),
}


def _options(name: str) -> dict:
    return {s: SMALL.get(s, METHOD_SECTIONS[s]()) for s in methods.get(name).sections}


def _tensors(folder) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(folder / TENSORS_FILE))


def test_the_lora_methods_default_to_dropout():
    """What the per-method resume tests rely on: LoRA's dropout draws random numbers on every step."""
    assert LoraSettings().dropout > 0 and SMALL["lora"].dropout == LoraSettings().dropout


@pytest.mark.parametrize("name", TRAINING)
def test_a_crashed_stage_resumes_to_the_uninterrupted_tensors(
    name, backbone, method, training, toy_tasks, tmp_path
):
    # Stage 2, so that replay and multitask also draw from an earlier task's records.
    first = train_stage(backbone, method, dataclasses.replace(training, max_steps=2), toy_tasks["colors"], [],
                        tmp_path / "s1", method_name=name, options=_options(name), progress=False)  # fmt: skip
    long = dataclasses.replace(training, epochs=3, lr=5e-2)  # 12 optimizer steps on 16 records
    previous = [first.checkpoint] if methods.get(name).training_inputs(2) else []

    def stage(out, **kw):
        return train_stage(backbone, method, long, toy_tasks["shapes"], previous, out, method_name=name,
                           options=_options(name), earlier_tasks=[toy_tasks["colors"]], progress=False, **kw)  # fmt: skip

    reference = _tensors(stage(tmp_path / "ref").checkpoint)

    def crash_at_step_7(metrics):
        if metrics.step == 7:
            raise RuntimeError("node lost")

    state = tmp_path / "state"
    with pytest.raises(RuntimeError, match="node lost"):
        stage(tmp_path / "out", state_dir=state, save_every_steps=3, on_step=crash_at_step_7)
    assert ResumeState.read_step(state) == 6
    resumed = _tensors(stage(tmp_path / "out", state_dir=state, save_every_steps=3).checkpoint)
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), f"{name}: {key} differs after resuming"
