"""ewc's model: lora_ft's LoRA on the frozen LLM (LoraLLM, LoraAdapter) plus the EWC penalty and the Fisher.

`EwcAdapter` is what a stage trains and its file holds: the LoRA tensors (the only parameters) and, beside
them, the Fisher information accumulated over the tasks learned so far (non-trainable, under FISHER_PREFIX).
The anchor theta* is stage t-1's LoRA tensors, which stage t-1's file already holds, so it is set when a
stage starts and not stored again. `task_fisher` computes a task's diagonal Fisher from per-sample gradients,
which it gets in one backward pass per batch through forward hooks on peft's LoRA linear layers and
gradient hooks on their outputs (PyTorch's documented module and tensor hooks)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from modalprompt.bases.backbone import Backbone
from modalprompt.data.datasets import Batch
from modalprompt.methods.lora_ft.model import LoraAdapter, LoraLLM
from modalprompt.model.wrapper import IGNORE_INDEX, ModalPromptOutput

if TYPE_CHECKING:
    from modalprompt.methods.ewc import EwcSettings
    from modalprompt.methods.lora_ft import LoraSettings

FISHER_PREFIX = "ewc_fisher."  # the Fisher's keys in a stage file: this prefix, then the LoRA tensor's name


class EwcAdapter(LoraAdapter):
    """LoRA tensors (parameters) with the accumulated Fisher F and the anchor theta* (plain tensors, no grad)."""

    def __init__(self, language_model: nn.Module, settings: LoraSettings, seed: int):
        super().__init__(language_model, settings, seed)
        try:
            self.fisher = {n: torch.zeros_like(p, requires_grad=False) for n, p in self.named_parameters()}
        except BaseException:  # e.g. out of memory: the LoRA layers out of the frozen base again
            self.remove()
            raise
        self.anchor: dict[str, torch.Tensor] | None = None  # None: no earlier task, no penalty

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), **{FISHER_PREFIX + n: f for n, f in self.fisher.items()}}

    @torch.no_grad()
    def load_state_dict(self, tensors: dict[str, torch.Tensor], strict: bool = True) -> None:
        fisher = {k[len(FISHER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(FISHER_PREFIX)}
        if strict and set(fisher) != set(self.fisher):
            raise RuntimeError(
                f"EWC's Fisher does not fit the LoRA tensors: {sorted(set(fisher) ^ set(self.fisher))[:3]}"
            )
        super().load_state_dict({k: v for k, v in tensors.items() if not k.startswith(FISHER_PREFIX)}, strict)
        for name, value in fisher.items():
            self.fisher[name].copy_(value)

    def set_anchor(self) -> None:
        """theta* := the LoRA tensors as they are now (stage t-1's, when a stage starts)."""
        self.anchor = {n: p.detach().clone() for n, p in self.named_parameters()}

    def penalty(self, weight: float) -> torch.Tensor | None:
        """weight / 2 * sum F * (theta - theta*)^2; None before there is an anchor (stage 1)."""
        if self.anchor is None:
            return None
        terms = [(self.fisher[n] * (p - self.anchor[n]).square()).sum() for n, p in self.named_parameters()]
        return weight / 2 * torch.stack(terms).sum()

    @torch.no_grad()
    def consolidate(self, task: dict[str, torch.Tensor], gamma: float) -> None:
        """F := gamma * F + F_task (the earlier tasks' Fisher, decayed, plus the task just learned)."""
        for name, value in task.items():
            self.fisher[name].mul_(gamma).add_(value)


class EwcLLM(LoraLLM):
    """lora_ft's model whose training loss carries the EWC penalty (ModalPromptOutput.regulariser)."""

    def __init__(self, backbone: Backbone, settings: LoraSettings, ewc: EwcSettings):
        super().__init__(backbone, settings)
        self.ewc = ewc

    def attach(self, seed: int) -> EwcAdapter:
        if self.adapter is not None:
            raise RuntimeError("this model already has a LoRA adapter")
        self.adapter = EwcAdapter(self.backbone.llava.model.language_model, self.settings, seed)
        return self.adapter

    def forward(self, batch: Batch) -> ModalPromptOutput:
        out = super().forward(batch)
        out.regulariser = self.adapter.penalty(self.ewc.weight)
        return out


def task_fisher(model: EwcLLM, batches: Iterable[Batch]) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher of the LoRA tensors on `batches`: the mean over samples of the squared
    gradient of each sample's CE (mean over its answer tokens, as training normalises it), LoRA dropout off.

    Per sample, not per batch: the square of a batch's mean gradient is not the mean of the squares (it is
    about 1/batch-size of it near a minimum), so a per-batch Fisher would change with training.batch_size.
    A linear layer's per-sample weight gradient is sum_t grad_out[b, t] x[b, t]^T; peft's lora_A and lora_B
    are such layers, so their inputs (forward hooks) and output gradients (tensor hooks) give it exactly."""
    adapter = model.adapter
    params = dict(adapter.named_parameters())
    layers = {f"{n}.weight": m for n, m in adapter.language_model.named_modules() if f"{n}.weight" in params}
    if set(layers) != set(params) or not all(type(m) is nn.Linear for m in layers.values()):
        raise RuntimeError("EWC's per-sample Fisher needs every LoRA tensor to be a linear layer's weight")
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    scale: list[torch.Tensor] = []  # the batch's 1 / answer tokens per sample (0 for a sample with none)

    def hooked(name: str):
        def on_forward(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs = args[0].detach()
            if inputs.dim() != 3 or inputs.shape[0] != len(scale[0]):
                raise RuntimeError(
                    f"{name}: expected (batch, tokens, features) inputs, got {tuple(inputs.shape)}"
                )

            def on_grad(grad: torch.Tensor) -> None:
                per_sample = (
                    torch.einsum("bto,bti->boi", grad.float(), inputs.float()) * scale[0][:, None, None]
                )
                fisher[name] += per_sample.square().sum(0)

            output.register_hook(on_grad)

        return on_forward

    device = model.backbone.device
    autocast = (torch.autocast("cuda", dtype=model.backbone.dtype)
                if device.type == "cuda" and model.backbone.dtype != torch.float32 else nullcontext())  # fmt: skip
    handles = [layer.register_forward_hook(hooked(name)) for name, layer in layers.items()]
    adapter.train(False)
    samples = 0
    try:
        for batch in batches:
            tokens = (batch.labels[:, 1:] != IGNORE_INDEX).sum(1).to(device)
            if not int(tokens.sum()):
                continue
            scale[:] = [torch.where(tokens > 0, 1.0 / tokens.clamp(min=1), 0.0)]
            with autocast:
                ce_sum, _ = model.wrapper.prefixed_cross_entropy(batch, model.wrapper.encode(batch), None)
            torch.autograd.grad(ce_sum, list(params.values()), allow_unused=True)  # the hooks collect
            samples += int((tokens > 0).sum())
    finally:
        for handle in handles:
            handle.remove()
        adapter.train(True)
    return {n: f / max(samples, 1) for n, f in fisher.items()}
