"""coda_prompt (Smith et al., CVPR 2023): per-task prompt components with keys and attention vectors,
summed with weights from the sample's query; each stage adds and trains its own components. Settings:
`coda_prompt`; its model: model.py (model/pool.py says what was adapted)."""

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
    from modalprompt.methods.coda_prompt.model import CodaPromptModel


@dataclass(frozen=True)
class CodaPromptConfig:
    """CODA-Prompt (Smith et al., CVPR 2023): prompt components with keys and attention vectors, summed with
    weights cos(query * A_m, K_m); each task adds its own components. Defaults: the official code (100
    components over 10 tasks = 10 per task, length 8, orthogonality weight 0)."""

    components_per_task: int = _help("Prompt components each task adds.", default=10, minimum=1)
    prompt_length: int = _help("L_p: rows of the weighted prompt.", default=8, minimum=1)
    ortho_weight: float = _help(
        "Weight of the orthogonality penalty on the current components (0 in the official code).", default=0.0,
        minimum=0.0, training_only=True,
    )  # fmt: skip
    query: Query = _help("The feature keys are matched against.", default=Query.IMAGE)
    training: dict[str, Any] = training_overrides("coda_prompt")

    def structure(self) -> dict[str, Any]:
        return {"components_per_task": self.components_per_task, "prompt_length": self.prompt_length}


@register
class CodaPrompt(PromptPoolMethod):
    name = "coda_prompt"
    summary = "CODA-Prompt: per-task prompt components weighted by attention to the CLIP query"
    prompts_of = "coda_prompt"
    selects = False  # a weighted sum of every component: no prompt is chosen
    section = Section("coda_prompt", CodaPromptConfig, "CODA-Prompt's components")
    sections = ("coda_prompt",)
    listing_order = 10

    def prefix_tokens(self, method: MethodConfig, options: dict[str, Any]) -> int:
        return options["coda_prompt"].prompt_length

    def build_model(
        self, backbone: Backbone, method: MethodConfig, options: dict[str, Any]
    ) -> CodaPromptModel:
        from modalprompt.methods.coda_prompt.model import CodaPromptModel

        return CodaPromptModel(backbone, options["coda_prompt"])
