"""lora_ft, the lower bound CoIN compares against: LoRA on every linear layer of the LLM, fine-tuned task
after task; stage t starts from stage t-1's adapter, and an evaluation after stage s uses stage s's. No
prompt, no selection. Settings: `lora` (rank 128, alpha 256, dropout 0.05: CoIN's LoRA scripts and LLaVA's
train.py), its `training` overrides (the learning rate of LoRA is not a prompt's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modalprompt.methods.base import Method

if TYPE_CHECKING:
    from modalprompt.config import MethodConfig
    from modalprompt.model.lora import LoraAdapter, LoraLLM
    from modalprompt.model.checkpoint import StageMeta


class LoraFT(Method):
    name = "lora_ft"
    summary = "LoRA fine-tuning of the LLM, task after task (CoIN's baseline: the lower bound)"
    prompts_of = "lora_ft"
    selects = False
    sections = ("lora",)
    adapts_base = True
    model_kind = "lora"

    def training_settings(self, method: MethodConfig) -> MethodConfig:
        return type(method)()  # no prompt: no ModalPrompt knob is read

    def evaluation_settings(self, method: MethodConfig) -> MethodConfig:
        return type(method)()

    def structure(self, model: LoraLLM) -> dict[str, Any]:
        return {"adapter": "lora", **model.settings.structure()}

    def start_stage(
        self, model: LoraLLM, previous: list[Path], task: str, seed: int
    ) -> tuple[LoraAdapter, list[StageMeta]]:
        """A seeded adapter; from stage 2 on, it continues from stage t-1's tensors."""
        from modalprompt.model.prompts import stage_seed
        from modalprompt.model.checkpoint import read_chain

        metas = read_chain(previous)
        adapter = model.attach(stage_seed(seed, len(metas) + 1))
        if previous:
            adapter.load_state_dict(self._tensors(model, Path(previous[-1]), metas[-1]))
        adapter.train(True)
        return adapter, metas

    def load_for_evaluation(self, model: LoraLLM, checkpoints: list[Path]) -> list[str]:
        from modalprompt.model.checkpoint import read_chain

        metas = read_chain(checkpoints)
        if checkpoints:
            model.attach(seed=0).load_state_dict(self._tensors(model, Path(checkpoints[-1]), metas[-1]))
            model.adapter.train(False)
        return [m.task for m in metas]

    def release(self, model: LoraLLM) -> None:
        model.detach_adapter()

    def _tensors(self, model: LoraLLM, folder: Path, meta: StageMeta):
        from modalprompt.model.checkpoint import load_tensors

        return load_tensors(folder, meta, model.backbone.fingerprint, self.structure(model))
