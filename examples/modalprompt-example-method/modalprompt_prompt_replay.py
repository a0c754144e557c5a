"""prompt_replay: ModalPrompt trained with a few records of each earlier task. Each stage trains its task's
prompt and key network on the task's records plus `prompt_replay.records_per_task` records of every earlier
task (a seeded share, the same records at every stage: modalprompt/data/mixture.py), so that the new prompt
also sees, and its selection also ranks, the earlier tasks' inputs. Everything else is ModalPrompt's: the
`method` settings, the model, the selection at inference.

A method that lives in a package of its own: this module holds the method, its settings and the model it
trains, and registers the method; the entry point in pyproject.toml makes modalprompt import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modalprompt.config import _help
from modalprompt.methods import Method, Section, register

if TYPE_CHECKING:  # the model's modules import torch: only the hooks that build it import them
    from modalprompt.bases.backbone import Backbone
    from modalprompt.config import MethodConfig
    from modalprompt.model.wrapper import ModalPromptModel


@dataclass(frozen=True)
class PromptReplaySettings:
    """config.yaml's `prompt_replay` section: what this method adds to ModalPrompt."""

    records_per_task: int = _help(
        "Training records of each earlier task added to a stage's own (a seeded share, the same at every stage).",
        default=8,
        minimum=0,
        training_only=True,
    )


@register
class PromptReplay(Method):  # the interface's defaults are ModalPrompt's behaviour
    name = "prompt_replay"
    summary = "ModalPrompt trained with a few records of each earlier task (an example method)"
    prompts_of = "prompt_replay"  # it trains stages of its own
    section = Section("prompt_replay", PromptReplaySettings, "The earlier tasks' records each stage adds")
    sections = ("prompt_replay",)  # its jobs carry this section: changing it reruns its stages
    reads_earlier_tasks = True  # the DAG gives its stages the earlier tasks' train files

    def earlier_records(self, options: dict[str, Any], earlier_tasks: int) -> int | None:
        return options["prompt_replay"].records_per_task

    def build_model(
        self, backbone: Backbone, method: MethodConfig, options: dict[str, Any]
    ) -> ModalPromptModel:
        """ModalPrompt's model: a prompt and key network per task, selected by CLIP image and text features."""
        from modalprompt.model.wrapper import ModalPromptModel

        return ModalPromptModel(backbone, method)
