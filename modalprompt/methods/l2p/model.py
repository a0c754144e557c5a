"""l2p's model: one pool of M prompts with keys, shared by all tasks and trained in every stage; each sample
takes the N prompts whose keys are most cosine-similar to its query (concatenated in that order); a
surrogate loss pulls the chosen keys to the query."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from modalprompt.bases.backbone import Backbone
from modalprompt.model.checkpoint import StageMeta
from modalprompt.model.pool import Choice, PoolModel, cosine, embedding_rows, uniform_keys
from modalprompt.model.prompts import stage_seed
from modalprompt.model.tensors import TrainableTensors

if TYPE_CHECKING:
    from modalprompt.methods.l2p import L2PConfig


class L2PModel(PoolModel):
    def __init__(self, backbone: Backbone, settings: L2PConfig):
        super().__init__(backbone, settings.query, settings.pull_weight)
        self.settings = settings
        self.prompts: nn.Parameter | None = None  # (M, L, d)
        self.keys: nn.Parameter | None = None  # (M, e)

    def structure(self) -> dict:
        return {"method": "l2p", **self.settings.structure()}

    def _set(self, prompts: torch.Tensor, keys: torch.Tensor, trainable: bool) -> None:
        self.prompts, self.keys = self._parameter(prompts, trainable), self._parameter(keys, trainable)

    def start(self, previous: list[Path], task: str, seed: int) -> tuple[TrainableTensors, list[StageMeta]]:
        """The whole pool trains in every stage, from where stage t-1 left it."""
        stages = self._stages(previous, self.structure())
        if stages:
            self._set(stages[-1][1]["prompts"], stages[-1][1]["keys"], trainable=True)
        else:
            s = self.settings
            generator = torch.Generator().manual_seed(stage_seed(seed, 1))
            prompts = embedding_rows(self.backbone.llava.get_input_embeddings().weight,
                                     s.pool_size * s.prompt_length, generator)  # fmt: skip
            self._set(prompts.view(s.pool_size, s.prompt_length, -1),
                      uniform_keys(s.pool_size, self.query_size, generator), trainable=True)  # fmt: skip
        self.names = [m.task for m, _ in stages] + [task]
        return TrainableTensors({"prompts": self.prompts, "keys": self.keys}), [m for m, _ in stages]

    def load(self, checkpoints: list[Path]) -> list[str]:
        stages = self._stages(checkpoints, self.structure())
        self._set(stages[-1][1]["prompts"], stages[-1][1]["keys"], trainable=False)
        self.names = [m.task for m, _ in stages]
        return self.names

    def choose(self, query: torch.Tensor, training: bool, force: torch.Tensor | None = None) -> Choice:
        similarity = cosine(query, self.keys)  # (B, M)
        top = similarity.topk(self.settings.top_k, dim=-1).indices  # (B, N), most similar first
        prefix = self.prompts[top].flatten(1, 2)  # (B, N * L, d)
        pull = (1.0 - similarity.gather(1, top)).sum(-1)  # (B,) chosen keys toward the query
        return Choice(prefix, pull, top, similarity)
