"""One task's learned parameters (prompt P_t and key network MLP_t) and the ordered store of all tasks.

Prompts are tensors of their own, never vocabulary rows: the LLM's embeddings and lm_head stay untouched.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def stage_seed(base_seed: int, stage: int) -> int:
    """Initialisation seed of stage `stage`: distinct per stage, identical on every rank and rerun."""
    return base_seed * 1_000_003 + stage


class TaskPrompt(nn.Module):
    """P_t (L, d) and MLP_t: Linear(d, h) -> SiLU -> Linear(h, e). Key k_t = mean_j MLP_t(P_t[j])."""

    def __init__(self, prefix_length: int, hidden_size: int, key_hidden_size: int, feature_size: int):
        super().__init__()
        self.prompt = nn.Parameter(torch.zeros(prefix_length, hidden_size))
        self.key_net = nn.Sequential(
            nn.Linear(hidden_size, key_hidden_size),
            nn.SiLU(),
            nn.Linear(key_hidden_size, feature_size),
        )

    @torch.no_grad()
    def initialise(self, token_embeddings: torch.Tensor, seed: int) -> None:
        """Copy L random rows of the token embeddings into P_t; init MLP_t; all from one seeded generator,
        so every rank and every rerun gets the same tensors."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        rows = torch.randint(0, token_embeddings.shape[0], (self.prompt.shape[0],), generator=generator)
        self.prompt.copy_(token_embeddings[rows.to(token_embeddings.device)].float())
        for layer in (self.key_net[0], self.key_net[2]):
            weight = torch.empty(layer.weight.shape)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)  # nn.Linear's default
            bound = 1.0 / math.sqrt(layer.in_features)
            bias = torch.empty(layer.bias.shape).uniform_(-bound, bound, generator=generator)
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)

    def key(self) -> torch.Tensor:  # (e,)
        return self.key_net(self.prompt).mean(dim=0)


class PromptStore(nn.Module):
    """The learned tasks in training order; open-ended: each new task appends its own TaskPrompt."""

    def __init__(self, prefix_length: int, hidden_size: int, key_hidden_size: int, feature_size: int):
        super().__init__()
        self.shape = (prefix_length, hidden_size, key_hidden_size, feature_size)
        self.tasks = nn.ModuleList()
        self.names: list[str] = []

    def __len__(self) -> int:
        return len(self.tasks)

    def add_task(self, name: str) -> TaskPrompt:
        if name in self.names:
            raise ValueError(f"task {name!r} is already in the prompt store ({self.names})")
        task = TaskPrompt(*self.shape)
        self.tasks.append(task)
        self.names.append(name)
        return task

    def clear(self) -> None:
        """Forget every task (seq_prompt keeps one shared prompt, restarted from stage t-1's tensors)."""
        self.tasks = nn.ModuleList()
        self.names = []

    def freeze_all_but_last(self) -> None:
        for i, task in enumerate(self.tasks):
            task.requires_grad_(i == len(self.tasks) - 1)

    def keys(self) -> torch.Tensor:  # (S, e)
        return torch.stack([task.key() for task in self.tasks])

    def prompts(self) -> torch.Tensor:  # (S, L, d)
        return torch.stack([task.prompt for task in self.tasks])
