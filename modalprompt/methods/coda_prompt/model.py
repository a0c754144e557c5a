"""coda_prompt's model: prompt components P_m with keys K_m and attention vectors A_m; the prompt is
sum_m alpha_m P_m with alpha_m = cos(query * A_m, K_m), end to end (no selection, no pull loss); each task
adds its own components, initialised orthogonal to the earlier ones (Gram-Schmidt), and only those train;
an optional orthogonality penalty."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from modalprompt.bases.backbone import Backbone
from modalprompt.model.checkpoint import StageMeta
from modalprompt.model.pool import Choice, PoolModel
from modalprompt.model.prompts import stage_seed
from modalprompt.model.tensors import TrainableTensors

if TYPE_CHECKING:
    from modalprompt.methods.coda_prompt import CodaPromptConfig


def gram_schmidt(new: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
    """Rows of `new` made orthonormal to each other and to the rows of `earlier` while the space has room;
    beyond its dimension a row is only normalised (CODA-Prompt's initialisation of new components)."""
    basis = [u for u in F.normalize(earlier.float(), dim=-1)] if len(earlier) else []
    out = []
    for row in new.float():
        v = row.clone()
        if len(basis) < row.numel():
            for u in basis:
                v = v - (v @ u) * u
        v = F.normalize(v if v.norm() > 1e-6 else row, dim=-1)
        out.append(v)
        basis.append(v)
    return torch.stack(out)


class CodaPromptModel(PoolModel):
    def __init__(self, backbone: Backbone, settings: CodaPromptConfig):
        super().__init__(backbone, settings.query, pull_weight=0.0)  # no matching loss: alpha learns from CE
        self.settings = settings
        self.prompts = nn.ParameterList()  # per task (c, L, d)
        self.keys = nn.ParameterList()  # per task (c, e)
        self.attention = nn.ParameterList()  # per task (c, e)

    def structure(self) -> dict:
        return {"method": "coda_prompt", **self.settings.structure()}

    def _load(self, folders: list[Path]) -> list[StageMeta]:
        stages = self._stages(folders, self.structure())
        for _, tensors in stages:
            for store, name in (
                (self.prompts, "prompts"),
                (self.keys, "keys"),
                (self.attention, "attention"),
            ):
                store.append(self._parameter(tensors[name], False))
        self.names = [m.task for m, _ in stages]
        return [m for m, _ in stages]

    def start(self, previous: list[Path], task: str, seed: int) -> tuple[TrainableTensors, list[StageMeta]]:
        """Task t's components, orthogonal to the earlier ones; only they train."""
        metas = self._load(previous)
        s, embeddings = self.settings, self.backbone.llava.get_input_embeddings().weight
        generator = torch.Generator().manual_seed(stage_seed(seed, len(metas) + 1))
        count, length = s.components_per_task, s.prompt_length

        def earlier(store: nn.ParameterList) -> torch.Tensor:
            return torch.cat([p.detach().cpu().flatten(1) for p in store]) if len(store) else torch.zeros(0)

        flat = gram_schmidt(
            torch.randn(count, length * self.hidden, generator=generator), earlier(self.prompts)
        )
        row_norm = embeddings.detach().float().norm(dim=-1).mean().cpu()  # rows scaled like real tokens
        prompts = flat.view(count, length, self.hidden) * math.sqrt(length) * row_norm
        keys = gram_schmidt(torch.randn(count, self.query_size, generator=generator), earlier(self.keys))
        attention = gram_schmidt(
            torch.randn(count, self.query_size, generator=generator), earlier(self.attention)
        )
        for store, value in ((self.prompts, prompts), (self.keys, keys), (self.attention, attention)):
            store.append(self._parameter(value, True))
        self.names.append(task)
        tensors = {"prompts": self.prompts[-1], "keys": self.keys[-1], "attention": self.attention[-1]}
        return TrainableTensors(tensors), metas

    def load(self, checkpoints: list[Path]) -> list[str]:
        self._load(checkpoints)
        return self.names

    def choose(self, query: torch.Tensor, training: bool, force: torch.Tensor | None = None) -> Choice:
        keys, attention = torch.cat(list(self.keys)), torch.cat(list(self.attention))  # (M, e)
        prompts = torch.cat(list(self.prompts))  # (M, L, d)
        attended = query.float()[:, None, :] * attention[None]  # (B, M, e)
        alpha = F.cosine_similarity(attended, keys[None], dim=-1)  # (B, M)
        prefix = torch.einsum("bm,mld->bld", alpha, prompts)  # (B, L, d)
        regulariser = None
        if training and self.settings.ortho_weight > 0:
            terms = [_ortho_penalty(keys), _ortho_penalty(attention), _ortho_penalty(prompts.flatten(1))]
            regulariser = self.settings.ortho_weight * sum(terms)
        empty = torch.zeros(len(query), 0, dtype=torch.long, device=query.device)
        return Choice(prefix, None, empty, alpha, regulariser)


def _ortho_penalty(rows: torch.Tensor) -> torch.Tensor:
    """CODA-Prompt's penalty: mean squared distance of the rows' Gram matrix from the identity."""
    gram = rows @ rows.T
    return ((gram - torch.eye(len(rows), device=rows.device)) ** 2).mean()
