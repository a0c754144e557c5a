"""What the prompt-pool methods (l2p, dualprompt, coda_prompt) share: no ModalPrompt knob, their own config
section, and a model (a model/pool.py PoolModel, in each method's model.py) that loads its stages and sets
up what a stage trains. Not a method itself: it registers nothing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modalprompt.methods.base import Method

if TYPE_CHECKING:
    from modalprompt.model.checkpoint import StageMeta
    from modalprompt.model.pool import PoolModel
    from modalprompt.model.tensors import TrainableTensors


class PromptPoolMethod(Method):
    reads_method_section = False  # its knobs are in its own section

    def structure(self, model: PoolModel) -> dict[str, Any]:
        return model.structure()

    def start_stage(
        self, model: PoolModel, previous: list[Path], task: str, seed: int
    ) -> tuple[TrainableTensors, list[StageMeta]]:
        return model.start([Path(p) for p in previous], task, seed)

    def load_for_evaluation(self, model: PoolModel, checkpoints: list[Path]) -> list[str]:
        return model.load([Path(c) for c in checkpoints]) if checkpoints else []
