"""ewc (Kirkpatrick et al., PNAS 2017): lora_ft plus Elastic Weight Consolidation on the LoRA tensors. Stage t
continues from stage t-1's adapter, with the penalty weight / 2 * sum F * (theta - theta*)^2 added to the loss:
theta* are stage t-1's LoRA tensors, F the diagonal Fisher information of tasks 1..t-1, accumulated as
F_1..t = gamma * F_1..t-1 + F_t (gamma 1: the plain sum). F_t is computed after stage t's training
(`finish_stage`) from per-sample squared gradients of the CE on the task's own training records, and stored
in stage t's file beside the adapter. Evaluation is lora_ft's: the adapter alone. Settings: `lora` (the
adapter, lora_ft's) and `ewc`. Its model: model.py."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modalprompt.config import _help
from modalprompt.methods.base import Section
from modalprompt.methods.lora_ft import LoraFT
from modalprompt.methods.registry import register

if TYPE_CHECKING:
    from modalprompt.bases.backbone import Backbone
    from modalprompt.config import MethodConfig
    from modalprompt.data.datasets import Batch
    from modalprompt.methods.ewc.model import EwcAdapter, EwcLLM
    from modalprompt.model.checkpoint import StageMeta


@dataclass(frozen=True)
class EwcSettings:
    """Elastic Weight Consolidation on the LoRA tensors (Kirkpatrick et al., PNAS 2017). Defaults: TRACE's
    EWC for LLMs (lambda 400, the Fisher summed over tasks); the paper fixes no lambda."""

    weight: float = _help(
        "lambda: the penalty is lambda / 2 * sum F * (theta - theta*)^2 over the LoRA tensors (0: lora_ft).",
        default=400.0, minimum=0.0, training_only=True,
    )  # fmt: skip
    gamma: float = _help(
        "Decay of the earlier tasks' Fisher: F_1..t = gamma * F_1..t-1 + F_t (1: their sum at one anchor, "
        "online EWC without decay; below 1: online EWC).",
        default=1.0, minimum=0.0, maximum=1.0, training_only=True,
    )  # fmt: skip


@register
class Ewc(LoraFT):
    name = "ewc"
    summary = "lora_ft plus EWC: a Fisher-weighted pull of the LoRA tensors towards the previous stage's"
    prompts_of = "ewc"
    section = Section("ewc", EwcSettings, "Elastic Weight Consolidation of the LoRA tensors")
    sections = ("lora", "ewc")
    listing_order = 13

    def build_model(self, backbone: Backbone, method: MethodConfig, options: dict[str, Any]) -> EwcLLM:
        from modalprompt.methods.ewc.model import EwcLLM

        return EwcLLM(backbone, options["lora"], options["ewc"])

    def structure(self, model: EwcLLM) -> dict[str, Any]:
        return {"adapter": "lora+fisher", **model.settings.structure()}

    def start_stage(
        self, model: EwcLLM, previous: list[Path], task: str, seed: int
    ) -> tuple[EwcAdapter, list[StageMeta]]:
        """lora_ft's start (stage t-1's LoRA tensors and, here, its accumulated Fisher); those tensors are the
        anchor theta* of this stage's penalty."""
        adapter, metas = super().start_stage(model, previous, task, seed)
        if previous:
            adapter.set_anchor()
        return adapter, metas

    def finish_stage(self, model: EwcLLM, current: EwcAdapter, batches: Iterable[Batch]) -> None:
        """F_t from the task's own records, added to the earlier tasks' (decayed by gamma) in the stage file."""
        from modalprompt.methods.ewc.model import task_fisher

        current.consolidate(task_fisher(model, batches), model.ewc.gamma)
