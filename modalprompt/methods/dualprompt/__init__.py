"""dualprompt (Wang et al., ECCV 2022): a G-prompt shared by all tasks and an E-prompt with a key per task;
inference picks the E-prompt whose key matches the sample's query (selection accuracy is reported).
Settings: `dualprompt`; its model: model.py (model/pool.py says what was adapted)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modalprompt.config import Query, _help, training_overrides
from modalprompt.methods.base import Section
from modalprompt.methods.prompt_pool import PromptPoolMethod
from modalprompt.methods.registry import register

if TYPE_CHECKING:
    from modalprompt.bases.backbone import Backbone
    from modalprompt.config import MethodConfig
    from modalprompt.methods.dualprompt.model import DualPromptModel


@dataclass(frozen=True)
class DualPromptConfig:
    """DualPrompt (Wang et al., ECCV 2022): a G-prompt shared by all tasks and one E-prompt with a key per
    task (chosen by the query at inference). Defaults: the official code (G length 5, E length 5, pull 1.0)."""

    g_length: int = _help("L_g: rows of the shared G-prompt.", default=5, minimum=1)
    e_length: int = _help("L_e: rows of each task's E-prompt.", default=5, minimum=1)
    pull_weight: float = _help(
        "lambda: weight of the matching loss pulling the task's key to the query.", default=1.0, minimum=0.0,
        training_only=True,
    )  # fmt: skip
    query: Query = _help("The feature keys are matched against.", default=Query.IMAGE)
    training: dict[str, Any] = training_overrides("dualprompt")

    def structure(self) -> dict[str, Any]:
        return {"g_length": self.g_length, "e_length": self.e_length}


@register
class DualPrompt(PromptPoolMethod):
    name = "dualprompt"
    summary = "DualPrompt: a shared G-prompt and a per-task E-prompt picked by the CLIP query"
    prompts_of = "dualprompt"
    selects = True
    section = Section("dualprompt", DualPromptConfig, "DualPrompt's G- and E-prompts")
    sections = ("dualprompt",)
    listing_order = 9

    def prefix_tokens(self, method: MethodConfig, options: dict[str, Any]) -> int:
        return options["dualprompt"].g_length + options["dualprompt"].e_length

    def build_model(
        self, backbone: Backbone, method: MethodConfig, options: dict[str, Any]
    ) -> DualPromptModel:
        from modalprompt.methods.dualprompt.model import DualPromptModel

        return DualPromptModel(backbone, options["dualprompt"])
