"""lwf: Learning without Forgetting (Li and Hoiem, ECCV 2016 / TPAMI 2017, arXiv 1606.09282) on lora_ft.

LoRA on every linear layer of the LLM (lora_ft's adapter and its `lora` section), fine-tuned task after task:
stage t continues from stage t-1's adapter. From stage 2 on, the previous stage's model (the frozen base with
stage t-1's adapter, LoRA dropout off) is the teacher on the new task's training data, and each step adds

    weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)),  a mean over the answer tokens,

to the CE (the paper's knowledge-distillation loss L_old with T = 2, lambda_o = 1; Hinton's T^2 keeps the
gradient's scale independent of T). The teacher's logits come from the same step's batch under no_grad
(model.py). Stage files hold the adapter only, as lora_ft's; an evaluation after stage s uses stage s's.
"""

from __future__ import annotations

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
    from modalprompt.methods.lora_ft.model import LoraAdapter
    from modalprompt.methods.lwf.model import LwfLLM
    from modalprompt.model.checkpoint import StageMeta


@dataclass(frozen=True)
class LwfSettings:
    """The distillation from the previous stage's model. Defaults: the paper (T = 2 after Hinton et al.,
    loss balance lambda_o = 1)."""

    weight: float = _help(
        "Weight of the distillation term (the paper's lambda_o): loss = CE + weight * T^2 * KL(teacher || "
        "student) at temperature T, a mean over the new task's answer tokens; 0 makes it lora_ft.",
        default=1.0, minimum=0.0, training_only=True,
    )  # fmt: skip
    temperature: float = _help(
        "Temperature T of both softmaxes in the distillation term (the paper's T = 2).",
        default=2.0, exclusive_minimum=0.0, training_only=True,
    )  # fmt: skip


@register
class LwF(LoraFT):
    name = "lwf"
    summary = (
        "lora_ft plus distillation of the previous stage's model on the new task's answers "
        "(Learning without Forgetting, lwf.weight, lwf.temperature)"
    )
    prompts_of = "lwf"
    section = Section("lwf", LwfSettings, "Learning without Forgetting's distillation")
    sections = ("lora", "lwf")
    listing_order = 14

    def build_model(self, backbone: Backbone, method: MethodConfig, options: dict[str, Any]) -> LwfLLM:
        from modalprompt.methods.lwf.model import LwfLLM

        return LwfLLM(backbone, options["lora"], options["lwf"])

    def start_stage(
        self, model: LwfLLM, previous: list[Path], task: str, seed: int
    ) -> tuple[LoraAdapter, list[StageMeta]]:
        """lora_ft's start (stage t-1's adapter, trainable); from stage 2 on, a frozen copy of those tensors
        is the teacher. A resumed stage loads its saved adapter after this: the teacher stays stage t-1's."""
        adapter, metas = super().start_stage(model, previous, task, seed)
        if previous:
            model.set_teacher(adapter.state_dict())
        return adapter, metas

    def release(self, model: LwfLLM) -> None:
        model.set_teacher(None)
        super().release(model)
