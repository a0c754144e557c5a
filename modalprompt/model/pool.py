"""Prompt-pool methods from continual learning, adapted to LLaVA the way ModalPrompt is: prompts are rows
in the LLM's embedding space, inserted right after BOS (insert_prompts), and chosen by a query from a
frozen encoder (the CLIP image feature the base computes anyway, or the CLIP text feature).

- L2P (Wang et al., CVPR 2022): one pool of M prompts with keys, shared by all tasks and trained in every
  stage; each sample takes the N prompts whose keys are most cosine-similar to its query (concatenated in
  that order); a surrogate loss pulls the chosen keys to the query.
- DualPrompt (Wang et al., ECCV 2022): a G-prompt shared by all tasks and an E-prompt with a key per task;
  a stage trains on its own task's E-prompt (the task is known in training) and pulls that key to the
  query; inference takes the E-prompt whose key matches the query best. Prefix [G; E].
- CODA-Prompt (Smith et al., CVPR 2023): prompt components P_m with keys K_m and attention vectors A_m;
  the prompt is sum_m alpha_m P_m with alpha_m = cos(query * A_m, K_m), end to end (no selection, no pull
  loss); each task adds its own components, initialised orthogonal to the earlier ones (Gram-Schmidt),
  and only those train; an optional orthogonality penalty.

Each model has `start(previous, task, seed)` (load stages 1..t-1, set up what stage t trains) and
`load(checkpoints)` (what an evaluation after stage s uses): the policy the methods in
modalprompt/methods/ name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modalprompt.bases.backbone import Backbone
from modalprompt.config import CodaPromptConfig, ConfigError, DualPromptConfig, L2PConfig, MethodConfig, Query
from modalprompt.data.datasets import Batch
from modalprompt.model.prompts import stage_seed
from modalprompt.model.wrapper import Generation, ModalPromptModel, ModalPromptOutput, Queries
from modalprompt.model.checkpoint import StageMeta, load_tensors, read_chain


class TrainableTensors:
    """Named parameters a stage trains, as one set: parameters(), state_dict(), load_state_dict()."""

    def __init__(self, tensors: dict[str, nn.Parameter]):
        self.tensors = tensors

    def parameters(self) -> list[nn.Parameter]:
        return list(self.tensors.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.tensors.items()}

    @torch.no_grad()
    def load_state_dict(self, values: dict[str, torch.Tensor], strict: bool = True) -> None:
        if strict and set(values) != set(self.tensors):
            raise RuntimeError(f"tensors {sorted(values)} do not fit {sorted(self.tensors)}")
        for name, value in values.items():
            self.tensors[name].copy_(value)


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


def _cosine(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:  # (B, e), (n, e) -> (B, n)
    return F.normalize(query.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T


def _rank(scores: torch.Tensor, force: torch.Tensor | None) -> torch.Tensor:
    """Scores with each sample's forced index (>= 0) ranked first (the oracle's upper bound)."""
    if force is None:
        return scores
    ranking, forced = scores.clone(), force.to(scores.device)
    rows = torch.nonzero(forced >= 0).flatten()
    ranking[rows, forced[rows]] = float("inf")
    return ranking


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
        similarity = _cosine(query, self.keys)  # (B, M)
        top = similarity.topk(self.settings.top_k, dim=-1).indices  # (B, N), most similar first
        prefix = self.prompts[top].flatten(1, 2)  # (B, N * L, d)
        pull = (1.0 - similarity.gather(1, top)).sum(-1)  # (B,) chosen keys toward the query
        return Choice(prefix, pull, top, similarity)


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
        similarity = _cosine(query, torch.stack(list(self.e_keys)))  # (B, t)
        if training:  # the stage's own task: its E-prompt, its key pulled to the query
            chosen = torch.full((len(query),), len(self.e_keys) - 1, device=query.device)
            pull = 1.0 - similarity[:, -1]
        else:
            chosen, pull = _rank(similarity, force).argmax(dim=-1), None
        e_prompt = torch.stack(list(self.e_prompts))[chosen]  # (B, L_e, d)
        prefix = torch.cat([self.g_prompt.expand(len(query), -1, -1), e_prompt], dim=1)  # (B, L_g + L_e, d)
        return Choice(prefix, pull, chosen[:, None], similarity)


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
