"""lora_ft, the lower bound CoIN compares against: LoRA on every linear layer of the LLM, fine-tuned task
after task; stage t starts from stage t-1's adapter, and an evaluation after stage s uses stage s's. No
prompt, no selection. Settings: `lora` (rank 128, alpha 256, dropout 0.05: CoIN's LoRA scripts and LLaVA's
train.py), its `training` overrides (the learning rate of LoRA is not a prompt's). Its model: model.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modalprompt.config import _help, training_overrides
from modalprompt.methods.base import Method, Section
from modalprompt.methods.registry import register

if TYPE_CHECKING:
    from modalprompt.bases.backbone import Backbone
    from modalprompt.config import MethodConfig
    from modalprompt.methods.lora_ft.model import LoraAdapter, LoraLLM
    from modalprompt.model.checkpoint import StageMeta


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on every linear layer of the LLM (lora_ft, replay, multitask). Defaults: CoIN's LoRA scripts
    (`--lora_r 128 --lora_alpha 256`) and LLaVA's train.py (lora_dropout 0.05, all linear layers of the LLM)."""

    rank: int = _help("LoRA rank r.", default=128, minimum=1)
    alpha: float = _help(
        "LoRA alpha: the update is scaled by alpha / r.", default=256.0, exclusive_minimum=0.0
    )
    dropout: float = _help(
        "Dropout on the LoRA branch's input while training.", default=0.05, minimum=0.0, exclusive_maximum=1.0,
        training_only=True,
    )  # fmt: skip
    target_modules: tuple[str, ...] = _help(
        "Names of the LLM's linear layers that get LoRA (LLaMA's names: every linear layer of the LLM).",
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    )
    training: dict[str, Any] = training_overrides("the LoRA methods (e.g. their learning rate)")

    def structure(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "target_modules": list(self.target_modules)}


@register
class LoraFT(Method):
    name = "lora_ft"
    summary = "LoRA fine-tuning of the LLM, task after task (CoIN's baseline: the lower bound)"
    prompts_of = "lora_ft"
    selects = False
    section = Section("lora", LoraSettings, "LoRA of the LLM")
    sections = ("lora",)
    adapts_base = True
    reads_method_section = False  # no prompt: no ModalPrompt knob is read
    listing_order = 5

    def build_model(self, backbone: Backbone, method: MethodConfig, options: dict[str, Any]) -> LoraLLM:
        from modalprompt.methods.lora_ft.model import LoraLLM

        return LoraLLM(backbone, options["lora"])

    def structure(self, model: LoraLLM) -> dict[str, Any]:
        return {"adapter": "lora", **model.settings.structure()}

    def start_stage(
        self, model: LoraLLM, previous: list[Path], task: str, seed: int
    ) -> tuple[LoraAdapter, list[StageMeta]]:
        """A seeded adapter; from stage 2 on, it continues from stage t-1's tensors."""
        from modalprompt.model.checkpoint import read_chain
        from modalprompt.model.prompts import stage_seed

        metas = read_chain(previous)
        adapter = model.attach(stage_seed(seed, len(metas) + 1))
        if previous:
            adapter.load_state_dict(self._tensors(model, Path(previous[-1]), metas[-1]))
        adapter.train(True)
        return adapter, metas

    def load_for_evaluation(self, model: LoraLLM, checkpoints: list[Path]) -> list[str]:
        from modalprompt.model.checkpoint import read_chain

        metas = read_chain(checkpoints)
        if checkpoints:
            model.attach(seed=0).load_state_dict(self._tensors(model, Path(checkpoints[-1]), metas[-1]))
            model.adapter.train(False)
        return [m.task for m in metas]

    def release(self, model: LoraLLM) -> None:
        model.detach_adapter()

    def _tensors(self, model: LoraLLM, folder: Path, meta: StageMeta):
        from modalprompt.model.checkpoint import load_tensors

        return load_tensors(folder, meta, model.backbone.fingerprint, self.structure(model))
