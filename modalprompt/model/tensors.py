"""What a stage trains, as one set of named tensors: parameters(), state_dict() (what its stage file and a
mid-stage state hold), load_state_dict() and requires_grad_(), like a module's. The tensors may live inside
other modules (LoRA layers in the frozen LLM, a prompt pool): a set only names them."""

from __future__ import annotations

import torch
from torch import nn


class TensorSet:
    """A subclass lists its tensors (`named_parameters`); the rest follows from the list."""

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters()}

    @torch.no_grad()
    def load_state_dict(self, tensors: dict[str, torch.Tensor], strict: bool = True) -> None:
        own = dict(self.named_parameters())
        if strict and set(tensors) != set(own):
            missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
            raise RuntimeError(
                f"{type(self).__name__} tensors do not fit: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for name, value in tensors.items():
            if name in own:  # not strict: names it does not hold are left out
                own[name].copy_(value)

    def requires_grad_(self, flag: bool) -> TensorSet:
        for param in self.parameters():
            param.requires_grad_(flag)
        return self


class TrainableTensors(TensorSet):
    """A set given as a dict of named parameters (the prompt pools' new tensors)."""

    def __init__(self, tensors: dict[str, nn.Parameter]):
        self.tensors = tensors

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.tensors.items())
