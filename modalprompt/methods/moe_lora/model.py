"""moe_lora's model: a mixture of LoRA experts beside the frozen LLM's linear layers.

Each target linear layer W gets E experts (A_e: r x d_in, B_e: d_out x r) and a router (E x d_in, no bias);
for an input x its output becomes W x + scaling * sum_e g_e(x) B_e A_e x, with g(x) the softmax of the
router's logits (or, with top_k, of the k largest, the others zero). The mixture is attached by composition:
a forward hook on each target nn.Linear adds its output to the layer's, so the base's modules and weights are
never replaced or touched, and removing the hooks leaves the base exactly as it was loaded. The experts and
routers are fp32 tensors outside the base (`MoeLoraAdapter`), on the base's device.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from modalprompt.config import ConfigError
from modalprompt.methods.lora_ft.model import LoraLLM
from modalprompt.model.tensors import TensorSet

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from modalprompt.methods.moe_lora import MoeLoraSettings


class LoraExperts(nn.Module):
    """The experts and router of one linear layer. Parameters: lora_A (E, r, d_in), lora_B (E, d_out, r),
    router (E, d_in)."""

    def __init__(
        self, in_features: int, out_features: int, settings: MoeLoraSettings, generator: torch.Generator
    ):
        super().__init__()
        experts, rank = settings.experts, settings.expert_rank
        self.top_k = settings.top_k
        self.scaling = settings.alpha / settings.rank  # CoIN: alpha over the total rank, not an expert's
        # CoIN: A ~ N(0, init_std), B = 0 (the model starts as the base); the router as nn.Linear's default
        # init, U(-1/sqrt(d_in), 1/sqrt(d_in)). Drawn from the stage's own generator, on the CPU: the same
        # tensors on any device.
        a = torch.empty(experts, rank, in_features).normal_(0.0, settings.init_std, generator=generator)
        bound = 1.0 / math.sqrt(in_features)
        router = torch.empty(experts, in_features).uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(experts, out_features, rank))
        self.router = nn.Parameter(router)
        self.dropout = nn.Dropout(settings.dropout) if settings.dropout > 0 else nn.Identity()

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """(..., E) mixture weights of the experts per token: the router's softmax, each row summing to 1;
        with top_k, only the k largest logits' experts, renormalised over them (the others exactly 0)."""
        logits = x @ self.router.T
        if self.top_k and self.top_k < logits.shape[-1]:
            kept = logits.topk(self.top_k, dim=-1).indices
            logits = torch.full_like(logits, float("-inf")).scatter(-1, kept, logits.gather(-1, kept))
        return torch.softmax(logits, dim=-1, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.dtype)
        experts, rank, d_in = self.lora_A.shape
        gates = self.gates(x)  # the router sees the input itself; dropout is on the experts' branch (CoIN)
        low = self.dropout(x) @ self.lora_A.reshape(experts * rank, d_in).T  # every A_e x at once: (..., E*r)
        low = (low.unflatten(-1, (experts, rank)) * gates.to(low.dtype).unsqueeze(-1)).flatten(-2)
        # sum_e g_e B_e (A_e x) as one product with [B_1 .. B_E]: no (..., E, d_out) intermediate
        return low @ self.lora_B.permute(1, 0, 2).reshape(-1, experts * rank).T * self.scaling


class MoeLoraAdapter(TensorSet):
    """The mixtures on the LLM's target linear layers, as one set of trainable tensors: parameters(),
    state_dict() (names: the layer's name in the LLM, then lora_A, lora_B or router) and load_state_dict(),
    like a module's. `remove` takes the hooks out again."""

    def __init__(self, language_model: nn.Module, settings: MoeLoraSettings, seed: int):
        targets = [(name, module) for name, module in language_model.named_modules()
                   if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in settings.target_modules]  # fmt: skip
        if not targets:
            raise ConfigError(
                f"moe_lora.target_modules = {list(settings.target_modules)} name no linear layer of this LLM: "
                "give the names of its layers (LLaMA: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
            )
        device = next(language_model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        self.layers: dict[str, LoraExperts] = {}
        self._handles: list[RemovableHandle] = []
        try:
            for name, linear in targets:  # in the LLM's module order: the same draws for the same seed
                experts = LoraExperts(linear.in_features, linear.out_features, settings, generator).to(device)
                self.layers[name] = experts
                self._handles.append(linear.register_forward_hook(_adds(experts)))
        except BaseException:  # e.g. out of memory: no hook may stay in the frozen base
            self.remove()
            raise
        self.train(False)

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"{name}.{p}", param) for name, layer in self.layers.items()
                for p, param in layer.named_parameters()]  # fmt: skip

    def train(self, mode: bool = True) -> None:
        """The experts' dropout is on while a stage trains, off for evaluation."""
        for layer in self.layers.values():
            layer.train(mode)

    def remove(self) -> None:
        """Take the hooks out of the LLM's linear layers (which were never changed)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _adds(experts: LoraExperts):
    """A forward hook that adds the mixture's output to the linear layer's (in the layer's dtype)."""

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return output + experts(args[0]).to(output.dtype)

    return hook


class MoeLoraLLM(LoraLLM):
    """lora_ft's model (the frozen base, no prompt: CE training and greedy generation) with the mixture of
    LoRA experts in place of peft's LoRA; `settings` are moe_lora's."""

    def attach(self, seed: int) -> MoeLoraAdapter:
        """Fresh experts and routers (A and the routers seeded, B zero: the model starts as the base)."""
        if self.adapter is not None:
            raise RuntimeError("this model already has a MoE-LoRA adapter")
        self.adapter = MoeLoraAdapter(self.backbone.llava.model.language_model, self.settings, seed)
        return self.adapter
