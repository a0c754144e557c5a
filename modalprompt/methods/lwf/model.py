"""lwf's model: lora_ft's LoRA LLM with the previous stage's model as a teacher.

The teacher is the same frozen base with the previous stage's LoRA tensors in place of the trained ones. Its
logits are computed on the same batch in the same step, under no_grad, by running the LLM through
torch.func.functional_call with those tensors (PyTorch's documented way to call a module with other
parameters): no second copy of the base, one LoRA-sized copy of tensors, and one extra forward without
activations kept (about a third more compute per step). Precomputing them instead would store (answer tokens x
vocabulary) floats per record of the task, far more than the base. The teacher runs with LoRA's dropout off,
so it draws no random numbers: the student's dropout masks are those of lora_ft, and a resumed stage draws as an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from modalprompt.bases.backbone import Backbone
from modalprompt.data.datasets import Batch
from modalprompt.methods.lora_ft.model import LoraLLM
from modalprompt.model.wrapper import (
    IGNORE_INDEX,
    ModalPromptModel,
    ModalPromptOutput,
    Queries,
    answer_cross_entropy,
)

if TYPE_CHECKING:
    from modalprompt.methods.lora_ft import LoraSettings
    from modalprompt.methods.lwf import LwfSettings


class _Logits(nn.Module):
    """The wrapper's logits as a module whose only parameters are the LLM's (under `llm.`, then named as in
    the LLM), so that functional_call can swap the LoRA tensors for the call."""

    def __init__(self, wrapper: ModalPromptModel, llm: nn.Module):
        super().__init__()
        self.llm = llm
        self._logits = wrapper.prefixed_logits  # a bound method: not registered as a submodule

    def forward(self, batch: Batch, queries: Queries) -> tuple[torch.Tensor, torch.Tensor]:
        return self._logits(batch, queries, None)


@contextmanager
def lora_dropout_off(llm: nn.Module) -> Iterator[None]:
    """LoRA's dropout in eval mode for the duration, each module's mode restored after."""
    dropouts = [m.lora_dropout for m in llm.modules() if hasattr(m, "lora_dropout")]
    modes = [d.training for d in dropouts]
    for d in dropouts:
        d.train(False)
    try:
        yield
    finally:
        for d, mode in zip(dropouts, modes, strict=True):
            d.train(mode)


def distillation_sum(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over rows (tokens) of KL(softmax(teacher / T) || softmax(student / T)); (A, V) logits each."""
    return F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        reduction="sum",
        log_target=True,
    )


class LwfLLM(LoraLLM):
    """LoRA on the frozen LLM; CE on the answers plus, with a teacher, the distillation term on them."""

    def __init__(self, backbone: Backbone, settings: LoraSettings, lwf: LwfSettings):
        super().__init__(backbone, settings)
        self.lwf = lwf
        self.teacher: dict[str, torch.Tensor] | None = None  # the previous stage's LoRA tensors

    def set_teacher(self, tensors: dict[str, torch.Tensor] | None) -> None:
        """Copies of `tensors` (the attached adapter's LoRA tensors, named as in the LLM) become the frozen
        teacher; None: none."""
        if tensors is not None:
            # functional_call would not notice a name that is no LoRA tensor of the LLM: checked here, once
            own = {n: p.shape for n, p in self.adapter.named_parameters()} if self.adapter is not None else {}
            if {n: t.shape for n, t in tensors.items()} != own:
                raise RuntimeError("the teacher's tensors are not those of the attached LoRA adapter")
        self.teacher = None if tensors is None else {k: v.detach().clone() for k, v in tensors.items()}

    @property
    def llm(self) -> nn.Module:
        return self.backbone.llava.model.language_model

    @torch.no_grad()
    def teacher_logits(self, batch: Batch, queries: Queries) -> torch.Tensor:
        """The teacher's (B, S - 1, V) logits: the base with the teacher's LoRA tensors, dropout off."""
        if self.teacher is None:
            raise RuntimeError("no teacher: stage 1 of lwf, or set_teacher() not called")
        tensors = {f"llm.{name}": value for name, value in self.teacher.items()}
        with lora_dropout_off(self.llm):
            logits, _ = functional_call(_Logits(self.wrapper, self.llm), tensors, (batch, queries))
        return logits

    def forward(self, batch: Batch) -> ModalPromptOutput:
        queries = self.wrapper.encode(batch)
        logits, labels = self.wrapper.prefixed_logits(batch, queries, None)
        ce_sum, tokens = answer_cross_entropy(logits, labels)
        out = ModalPromptOutput.cross_entropy_only(ce_sum, tokens, queries)
        if self.teacher is not None and self.lwf.weight > 0:  # stage 1 has no teacher; weight 0 is lora_ft
            answers = labels != IGNORE_INDEX  # the new task's answer tokens, as the CE's
            teacher = self.teacher_logits(batch, queries)[answers]
            kl_sum = distillation_sum(logits[answers], teacher, self.lwf.temperature)
            out.answer_term_sum = self.lwf.weight * self.lwf.temperature**2 * kl_sum
        return out
