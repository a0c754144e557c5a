"""The method interface: what the stage functions and the DAG ask of a continual-learning method.

A method answers these questions, so that no stage function or rule tests a method's name:
- what it trains: `prompts_of` names whose stage checkpoints its evaluations load (its own name when it
  trains them, another method's, or None for none); `build_model` makes the model a stage trains or
  evaluates (ModalPrompt's wrapper by default), `start_stage` sets up stage t's trainable tensors (what its
  stage file holds), `load_for_evaluation` loads what an evaluation after stage s uses, and `release` undoes
  what it changed inside the frozen base (LoRA layers) once a stage or evaluation is done; `finish_stage`
  keeps what it needs of its task's training data beside its tensors (EWC's Fisher information);
- which stages depend on which: `training_inputs` / `evaluation_inputs` (the checkpoints a stage's
  training or evaluation reads), and `reads_earlier_tasks` (whether a stage also trains on the records of
  tasks 1..t-1, as replay and multitask do);
- how it selects prompts: `selects` (per sample, by score: selection accuracy and confusion are reported),
  `forced_task` (a task that must rank first at inference) and the selection knobs it keeps;
- which settings affect its jobs: `training_settings` / `evaluation_settings` return exactly the `method`
  settings it uses, knobs it ignores set to fixed values (`reads_method_section = False`: none of them,
  for a method whose knobs are all in its own section); `section` is its own config section (a settings
  dataclass under its own key of config.yaml) and `sections` names every section its jobs read (its own and
  another method's, as replay reads `lora`), so its jobs' rerun keys and its stage.json record what ran;
- which cells of the accuracy matrix it needs: `cells`, and `repeats_base` for a method whose every stage
  is the base model.

A method's module registers its class where it is defined (`@register`, methods/registry.py). Importing it
needs no torch (the Snakefile asks methods about jobs and cells): the hooks that touch a model import what
they need when called, and a method with a model of its own keeps it in a module of its own folder
(l2p/model.py). `options` below are a job's sections as typed settings (jobs.parse_options), keyed by
section name.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from modalprompt import layout

if TYPE_CHECKING:
    from modalprompt.bases.backbone import Backbone
    from modalprompt.config import MethodConfig
    from modalprompt.data.datasets import Batch
    from modalprompt.model.checkpoint import StageMeta
    from modalprompt.model.prompts import TaskPrompt
    from modalprompt.model.wrapper import ModalPromptModel

TRAINING_ONLY = ("prompt_init_seed", "image_loss_weight", "text_loss_weight")  # knobs inference never reads
LISTED_AFTER_BUILT_INS = 100  # the listing order of a method that sets none: after the built-in ones


@dataclasses.dataclass(frozen=True)
class Section:
    """A method's own config section: its key in config.yaml, its settings dataclass (fields with help,
    config._help; fields inference never reads marked training_only, those training never reads
    evaluation_only), and what it is, in a few words (the config's help adds which methods read it)."""

    key: str
    settings: type
    about: str


class Method:
    """ModalPrompt's behaviour is the default; each method overrides what differs from it."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the docs and the config's help
    prompts_of: ClassVar[str | None]
    selects: ClassVar[bool] = True
    repeats_base: ClassVar[bool] = False
    section: ClassVar[Section | None] = None  # its own config section
    sections: ClassVar[tuple[str, ...]] = ()  # the keys of the sections its jobs read (its own included)
    reads_earlier_tasks: ClassVar[bool] = False  # a stage also trains on tasks 1..t-1's records
    adapts_base: ClassVar[bool] = False  # what it trains sits inside the frozen base (no DeepSpeed engine)
    # whether its jobs read the `method` section (ModalPrompt's knobs); False: all its knobs are in its own
    # sections, and its jobs carry that section at its defaults (a change to it reruns none of them)
    reads_method_section: ClassVar[bool] = True
    # where listings (the config's help, its enum of methods, the docs) put it; ties by name
    listing_order: ClassVar[int] = LISTED_AFTER_BUILT_INS

    @property
    def trains(self) -> bool:
        return self.prompts_of == self.name

    # ------------------------------------------------------------------ settings that reach its jobs

    def training_settings(self, method: MethodConfig) -> MethodConfig:
        return method if self.reads_method_section else type(method)()

    def evaluation_settings(self, method: MethodConfig) -> MethodConfig:
        """Inference reads the prompts' structure and the selection knobs, never the training-only ones."""
        defaults = type(method)()
        if not self.reads_method_section:
            return defaults
        return dataclasses.replace(method, **{k: getattr(defaults, k) for k in TRAINING_ONLY})

    # ------------------------------------------------------------------ the DAG

    def cells(self, tasks: list[str], zero_shot: bool) -> list[tuple[int, str]]:
        """(stage, task) cells its matrix needs; row 0 (the base model) is evaluated once, under zero_shot/."""
        return layout.evaluation_cells(tasks, zero_shot)

    def training_inputs(self, stage: int) -> list[int]:
        """The stages (of its own) whose checkpoints training stage `stage` reads: every earlier one."""
        return list(range(1, stage))

    def evaluation_inputs(self, stage: int) -> list[int]:
        """The stages (of `prompts_of`) whose checkpoints an evaluation after `stage` reads: 1..stage."""
        return list(range(1, stage + 1))

    def dag_inputs(self, stages: list[int]) -> list[int]:
        """Of the stages whose checkpoints a job reads, those the DAG names as its inputs: the ones that no
        other of them was trained from (through `training_inputs`, at any depth). The rest are upstream of
        these, so a change to any of them still reruns the job; and a job gets one or two edges instead of
        one per stage it reads (with 32 tasks, 84,000 edges for 3,500 jobs made the no-op check slow)."""
        upstream = set().union(*(self._upstream(s) for s in stages))
        return [s for s in stages if s not in upstream]

    @functools.cache  # noqa: B019 (the methods are the registry's singletons: nothing is kept alive)
    def _upstream(self, stage: int) -> frozenset[int]:
        """Every stage that training stage `stage` was trained from, directly or not."""
        return frozenset().union(*({s} | self._upstream(s) for s in self.training_inputs(stage)))

    def earlier_records(self, options: dict[str, Any], earlier_tasks: int) -> int | None:
        """How many training records of each earlier task a stage adds to its own (None: all of them);
        only asked of a method that `reads_earlier_tasks`."""
        return None

    # ------------------------------------------------------------------ the model (stage functions)

    def build_model(self, backbone: Backbone, method: MethodConfig, options: dict[str, Any]) -> Any:
        """The model its stages train and evaluate, from the `method` settings and its own sections: one with
        `backbone`, forward(batch) -> ModalPromptOutput and generate(batch, max_new_tokens, force_task) ->
        Generation (model/wrapper.py). ModalPrompt's wrapper with its prompt store by default."""
        from modalprompt.model.wrapper import ModalPromptModel

        return ModalPromptModel(backbone, method)

    def start_stage(
        self, model: ModalPromptModel, previous: list[Path], task: str, seed: int
    ) -> tuple[TaskPrompt, list[StageMeta]]:
        """Load stages 1..t-1 (frozen) and add stage t's seeded prompt and key network, the only trainable
        tensors. Returns them (anything with parameters(), state_dict() and load_state_dict(): what the stage
        file holds) and the metadata of the stages loaded. `seed` is training.seed (ModalPrompt seeds its
        prompts with method.prompt_init_seed)."""
        from modalprompt.model.checkpoint import load_stages
        from modalprompt.model.prompts import stage_seed

        metas = load_stages(model, previous)
        return model.add_task(task, stage_seed(model.method.prompt_init_seed, len(metas) + 1)), metas

    def finish_stage(self, model: Any, current: Any, batches: Iterable[Batch]) -> None:
        """After a stage's last step, before its stage file is written: a method that keeps statistics of
        its task's training data beside its tensors (EWC's Fisher information, HiDe-LLaVA's task anchors)
        computes them into `current` here. `batches`: one pass over the stage's own task's records (not the
        earlier tasks' a replaying method mixes in), in file order, on the model's device; every rank gets all
        of them. Nothing by default."""

    def load_for_evaluation(self, model: ModalPromptModel, checkpoints: list[Path]) -> list[str]:
        """Load what an evaluation after stage len(checkpoints) uses; returns the learned tasks, in order."""
        from modalprompt.model.checkpoint import load_stages

        load_stages(model, checkpoints)
        return list(model.prompts.names)

    def structure(self, model: Any) -> dict[str, Any]:
        """What defines the meaning of its stage files' tensors; loading refuses a file with another."""
        return model.method.structure()

    def release(self, model: Any) -> None:
        """Undo what `build` or `start_stage` changed inside the frozen base (nothing, for prompts)."""

    def prefix_tokens(self, method: MethodConfig, options: dict[str, Any]) -> int:
        """Rows a sample's input gets in front of its conversation at inference (its prompt budget), given
        its evaluation settings: ModalPrompt's min(t, K) prompts of L rows each, at most K * L; none for a
        method that adapts weights or evaluates the base."""
        if self.prompts_of is None or not self.reads_method_section:
            return 0  # the base, or a method whose rows (if any) its own sections define: it says so itself
        return method.prefix_length * method.transfer_num

    def forced_task(self, learned: list[str], task: str) -> int | None:
        """Index (in `learned`) of a task whose prompt must rank first for every sample of `task`."""
        return None
