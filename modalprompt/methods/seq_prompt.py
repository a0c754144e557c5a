"""seq_prompt, the forgetting baseline: one shared prompt tuned task after task. Stage t starts from the
prompt as stage t-1 left it; no selection (K = 1) and no alignment terms (their weights are 0)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from modalprompt.methods.base import Method
from modalprompt.methods.registry import register

if TYPE_CHECKING:
    from modalprompt.config import MethodConfig
    from modalprompt.model.checkpoint import StageMeta
    from modalprompt.model.prompts import TaskPrompt
    from modalprompt.model.wrapper import ModalPromptModel


@register
class SeqPrompt(Method):
    name = "seq_prompt"
    summary = "one shared prompt tuned task after task, no selection (the forgetting baseline)"
    prompts_of = "seq_prompt"
    selects = False
    listing_order = 2

    @staticmethod
    def _single_prompt(method: MethodConfig) -> MethodConfig:
        """One prompt, so lam and K select nothing: they are fixed, not read from the config."""
        defaults = type(method)()
        return dataclasses.replace(method, transfer_num=1, lam=defaults.lam)

    def training_settings(self, method: MethodConfig) -> MethodConfig:
        return dataclasses.replace(self._single_prompt(method), image_loss_weight=0.0, text_loss_weight=0.0)

    def evaluation_settings(self, method: MethodConfig) -> MethodConfig:
        return super().evaluation_settings(self._single_prompt(method))

    def start_stage(
        self, model: ModalPromptModel, previous: list[Path], task: str, seed: int
    ) -> tuple[TaskPrompt, list[StageMeta]]:
        """The shared prompt continues from stage t-1's tensors (the chain of earlier stages is checked)."""
        from modalprompt.model.checkpoint import load_stages
        from modalprompt.model.prompts import stage_seed

        metas = load_stages(model, previous, only_last=True)
        start = (
            {k: v.clone() for k, v in model.prompts.tasks[0].state_dict().items()}
            if len(model.prompts)
            else None
        )
        model.prompts.clear()
        current = model.add_task(task, stage_seed(model.method.prompt_init_seed, len(metas) + 1))
        if start is not None:
            current.load_state_dict(start)
        return current, metas

    def load_for_evaluation(self, model: ModalPromptModel, checkpoints: list[Path]) -> list[str]:
        from modalprompt.model.checkpoint import load_stages

        metas = load_stages(model, checkpoints, only_last=True)
        return [m.task for m in metas]
