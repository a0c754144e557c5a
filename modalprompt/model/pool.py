"""What the prompt-pool methods (l2p, dualprompt, coda_prompt: continual learning's prompt methods, each in
its folder of modalprompt/methods/) share, adapted to LLaVA the way ModalPrompt is: prompts are rows in the
LLM's embedding space, inserted right after BOS (insert_prompts), and chosen by a query from a frozen
encoder (the CLIP image feature the base computes anyway, or the CLIP text feature).

`PoolModel` is the frozen base with a method's own prefix; each method's model (l2p/model.py, ...) says
which prefix a batch gets (`choose`), and has `start(previous, task, seed)` (load stages 1..t-1, set up what
stage t trains) and `load(checkpoints)` (what an evaluation after stage s uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modalprompt.bases.backbone import Backbone
from modalprompt.config import ConfigError, MethodConfig, Query
from modalprompt.data.datasets import Batch
from modalprompt.model.checkpoint import StageMeta, load_tensors, read_chain
from modalprompt.model.wrapper import Generation, ModalPromptModel, ModalPromptOutput, Queries


@dataclass
class Choice:
    """What a pool puts in front of a batch, and why."""

    prefix: torch.Tensor  # (B, P, d)
    pull: torch.Tensor | None  # (B,) the key-query matching term (1 - cos), or None
    selected: torch.Tensor  # (B, k) pool or task indices
    scores: torch.Tensor  # (B, n) similarities
    regulariser: torch.Tensor | None = None


def embedding_rows(embeddings: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` rows of the LLM's token embeddings drawn at random (fp32): prompts start as real tokens."""
    rows = torch.randint(0, embeddings.shape[0], (count,), generator=generator)
    return embeddings[rows.to(embeddings.device)].detach().float().cpu()


def uniform_keys(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Keys uniform in [-1, 1], the official L2P and DualPrompt initialisation."""
    return torch.rand(count, size, generator=generator) * 2 - 1


class PoolModel(nn.Module):
    """The frozen base with a method's own prefix: ModalPrompt's wrapper embeds the batch, computes the CLIP
    queries and runs the LLM; the pool decides the prefix (`choose`)."""

    def __init__(self, backbone: Backbone, query: Query, pull_weight: float):
        super().__init__()
        self.wrapper = ModalPromptModel(backbone, MethodConfig())
        self.query_kind, self.pull_weight = query, pull_weight
        self.names: list[str] = []  # learned tasks, in order

    @property
    def backbone(self) -> Backbone:
        return self.wrapper.backbone

    @property
    def hidden(self) -> int:
        return self.backbone.llava.config.text_config.hidden_size

    @property
    def query_size(self) -> int:
        b = self.backbone
        return (
            b.text_projection.in_features
            if self.query_kind == Query.TEXT
            else b.visual_projection.out_features
        )

    def query(self, q: Queries) -> torch.Tensor:  # (B, e)
        if self.query_kind == Query.TEXT:
            return q.text
        if bool((~q.has_image).any()):
            if q.text.shape[-1] != q.image.shape[-1]:
                raise ConfigError(f"a sample without an image needs the text query, but this CLIP's text feature "
                                  f"({q.text.shape[-1]}-d) does not fit its image feature ({q.image.shape[-1]}-d): "
                                  "set the method's query: text")  # fmt: skip
            return torch.where(q.has_image[:, None], q.image, q.text)
        return q.image

    def choose(self, query: torch.Tensor, training: bool, force: torch.Tensor | None = None) -> Choice:
        raise NotImplementedError

    def forward(self, batch: Batch) -> ModalPromptOutput:
        q = self.wrapper.encode(batch)
        choice = self.choose(self.query(q), training=True)
        ce_sum, tokens = self.wrapper.prefixed_cross_entropy(batch, q, choice.prefix)
        zero = ce_sum.new_zeros(())
        by_image = q.has_image if self.query_kind == Query.IMAGE else torch.zeros_like(q.has_image)
        pull = choice.pull
        return ModalPromptOutput(
            ce_sum=ce_sum,
            tokens=tokens,
            align_image_sum=zero if pull is None else (pull * by_image).sum(),  # image queries' matching term
            images=int(by_image.sum()),
            align_text_sum=zero if pull is None else (pull * ~by_image).sum(),  # text queries'
            samples=len(batch.input_ids),
            image_weight=self.pull_weight,
            text_weight=self.pull_weight,
            selected=choice.selected,
            scores=choice.scores,
            regulariser=choice.regulariser,
        )

    @torch.no_grad()
    def generate(
        self, batch: Batch, max_new_tokens: int, force_task: torch.Tensor | None = None
    ) -> Generation:
        q = self.wrapper.encode(batch)
        choice = self.choose(self.query(q), training=False, force=force_task)
        tokens = self.wrapper.generate_with_prefix(batch, q, choice.prefix.to(q.embeds.dtype), max_new_tokens)
        return Generation(token_ids=tokens, selected=choice.selected, scores=choice.scores)

    def _stages(
        self, folders: list[Path], structure: dict
    ) -> list[tuple[StageMeta, dict[str, torch.Tensor]]]:
        """Stages 1..s given in order: the chain checked, each file fitting this base and structure."""
        metas = read_chain(folders)
        fingerprint = self.backbone.fingerprint
        return [(m, load_tensors(f, m, fingerprint, structure)) for f, m in zip(folders, metas, strict=True)]

    def _parameter(self, value: torch.Tensor, trainable: bool) -> nn.Parameter:
        """A tensor of its own (never a view of another stage's), fp32, on the base's device."""
        return nn.Parameter(value.detach().float().to(self.backbone.device).clone(), requires_grad=trainable)


def cosine(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:  # (B, e), (n, e) -> (B, n)
    return F.normalize(query.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T


def rank_forced(scores: torch.Tensor, force: torch.Tensor | None) -> torch.Tensor:
    """Scores with each sample's forced index (>= 0) ranked first (the oracle's upper bound)."""
    if force is None:
        return scores
    ranking, forced = scores.clone(), force.to(scores.device)
    rows = torch.nonzero(forced >= 0).flatten()
    ranking[rows, forced[rows]] = float("inf")
    return ranking
