"""hide_llava's model: per-task LoRAs on the frozen LLM, composed with forward hooks, and CLIP task anchors.

Each target linear layer of the LLM gets a forward hook that adds a LoRA update to its output; the base's
modules and weights are never replaced or written, and `detach` removes the hooks, so the base is exactly
as loaded once a stage or an evaluation is done. What a hook adds depends on the mode:
- training stage t: task t's own LoRA, with dropout, in every layer (the authors' code trains only the
  current task's expert, everywhere);
- evaluation after stage s: in the lower layers, one LoRA fused from tasks 1..s (`fuse`); in the top
  `top_layers` layers, sum_i w_i * B_i A_i x with the sample's weights w = softmax(similarity / T) over the
  learned tasks (`task_weights`), the similarity of its CLIP image and text features to each task's anchors.
`HiDeLLaVA` is the model the stage functions train and evaluate: ModalPrompt's wrapper (embedding, CLIP
queries, LLM calls) with no prompt, plus those LoRAs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from modalprompt.bases.backbone import Backbone
from modalprompt.config import ConfigError, MethodConfig, TextFeature
from modalprompt.data.datasets import Batch
from modalprompt.model.wrapper import Generation, ModalPromptModel, ModalPromptOutput, Queries

if TYPE_CHECKING:
    from modalprompt.methods.hide_llava import HiDeLLaVAConfig


def _key(path: str) -> str:
    """A module path as a submodule name (names may not hold dots)."""
    return path.replace(".", "/")


class LoraPair(nn.Module):
    """One linear layer's LoRA: update = B @ A, A (r, in), B (out, r)."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))


class TaskLora(nn.Module):
    """One task's LoRA on every target layer (lower and top) and its anchors: what a stage file holds. Its
    parameters are the LoRA tensors; the anchors are buffers, set after training (`HiDeLLaVA.set_anchors`)."""

    def __init__(self, shapes: list[tuple[str, int, int]], rank: int, image_dim: int, text_dim: int):
        super().__init__()
        self.pairs = nn.ModuleDict({_key(path): LoraPair(i, o, rank) for path, i, o in shapes})
        self.register_buffer("image_anchor", torch.zeros(image_dim))
        self.register_buffer("text_anchor", torch.zeros(text_dim))

    def pair(self, path: str) -> LoraPair:
        return self.pairs[_key(path)]

    @torch.no_grad()
    def initialise(self, seed: int, std: float) -> TaskLora:
        """A ~ N(0, std^2) from its own seeded generator (the global one is not drawn from), B = 0: the
        model starts as the base."""
        generator = torch.Generator().manual_seed(seed)
        for pair in self.pairs.values():
            pair.A.copy_(torch.randn(pair.A.shape, generator=generator) * std)
            pair.B.zero_()
        return self


def task_similarity(
    image: torch.Tensor,  # (B, e_v)
    text: torch.Tensor,  # (B, e_q)
    has_image: torch.Tensor,  # (B,) bool
    image_anchors: torch.Tensor,  # (T, e_v)
    text_anchors: torch.Tensor,  # (T, e_q)
    image_weight: float,
) -> torch.Tensor:  # (B, T)
    """w_v * cos(f_v, a_v) + (1 - w_v) * cos(f_q, a_q) per task; cos(f_q, a_q) alone without an image."""
    cos_image = F.normalize(image.float(), dim=-1) @ F.normalize(image_anchors.float(), dim=-1).T
    cos_text = F.normalize(text.float(), dim=-1) @ F.normalize(text_anchors.float(), dim=-1).T
    both = image_weight * cos_image + (1.0 - image_weight) * cos_text
    return torch.where(has_image[:, None], both, cos_text)


def fuse(tensors: list[torch.Tensor], rule: str) -> torch.Tensor:
    """The lower layers' fusion of the tasks' A (or B): their sum (the authors' code) or their mean."""
    stacked = torch.stack([t.detach().float() for t in tensors])
    return stacked.sum(0) if rule == "sum" else stacked.mean(0)


class HiDeLLaVA(nn.Module):
    """The frozen base with hooked LoRAs in its LLM and no prompt: CE training and greedy generation."""

    def __init__(self, backbone: Backbone, settings: HiDeLLaVAConfig):
        super().__init__()
        self.wrapper = ModalPromptModel(backbone, MethodConfig(text_feature=settings.text_feature))
        self.settings = settings
        self.scaling = settings.alpha / settings.rank
        self.targets, layers = _targets(backbone.llava.model.language_model, settings)
        first_top = layers - settings.top_layers
        self.top = {path for path, (_, layer) in self.targets.items() if layer >= first_top}
        self.image_dim = backbone.visual_projection.out_features
        self.text_dim = (
            backbone.text_projection.out_features
            if settings.text_feature == TextFeature.PROJECTED
            else backbone.text_projection.in_features
        )
        self.tasks = nn.ModuleList()  # the trained (last) or loaded task LoRAs, in task order
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._training_stage = False  # hooks add the last task's LoRA (training) or the fused / mixed ones
        self._fused: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # lower layers: (A, B)
        self._bank: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # top layers: (A_1..s, B_1..s) stacked
        self._weights: torch.Tensor | None = None  # (B, s) the top layers' per-sample task weights

    @property
    def backbone(self) -> Backbone:
        return self.wrapper.backbone

    # ------------------------------------------------------------------ LoRAs in and out of the base

    def _new_task(self) -> TaskLora:
        shapes = [(path, m.in_features, m.out_features) for path, (m, _) in self.targets.items()]
        return TaskLora(shapes, self.settings.rank, self.image_dim, self.text_dim)

    def start_training(self, seed: int) -> TaskLora:
        """A fresh seeded LoRA for the task being trained, the only trainable tensors, hooked in every layer."""
        if self._handles:
            raise RuntimeError("this model already has its LoRAs attached")
        current = self._new_task().initialise(seed, self.settings.init_std).to(self.backbone.device)
        current.requires_grad_(True).train(True)  # LoRA dropout on while the stage trains
        self.tasks.append(current)
        self._training_stage = True
        self._attach()
        return current

    @torch.no_grad()
    def load_tasks(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Tasks 1..s from their stage files (frozen): the fused lower LoRA and the top layers' bank."""
        if self._handles:
            raise RuntimeError("this model already has its LoRAs attached")
        for state in states:
            task = self._new_task()
            task.load_state_dict(state, strict=True)
            self.tasks.append(task.requires_grad_(False).train(False).to(self.backbone.device))
        if not states:
            return  # the base alone
        for path in self.targets:
            pairs = [task.pair(path) for task in self.tasks]
            if path in self.top:  # B_cat (w * (A_cat x)) = sum_i w_i B_i A_i x
                self._bank[path] = (torch.cat([p.A for p in pairs]), torch.cat([p.B for p in pairs], dim=1))
            else:
                rule = str(self.settings.fusion)
                self._fused[path] = (fuse([p.A for p in pairs], rule), fuse([p.B for p in pairs], rule))
        self._training_stage = False
        self._attach()

    def _attach(self) -> None:
        for path, (module, _) in self.targets.items():
            self._handles.append(module.register_forward_hook(self._hook(path)))

    def detach(self) -> None:
        """Remove the hooks (the base's modules were never changed) and forget the LoRAs."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.tasks = nn.ModuleList()
        self._fused.clear()
        self._bank.clear()
        self._weights = None

    def _hook(self, path: str):
        def add_lora(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            return output + self._update(path, args[0]).to(output.dtype)

        return add_lora

    def _update(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """The LoRA update of layer `path` for its input x (B, ..., in)."""
        if self._training_stage:
            current = self.tasks[-1]
            pair = current.pair(path)
            x = F.dropout(x.to(pair.A.dtype), self.settings.dropout, training=current.training)
            return (x @ pair.A.T) @ pair.B.T * self.scaling
        if path not in self.top:
            a, b = self._fused[path]
            return (x.to(a.dtype) @ a.T) @ b.T * self.scaling
        if self._weights is None:
            raise RuntimeError("the top layers' task weights are not set: run the LLM inside `mixture`")
        a, b = self._bank[path]
        weights = self._weights.to(a.dtype).repeat_interleave(self.settings.rank, dim=-1)  # (B, s * r)
        weights = weights.view(len(weights), *[1] * (x.dim() - 2), weights.shape[-1])
        return ((x.to(a.dtype) @ a.T) * weights) @ b.T * self.scaling

    @contextlib.contextmanager
    def mixture(self, weights: torch.Tensor) -> Iterator[None]:
        """Run the LLM with these per-sample (B, s) weights of the learned tasks' top-layer LoRAs."""
        self._weights = weights
        try:
            yield
        finally:
            self._weights = None

    # ------------------------------------------------------------------ anchors and task weights

    @torch.no_grad()
    def set_anchors(self, task: TaskLora, batches: Iterable[Batch]) -> None:
        """The task's anchors: the mean CLIP image feature over its records with an image (zero if none)
        and the mean CLIP text feature over all its records."""
        image_sum = torch.zeros(self.image_dim, dtype=torch.float64, device=self.backbone.device)
        text_sum = torch.zeros(self.text_dim, dtype=torch.float64, device=self.backbone.device)
        images = samples = 0
        for batch in batches:
            q = self.wrapper.encode(batch)
            image_sum += q.image[q.has_image].double().sum(0)
            text_sum += q.text.double().sum(0)
            images += int(q.has_image.sum())
            samples += len(q.text)
        task.image_anchor.copy_(image_sum / max(images, 1))
        task.text_anchor.copy_(text_sum / max(samples, 1))

    def task_similarity(self, q: Queries) -> torch.Tensor:
        """(B, s) similarity of each sample to each learned task's anchors."""
        image_anchors = torch.stack([t.image_anchor for t in self.tasks])
        text_anchors = torch.stack([t.text_anchor for t in self.tasks])
        return task_similarity(q.image, q.text, q.has_image, image_anchors, text_anchors,
                               self.settings.image_weight)  # fmt: skip

    def task_weights(self, q: Queries, force_task: torch.Tensor | None = None) -> torch.Tensor:
        """(B, s) softmax(similarity / temperature); a forced task (index >= 0) gets all the weight."""
        weights = torch.softmax(self.task_similarity(q) / self.settings.temperature, dim=-1)
        if force_task is not None:
            forced = force_task.to(weights.device)
            rows = torch.nonzero(forced >= 0).flatten()
            weights[rows] = F.one_hot(forced[rows], weights.shape[-1]).to(weights.dtype)
        return weights

    # ------------------------------------------------------------------ what the stage functions call

    def forward(self, batch: Batch) -> ModalPromptOutput:
        queries = self.wrapper.encode(batch)
        if self._training_stage or not self.tasks:
            weights = torch.zeros(len(batch.input_ids), 0, device=queries.text.device)
        else:  # an evaluation-mode forward (e.g. a CE check) weights the top layers as generation does
            weights = self.task_weights(queries)
        with self.mixture(weights):
            ce_sum, tokens = self.wrapper.prefixed_cross_entropy(batch, queries, None)
        return ModalPromptOutput.cross_entropy_only(ce_sum, tokens, queries)

    @torch.no_grad()
    def generate(
        self, batch: Batch, max_new_tokens: int, force_task: torch.Tensor | None = None
    ) -> Generation:
        """Greedy decoding; each sample's top-layer LoRAs weighted by its anchor similarities (no task id).
        `selected` is the task of the largest weight, `scores` the (B, s) weights."""
        queries = self.wrapper.encode(batch)
        if not self.tasks:
            weights = torch.zeros(len(batch.input_ids), 0, device=queries.text.device)
            selected = torch.zeros(len(batch.input_ids), 0, dtype=torch.long, device=queries.text.device)
        else:
            weights = self.task_weights(queries, force_task)
            selected = weights.argmax(dim=-1, keepdim=True)
        with self.mixture(weights):
            tokens = self.wrapper.generate_with_prefix(batch, queries, None, max_new_tokens)
        return Generation(token_ids=tokens, selected=selected, scores=weights)


def _targets(
    language_model: nn.Module, settings: HiDeLLaVAConfig
) -> tuple[dict[str, tuple[nn.Linear, int]], int]:
    """The target linear layers of the LLM's decoder layers, by path (layers.i.name): (module, i); and the
    number of decoder layers."""
    layers = getattr(language_model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ConfigError(
            f"hide_llava: the LLM ({type(language_model).__name__}) has no `layers` list of decoder layers, "
            "whose top layers it expands"
        )
    if settings.top_layers > len(layers):
        raise ConfigError(
            f"hide_llava.top_layers = {settings.top_layers} exceeds the LLM's {len(layers)} decoder layers"
        )
    names = set(settings.target_modules)
    targets = {
        f"layers.{index}.{name}": (module, index)
        for index, layer in enumerate(layers)
        for name, module in layer.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in names
    }
    if not targets:
        raise ConfigError(
            f"hide_llava.target_modules = {list(settings.target_modules)} name no linear layer of this LLM's "
            "decoder layers: give the names of its layers (LLaMA: q_proj, k_proj, v_proj, o_proj, gate_proj, "
            "up_proj, down_proj)"
        )
    return targets, len(layers)
