"""dualprompt's model: a G-prompt shared by all tasks and an E-prompt with a key per task; a stage trains on
its own task's E-prompt (the task is known in training) and pulls that key to the query; inference takes the
E-prompt whose key matches the query best. Prefix [G; E]."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from modalprompt.bases.backbone import Backbone
from modalprompt.model.checkpoint import StageMeta
from modalprompt.model.pool import (
    Choice,
    PoolModel,
    cosine,
    embedding_rows,
    rank_forced,
    uniform_keys,
)
from modalprompt.model.prompts import stage_seed
from modalprompt.model.tensors import TrainableTensors

if TYPE_CHECKING:
    from modalprompt.methods.dualprompt import DualPromptConfig


class DualPromptModel(PoolModel):
    def __init__(self, backbone: Backbone, settings: DualPromptConfig):
        super().__init__(backbone, settings.query, settings.pull_weight)
        self.settings = settings
        self.g_prompt: nn.Parameter | None = None  # (L_g, d)
        self.e_prompts = nn.ParameterList()  # per task (L_e, d)
        self.e_keys = nn.ParameterList()  # per task (e,)

    def structure(self) -> dict:
        return {"method": "dualprompt", **self.settings.structure()}

    def _load(self, folders: list[Path], trainable_g: bool) -> list[StageMeta]:
        stages = self._stages(folders, self.structure())
        for _, tensors in stages:
            self.e_prompts.append(self._parameter(tensors["e_prompt"], False))
            self.e_keys.append(self._parameter(tensors["e_key"], False))
        if stages:
            self.g_prompt = self._parameter(stages[-1][1]["g_prompt"], trainable_g)
        self.names = [m.task for m, _ in stages]
        return [m for m, _ in stages]

    def start(self, previous: list[Path], task: str, seed: int) -> tuple[TrainableTensors, list[StageMeta]]:
        """G continues from stage t-1; task t's E-prompt starts as a copy of task t-1's (the official code's
        shared pool), its key fresh; earlier E-prompts and keys stay frozen."""
        metas = self._load(previous, trainable_g=True)
        s, embeddings = self.settings, self.backbone.llava.get_input_embeddings().weight
        generator = torch.Generator().manual_seed(stage_seed(seed, len(metas) + 1))
        if self.g_prompt is None:
            self.g_prompt = self._parameter(embedding_rows(embeddings, s.g_length, generator), True)
        first = embedding_rows(embeddings, s.e_length, generator)
        self.e_prompts.append(self._parameter(self.e_prompts[-1].detach() if metas else first, True))
        self.e_keys.append(self._parameter(uniform_keys(1, self.query_size, generator)[0], True))
        self.names.append(task)
        tensors = {"g_prompt": self.g_prompt, "e_prompt": self.e_prompts[-1], "e_key": self.e_keys[-1]}
        return TrainableTensors(tensors), metas

    def load(self, checkpoints: list[Path]) -> list[str]:
        self._load(checkpoints, trainable_g=False)
        return self.names

    def choose(self, query: torch.Tensor, training: bool, force: torch.Tensor | None = None) -> Choice:
        similarity = cosine(query, torch.stack(list(self.e_keys)))  # (B, t)
        if training:  # the stage's own task: its E-prompt, its key pulled to the query
            chosen = torch.full((len(query),), len(self.e_keys) - 1, device=query.device)
            pull = 1.0 - similarity[:, -1]
        else:
            chosen, pull = rank_forced(similarity, force).argmax(dim=-1), None
        e_prompt = torch.stack(list(self.e_prompts))[chosen]  # (B, L_e, d)
        prefix = torch.cat([self.g_prompt.expand(len(query), -1, -1), e_prompt], dim=1)  # (B, L_g + L_e, d)
        return Choice(prefix, pull, chosen[:, None], similarity)
