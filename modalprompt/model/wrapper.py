"""The ModalPrompt wrapper: a frozen base model plus CLIP queries plus the learned per-task prompts.

Composition only: the wrapper builds `inputs_embeds` (image features scattered into the image tokens,
selected prompts inserted after the base's lead: BOS, or the template's system turn), extends the attention
mask, labels and positions, and runs the base model's own forward / generate. Everything family-specific
goes through the base's adapter (`backbone.base`, bases/adapter.py). It returns the CE loss and both
alignment terms separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modalprompt.bases.backbone import Backbone
from modalprompt.config import MethodConfig, TextFeature
from modalprompt.data.datasets import Batch
from modalprompt.model.prompts import PromptStore, TaskPrompt
from modalprompt.model.selection import select_for_inference, select_for_training, task_scores

IGNORE_INDEX = -100


@dataclass
class Queries:
    embeds: torch.Tensor  # (B, N, d) token embeddings with image features in place
    image: torch.Tensor  # (B, e) f_v; zeros for samples without an image
    text: torch.Tensor  # (B, e) f_q
    has_image: torch.Tensor  # (B,) bool


@dataclass
class ModalPromptOutput:
    """Loss terms as sums with their counts, so that gradient accumulation and data parallelism can
    normalise by the global counts of an optimizer step (the same gradients as one large batch)."""

    ce_sum: torch.Tensor  # summed CE over answer tokens
    tokens: int  # answer tokens (the CE's count)
    align_image_sum: torch.Tensor  # sum of 1 - cos(f_v, k_t) over samples with an image
    images: int
    align_text_sum: torch.Tensor  # sum of 1 - cos(f_q, k_t) over samples
    samples: int
    image_weight: float  # w_v
    text_weight: float  # w_q
    selected: torch.Tensor  # (B, k) task indices, ascending score, current task last
    scores: torch.Tensor  # (B, t - 1) scores of the previous tasks
    regulariser: torch.Tensor | None = None  # a weighted penalty on the trained tensors (CODA-Prompt's)
    answer_term_sum: torch.Tensor | None = None  # a weighted sum over answer tokens (LwF distils)

    @classmethod
    def cross_entropy_only(cls, ce_sum: torch.Tensor, tokens: int, queries: Queries) -> ModalPromptOutput:
        """The output of a model with no prompt selection and no alignment terms (the LoRA methods)."""
        samples = len(queries.has_image)
        zero = ce_sum.new_zeros(())
        empty = torch.zeros(samples, 0, dtype=torch.long, device=ce_sum.device)
        return cls(ce_sum=ce_sum, tokens=tokens, align_image_sum=zero, images=int(queries.has_image.sum()),
                   align_text_sum=zero, samples=samples, image_weight=0.0, text_weight=0.0, selected=empty,
                   scores=empty.float())  # fmt: skip

    def normalised_loss(self, tokens: int, images: int, samples: int) -> torch.Tensor:
        """This batch's share of CE + w_v * align_image + w_q * align_text (+ the regulariser, once per set;
        + the answer-token term, a mean over answer tokens as CE is) over a larger set of batches."""
        loss = (
            self.ce_sum / max(tokens, 1)
            + self.image_weight * self.align_image_sum / max(images, 1)
            + self.text_weight * self.align_text_sum / max(samples, 1)
        )
        if self.answer_term_sum is not None:
            loss = loss + self.answer_term_sum / max(tokens, 1)
        if self.regulariser is not None:
            loss = loss + self.regulariser * self.samples / max(samples, 1)
        return loss

    @property
    def loss(self) -> torch.Tensor:  # CE + w_v * align_image + w_q * align_text, means over this batch
        return self.normalised_loss(self.tokens, self.images, self.samples)

    @property
    def ce(self) -> torch.Tensor:
        return self.ce_sum / max(self.tokens, 1)

    @property
    def align_image(self) -> torch.Tensor:  # 1 - mean cos(f_v, k_t) over samples with an image
        return self.align_image_sum / max(self.images, 1)

    @property
    def align_text(self) -> torch.Tensor:  # 1 - mean cos(f_q, k_t)
        return self.align_text_sum / max(self.samples, 1)


@dataclass
class Generation:
    token_ids: torch.Tensor  # (B, new) generated ids, padded with pad_token_id
    selected: torch.Tensor  # (B, k) task indices, ascending score
    scores: torch.Tensor  # (B, t) scores of all learned tasks


def answer_cross_entropy(shift_logits: torch.Tensor, shift_labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed CE over the answer tokens (labels not IGNORE_INDEX) and their count, from shifted logits."""
    tokens = int((shift_labels != IGNORE_INDEX).sum())
    ce_sum = F.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return ce_sum, tokens


def insert_prompts(
    embeds: torch.Tensor,  # (B, N, d)
    attention_mask: torch.Tensor,  # (B, N)
    labels: torch.Tensor | None,  # (B, N)
    prompt: torch.Tensor,  # (B, P, d)
    after_bos: bool = True,
    *,
    lead: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Insert `prompt` right after each sample's BOS (its first attended token), for left or right padding;
    `lead` > 1 keeps that many first attended tokens (a template's system turn) before it instead.

    Returns embeds (B, N + P, d), attention mask with ones over the prompt, labels with IGNORE_INDEX over
    the prompt, and position ids that run on through the prompt (1D; a base with other positions computes its
    own, `backbone.base.positions`).
    """
    batch, length, _ = embeds.shape
    plen = prompt.shape[1]
    first = attention_mask.long().argmax(dim=-1, keepdim=True)  # (B, 1) first real token
    lead = (1 if after_bos else 0) if lead is None else lead
    start = first + lead  # (B, 1) first prompt position
    pos = torch.arange(length + plen, device=embeds.device).expand(batch, -1)  # (B, N + P)
    in_prompt = (pos >= start) & (pos < start + plen)
    source = torch.where(pos < start, pos, pos - plen).clamp(0, length - 1)  # (B, N + P)
    prompt_row = (pos - start).clamp(0, plen - 1)

    def take(x: torch.Tensor) -> torch.Tensor:
        return x.gather(1, source)

    gathered = embeds.gather(1, source[..., None].expand(-1, -1, embeds.shape[-1]))
    from_prompt = prompt.to(embeds.dtype).gather(1, prompt_row[..., None].expand(-1, -1, prompt.shape[-1]))
    new_embeds = torch.where(in_prompt[..., None], from_prompt, gathered)
    new_mask = torch.where(in_prompt, 1, take(attention_mask))
    new_labels = None if labels is None else torch.where(in_prompt, IGNORE_INDEX, take(labels))
    positions = (new_mask.long().cumsum(-1) - 1).clamp(min=0)
    return new_embeds, new_mask, new_labels, positions


class ModalPromptModel(nn.Module):
    def __init__(self, backbone: Backbone, method: MethodConfig):
        super().__init__()
        self.backbone = backbone
        self.method = method
        hidden = backbone.llava.config.text_config.hidden_size
        feature = backbone.visual_projection.out_features
        text_dim = (
            backbone.text_projection.out_features
            if method.text_feature == TextFeature.PROJECTED
            else backbone.text_projection.in_features
        )
        # keys must fit both queries; checked when a task is added (the base alone needs no keys)
        self._feature_mismatch = (
            None
            if text_dim == feature
            else (
                f"method.text_feature={method.text_feature.value!r} gives {text_dim}-d text features but the image "
                f"query is {feature}-d; keys must match both: use text_feature 'projected' with this CLIP"
            )
        )
        self.prompts = PromptStore(method.prefix_length, hidden, method.key_hidden_size or hidden, feature)
        self.prompts.to(backbone.device)
        self._frozen: tuple | None = None  # see frozen_keys_and_prompts

    @property
    def llava(self):
        return self.backbone.llava

    @property
    def after_bos(self) -> bool:
        return self.backbone.tokenizer.bos_token_id is not None

    @property
    def lead(self) -> int:
        """Tokens of every sequence before the prompts (BOS, or the base template's system turn)."""
        return self.backbone.prompt_lead

    def _insert(self, embeds, batch: Batch, prompt: torch.Tensor, labels: torch.Tensor | None = None):
        """The prompt rows in place: embeds, mask, labels and the base's own position ids."""
        embeds, mask, labels, _ = insert_prompts(embeds, batch.attention_mask, labels, prompt, lead=self.lead)
        return embeds, mask, labels, self.backbone.base.positions(batch, mask, self.lead, prompt.shape[1])

    def add_task(self, name: str, seed: int | None = None) -> TaskPrompt:
        """Append a task's prompt and key network: with a seed, initialised and made the only trainable
        tensors (the stage being trained); without, frozen, for a stage file to be loaded into."""
        if self._feature_mismatch:
            raise ValueError(self._feature_mismatch)
        task = self.prompts.add_task(name)
        if seed is None:
            task.requires_grad_(False)
        else:
            task.initialise(self.llava.get_input_embeddings().weight, seed)
            self.prompts.freeze_all_but_last()
        return task.to(self.backbone.device)

    @torch.no_grad()
    def encode(self, batch: Batch) -> Queries:
        """Token embeddings with image features, and both CLIP queries, from one vision forward."""
        b = self.backbone
        embeds = b.base.embed(batch.input_ids)  # (B, N, d)
        feature_dim = b.visual_projection.out_features
        image_query = torch.zeros(len(batch.input_ids), feature_dim, device=embeds.device)
        if batch.pixel_values is not None:
            pixels = batch.pixel_values.to(b.device, b.dtype)
            features, tower_pooled = b.base.image_features(batch, pixels)  # (image tokens, d), (M, h) | None
            mask = (batch.input_ids == b.image_token_id)[..., None]
            embeds = embeds.masked_scatter(mask, features.to(embeds.dtype))
            if b.clip_vision is None:  # the base's tower is CLIP's: its pooled pass is CLIP's
                pooled = tower_pooled
            else:  # CLIP's own pass: on the base's pixels (LLaVA-1.5) or on the CLIP folder's
                clip_pixels = pixels if batch.clip_pixel_values is None else batch.clip_pixel_values
                pooled = b.clip_vision(clip_pixels.to(b.device, b.dtype)).pooler_output
            image_query[batch.has_image] = b.visual_projection(pooled).float()  # (M, e)
        text = b.clip_text(
            input_ids=batch.clip_input_ids, attention_mask=batch.clip_attention_mask
        ).pooler_output
        if self.method.text_feature == TextFeature.PROJECTED:
            text = b.text_projection(text)
        return Queries(embeds=embeds, image=image_query, text=text.float(), has_image=batch.has_image)

    def _prefix(self, selected: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """(B, k) task indices -> (B, k * L, d) prompt rows."""
        return (self.prompts.prompts() if prompts is None else prompts)[selected].flatten(1, 2)

    @torch.no_grad()
    def frozen_keys_and_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All keys (T, e) and prompts (T, L, d) for inference, computed once while the tensors stay as they
        are (their version counters tell when anything wrote to them): selection then costs one (B, T)
        similarity, not T key networks per batch."""
        version = tuple((id(p), p._version) for p in self.prompts.parameters())
        if self._frozen is None or self._frozen[0] != version:
            self._frozen = (version, self.prompts.keys(), self.prompts.prompts())
        return self._frozen[1], self._frozen[2]

    def forward(self, batch: Batch) -> ModalPromptOutput:
        """Training forward at stage t = number of tasks in the store (the last one is being trained)."""
        if len(self.prompts) == 0:
            raise RuntimeError("add_task() before training: the store has no task to train")
        q = self.encode(batch)
        keys = self.prompts.keys()  # (t, e); the current key carries gradients
        with torch.no_grad():
            scores = task_scores(q.image, q.text, keys[:-1], self.method.lam, q.has_image)  # (B, t - 1)
            selected = select_for_training(scores, self.method.transfer_num)  # (B, min(t, K))
        embeds, mask, labels, positions = self._insert(q.embeds, batch, self._prefix(selected), batch.labels)
        ce_sum, tokens = self._cross_entropy_sum(embeds, mask, labels, positions)
        current = keys[-1].float()
        text_gap = 1.0 - F.cosine_similarity(q.text, current[None], dim=-1)  # (B,)
        image_gap = 1.0 - F.cosine_similarity(q.image, current[None], dim=-1)  # (B,)
        return ModalPromptOutput(
            ce_sum=ce_sum,
            tokens=tokens,
            align_image_sum=(image_gap * q.has_image).sum(),  # samples without an image add nothing
            images=int(q.has_image.sum()),
            align_text_sum=text_gap.sum(),
            samples=len(text_gap),
            image_weight=self.method.image_loss_weight,
            text_weight=self.method.text_loss_weight,
            selected=selected,
            scores=scores,
        )

    def _cross_entropy_sum(self, embeds, mask, labels, positions) -> tuple[torch.Tensor, int]:
        return answer_cross_entropy(*self._shifted_logits(embeds, mask, labels, positions))

    def _shifted_logits(self, embeds, mask, labels, positions) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.backbone.base.logits(embeds, mask, positions)
        return logits[:, :-1].float(), labels[:, 1:]  # (B, N + P - 1, V): each position's next token

    @torch.no_grad()
    def generate(
        self, batch: Batch, max_new_tokens: int, force_task: torch.Tensor | None = None
    ) -> Generation:
        """Greedy decoding with a KV cache. Batches must be left-padded. Prompts are chosen per sample from
        all learned tasks (no task id); no prompt with an empty store. `force_task` (B,) makes each sample's
        given task (index, or -1 for none) rank first, the oracle's selection upper bound."""
        q = self.encode(batch)
        batch_size = len(batch.input_ids)
        if len(self.prompts) == 0:
            scores = torch.zeros(batch_size, 0, device=q.embeds.device)
            selected = torch.zeros(batch_size, 0, dtype=torch.long, device=q.embeds.device)
            embeds, mask = q.embeds, batch.attention_mask
            positions = self.backbone.base.positions(batch, mask, self.lead, 0)
        else:
            keys, prompts = self.frozen_keys_and_prompts()
            scores = task_scores(q.image, q.text, keys, self.method.lam, q.has_image)  # (B, t)
            ranking = scores
            if force_task is not None:
                forced = force_task.to(scores.device)
                ranking = scores.clone()
                rows = torch.nonzero(forced >= 0).flatten()
                ranking[rows, forced[rows]] = float("inf")
            selected = select_for_inference(ranking, self.method.transfer_num)
            embeds, mask, _, positions = self._insert(q.embeds, batch, self._prefix(selected, prompts))
        tokenizer = self.backbone.tokenizer
        out = self.backbone.base.generate(
            embeds, mask, positions, max_new_tokens, tokenizer.pad_token_id, tokenizer.eos_token_id
        )
        return Generation(token_ids=out, selected=selected, scores=scores)

    # ------------------------------------------------------------------ methods that make their own prefix
    # (prompt pools, LoRA): the same embedding, placement and LLM calls, with a prefix they computed

    def prefixed_cross_entropy(
        self, batch: Batch, queries: Queries, prefix: torch.Tensor | None
    ) -> tuple[torch.Tensor, int]:
        """Summed CE over the answer tokens and their count, with `prefix` (B, P, d) inserted after the lead
        (BOS, or the base template's system turn; None: no prefix, e.g. a base whose LLM carries LoRA)."""
        return answer_cross_entropy(*self.prefixed_logits(batch, queries, prefix))

    def prefixed_logits(
        self, batch: Batch, queries: Queries, prefix: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fp32 logits (B, S - 1, V) of every position's next token and that token's label (B, S - 1),
        IGNORE_INDEX off the answers, with `prefix` as in `prefixed_cross_entropy` (a method that needs the
        distributions, not only the CE: LwF's distillation)."""
        if prefix is None:
            mask = batch.attention_mask
            positions = self.backbone.base.positions(batch, mask, self.lead, 0)
            return self._shifted_logits(queries.embeds, mask, batch.labels, positions)
        embeds, mask, labels, positions = self._insert(queries.embeds, batch, prefix, batch.labels)
        return self._shifted_logits(embeds, mask, labels, positions)

    @torch.no_grad()
    def generate_with_prefix(
        self, batch: Batch, queries: Queries, prefix: torch.Tensor | None, max_new_tokens: int
    ) -> torch.Tensor:
        """Greedy decoding (left-padded batch, KV cache) with `prefix` (B, P, d) after the lead; (B, new) ids."""
        embeds, mask = queries.embeds, batch.attention_mask
        if prefix is None:
            positions = self.backbone.base.positions(batch, mask, self.lead, 0)
        else:
            embeds, mask, _, positions = self._insert(embeds, batch, prefix)
        tokenizer = self.backbone.tokenizer
        return self.backbone.base.generate(
            embeds, mask, positions, max_new_tokens, tokenizer.pad_token_id, tokenizer.eos_token_id
        )
