"""multitask, the upper bound: stage t is one LoRA adapter trained from the base on the union of tasks
1..t's training records (all of them, shuffled together), with the stage's settings. Each stage is a
model of its own (no stage reads another), so its matrix row t is what joint training on everything seen so
far reaches: the reference point for forgetting and for the other methods at every stage, not only the
last. Costs grow with t (stage t sees t tasks' records)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modalprompt.methods.lora_ft import LoraFT
from modalprompt.methods.registry import register

if TYPE_CHECKING:
    from modalprompt.methods.lora_ft.model import LoraAdapter, LoraLLM
    from modalprompt.model.checkpoint import StageMeta


@register
class Multitask(LoraFT):
    name = "multitask"
    summary = "LoRA trained from the base on all tasks seen so far, jointly (the upper bound)"
    prompts_of = "multitask"
    reads_earlier_tasks = True
    listing_order = 7

    def training_inputs(self, stage: int) -> list[int]:
        return []  # from the base: no earlier stage

    def evaluation_inputs(self, stage: int) -> list[int]:
        return [stage] if stage else []

    def start_stage(
        self, model: LoraLLM, previous: list[Path], task: str, seed: int
    ) -> tuple[LoraAdapter, list[StageMeta]]:
        if previous:
            raise ValueError("multitask trains each stage from the base: give no earlier stages")
        adapter = model.attach(seed)
        adapter.train(True)
        return adapter, []

    def load_for_evaluation(self, model: LoraLLM, checkpoints: list[Path]) -> list[str]:
        """The one stage given: its adapter, and the tasks it was trained on."""
        from modalprompt.errors import CheckpointError
        from modalprompt.model.checkpoint import read_meta

        if not checkpoints:
            return []
        if len(checkpoints) != 1:
            raise CheckpointError(f"multitask evaluates one stage's checkpoint, got {len(checkpoints)}")
        folder = Path(checkpoints[0])
        meta = read_meta(folder)
        model.attach(seed=0).load_state_dict(self._tensors(model, folder, meta))
        model.adapter.train(False)
        return list(meta.extra.get("trained_on", [meta.task]))
