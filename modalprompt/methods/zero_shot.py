"""zero_shot: the base model without prompts. Its matrix is row 0 (evaluated once) repeated at every
stage: the base does not change."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modalprompt.methods.base import Method
from modalprompt.methods.registry import register

if TYPE_CHECKING:
    from modalprompt.model.wrapper import ModalPromptModel


@register
class ZeroShot(Method):
    name = "zero_shot"
    summary = "the base model without prompts"
    prompts_of = None
    selects = False
    repeats_base = True
    reads_method_section = False  # no prompts: no method setting is read
    listing_order = 4

    def cells(self, tasks: list[str], zero_shot: bool) -> list[tuple[int, str]]:
        return [(0, task) for task in tasks]

    def load_for_evaluation(self, model: ModalPromptModel, checkpoints: list[Path]) -> list[str]:
        if checkpoints:
            raise ValueError("zero_shot evaluates the base model: give no checkpoints")
        return []
