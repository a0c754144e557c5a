"""hide_llava (Guo et al., ACL 2025, arXiv 2503.12941): HiDe-LLaVA's hierarchical decoupling of LoRA on the
LLM by depth. Every stage trains one LoRA of its own on every linear layer of the LLM (alone, from a fresh
initialisation, as the authors' code trains its current expert) and keeps the mean CLIP image and text
features of its task's training data (its anchors, `finish_stage`). At inference, the top decoder layer
(task-specific expansion) sums every learned task's LoRA with per-sample weights softmax(similarity /
temperature), the similarity of the sample's CLIP features to each task's anchors (no task id); the lower
layers (task-general fusion) use one LoRA fused from those of tasks 1..s. Settings: `hide_llava`; its
model: model.py."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modalprompt.config import TextFeature, _help, training_overrides
from modalprompt.methods.base import Method, Section
from modalprompt.methods.registry import register

if TYPE_CHECKING:
    from collections.abc import Iterable

    from modalprompt.bases.backbone import Backbone
    from modalprompt.config import MethodConfig
    from modalprompt.data.datasets import Batch
    from modalprompt.methods.hide_llava.model import HiDeLLaVA, TaskLora
    from modalprompt.model.checkpoint import StageMeta


class Fusion(enum.StrEnum):
    SUM = "sum"  # the authors' code: every task's A summed, every task's B summed (merge weight 1.0)
    MEAN = "mean"  # the uniform average of the tasks' A, and of their B


@dataclass(frozen=True)
class HiDeLLaVAConfig:
    """HiDe-LLaVA (Guo et al., ACL 2025). Defaults: the authors' code and scripts (CoIN: LoRA rank 64 split
    into 8 task experts of rank 8 with alpha 128, i.e. rank 8 and scaling 2 per task; dropout 0.05; every
    linear layer of the LLM; the last decoder layer expanded; A ~ N(0, 0.01^2), B = 0; similarity (image +
    text) / 2 with softmax temperature 0.1; the lower layers' A and B summed over tasks)."""

    rank: int = _help("LoRA rank r of each task's LoRA.", default=8, minimum=1)
    alpha: float = _help(
        "LoRA alpha: each task's update is scaled by alpha / r (the authors' 128 / 64 = 2).", default=16.0,
        exclusive_minimum=0.0,
    )  # fmt: skip
    dropout: float = _help(
        "Dropout on the LoRA branch's input while training.", default=0.05, minimum=0.0, exclusive_maximum=1.0,
        training_only=True,
    )  # fmt: skip
    init_std: float = _help(
        "Standard deviation of a new LoRA's A (B starts at zero), as in the authors' code.", default=0.01,
        exclusive_minimum=0.0, training_only=True,
    )  # fmt: skip
    target_modules: tuple[str, ...] = _help(
        "Names of the LLM's linear layers that get LoRA (LLaMA's names: every linear layer of the LLM).",
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    )
    top_layers: int = _help(
        "Decoder layers, counted from the top, with task-specific expansion (the authors: the last one); "
        "the layers below use the fused LoRA.", default=1, minimum=1, evaluation_only=True,
    )  # fmt: skip
    temperature: float = _help(
        "Softmax temperature over the tasks' similarities that weights the top-layer LoRAs.", default=0.1,
        exclusive_minimum=0.0, evaluation_only=True,
    )  # fmt: skip
    image_weight: float = _help(
        "Weight of the image similarity (1 - it: the text similarity) to a task's anchors; samples without an "
        "image score on text alone.", default=0.5, minimum=0.0, maximum=1.0, evaluation_only=True,
    )  # fmt: skip
    fusion: Fusion = _help(
        "How the lower layers' LoRAs of tasks 1..s are fused: 'sum' (the authors' code: A = sum of the A, "
        "B = sum of the B) or 'mean' (their averages).", default=Fusion.SUM, evaluation_only=True,
    )  # fmt: skip
    text_feature: TextFeature = _help(
        "CLIP text feature of the text anchors (the authors: the pooled output, no projection).",
        default=TextFeature.POOLED,
    )
    training: dict[str, Any] = training_overrides("hide_llava (e.g. its learning rate)")

    def structure(self) -> dict[str, Any]:
        """What a stage file's tensors mean: its LoRA's shape and scale, and its anchors' feature."""
        return {"rank": self.rank, "alpha": self.alpha, "target_modules": list(self.target_modules),
                "text_feature": str(self.text_feature)}  # fmt: skip


@register
class HiDeLLaVAMethod(Method):
    name = "hide_llava"
    summary = "HiDe-LLaVA: task-specific top-layer LoRAs weighted by CLIP anchors, fused LoRAs below"
    prompts_of = "hide_llava"
    selects = True  # each sample's top-layer LoRA weights come from its anchor similarities
    section = Section("hide_llava", HiDeLLaVAConfig, "HiDe-LLaVA's LoRAs and task anchors")
    sections = ("hide_llava",)
    adapts_base = True
    reads_method_section = False  # no prompt: no ModalPrompt knob is read
    listing_order = 15

    def build_model(self, backbone: Backbone, method: MethodConfig, options: dict[str, Any]) -> HiDeLLaVA:
        from modalprompt.methods.hide_llava.model import HiDeLLaVA

        return HiDeLLaVA(backbone, options["hide_llava"])

    def structure(self, model: HiDeLLaVA) -> dict[str, Any]:
        return {"adapter": "hide_llava", **model.settings.structure()}

    def start_stage(
        self, model: HiDeLLaVA, previous: list[Path], task: str, seed: int
    ) -> tuple[TaskLora, list[StageMeta]]:
        """A seeded LoRA of this task's own on every target layer, trained alone (the authors' code trains
        only the current task's expert, in every layer); the earlier stages are checked, not loaded: their
        tensors stay in their own files, unchanged."""
        from modalprompt.model.checkpoint import check_compatible, read_chain
        from modalprompt.model.prompts import stage_seed

        metas = read_chain(previous)
        for folder, meta in zip(previous, metas, strict=True):
            check_compatible(Path(folder), meta, model.backbone.fingerprint, self.structure(model),
                             model.backbone.family)  # fmt: skip
        current = model.start_training(stage_seed(seed, len(metas) + 1))
        return current, metas

    def finish_stage(self, model: HiDeLLaVA, current: TaskLora, batches: Iterable[Batch]) -> None:
        """The task's anchors: the mean CLIP image feature (over its records with an image) and the mean
        CLIP text feature of its training records."""
        model.set_anchors(current, batches)

    def load_for_evaluation(self, model: HiDeLLaVA, checkpoints: list[Path]) -> list[str]:
        from modalprompt.errors import CheckpointError
        from modalprompt.model.checkpoint import load_tensors, read_chain

        metas = read_chain(checkpoints)
        states = []
        for folder, meta in zip(checkpoints, metas, strict=True):
            states.append(load_tensors(Path(folder), meta, model.backbone.fingerprint, self.structure(model)))
        try:
            model.load_tasks(states)
        except RuntimeError as err:
            raise CheckpointError(f"{checkpoints}: tensors do not fit this model ({err})") from err
        return [m.task for m in metas]

    def release(self, model: HiDeLLaVA) -> None:
        model.detach()
