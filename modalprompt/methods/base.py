"""The method interface: what the stage functions and the DAG ask of a continual-learning method.

A method answers four questions, so that no stage function or rule tests a method's name:
- what it trains: `prompts_of` names whose stage checkpoints its evaluations load (its own name when it
  trains them, another method's, or None for none), and `start_stage` sets up stage t's trainable tensors;
- how it selects prompts: `selects` (per sample, by score: selection accuracy and confusion are reported),
  `forced_task` (a task that must rank first at inference) and the selection knobs it keeps;
- which settings affect its jobs: `training_settings` / `evaluation_settings` return exactly the method
  settings it uses, knobs it ignores set to fixed values, so its jobs' rerun keys and its stage.json record
  what ran;
- which cells of the accuracy matrix it needs: `cells`, and `repeats_base` for a method whose every stage
  is the base model.

Importing a method needs no torch (the Snakefile asks methods about jobs and cells); the hooks that touch a
model import what they need when called.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from modalprompt import layout

if TYPE_CHECKING:
    from modalprompt.config import MethodConfig
    from modalprompt.model.prompts import TaskPrompt
    from modalprompt.model.wrapper import ModalPromptModel
    from modalprompt.run.checkpoint import StageMeta

TRAINING_ONLY = ("prompt_init_seed", "image_loss_weight", "text_loss_weight")  # knobs inference never reads


class Method:
    """ModalPrompt's behaviour is the default; each method overrides what differs from it."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the docs and the config's help
    prompts_of: ClassVar[str | None]
    selects: ClassVar[bool] = True
    repeats_base: ClassVar[bool] = False

    @property
    def trains(self) -> bool:
        return self.prompts_of == self.name

    # ------------------------------------------------------------------ settings that reach its jobs

    def training_settings(self, method: MethodConfig) -> MethodConfig:
        return method

    def evaluation_settings(self, method: MethodConfig) -> MethodConfig:
        """Inference reads the prompts' structure and the selection knobs, never the training-only ones."""
        defaults = type(method)()
        return dataclasses.replace(method, **{k: getattr(defaults, k) for k in TRAINING_ONLY})

    # ------------------------------------------------------------------ the DAG

    def cells(self, tasks: list[str], zero_shot: bool) -> list[tuple[int, str]]:
        """(stage, task) cells its matrix needs; row 0 (the base model) is evaluated once, under zero_shot/."""
        return layout.evaluation_cells(tasks, zero_shot)

    # ------------------------------------------------------------------ the model (stage functions)

    def start_stage(
        self, model: ModalPromptModel, previous: list[Path], task: str
    ) -> tuple[TaskPrompt, list[StageMeta]]:
        """Load stages 1..t-1 (frozen) and add stage t's seeded prompt and key network, the only trainable
        tensors. Returns them and the metadata of the stages loaded."""
        from modalprompt.model.prompts import stage_seed
        from modalprompt.run.checkpoint import load_stages

        metas = load_stages(model, previous)
        return model.add_task(task, stage_seed(model.method.prompt_init_seed, len(metas) + 1)), metas

    def load_for_evaluation(self, model: ModalPromptModel, checkpoints: list[Path]) -> None:
        """The prompts an evaluation after stage len(checkpoints) selects from."""
        from modalprompt.run.checkpoint import load_stages

        load_stages(model, checkpoints)

    def forced_task(self, learned: list[str], task: str) -> int | None:
        """Index (in `learned`) of a task whose prompt must rank first for every sample of `task`."""
        return None
