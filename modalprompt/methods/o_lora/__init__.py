"""o_lora (Wang et al., Findings of EMNLP 2023, arXiv 2310.14152): a new LoRA adapter per task in the LLM,
the earlier tasks' adapters frozen and still active (the model after stage t adds all t updates, no task id
at inference); the new adapter trains under CE + lamda_1 * sum |A_i A_t^T| (its A's rows kept orthogonal to
every earlier task's) + lamda_2 * its L2 norm. Stage t's file holds adapter t only; an evaluation after
stage s loads adapters 1..s. Settings: `o_lora` (the authors' code's defaults: r 8, alpha 32, dropout 0.1 on
q_proj / v_proj, lamda_1 0.5, lamda_2 0) and its `training` overrides. Its model: model.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modalprompt.config import _help, training_overrides
from modalprompt.methods.base import Section
from modalprompt.methods.lora_ft import LoraFT
from modalprompt.methods.registry import register

if TYPE_CHECKING:
    from modalprompt.bases.backbone import Backbone
    from modalprompt.config import MethodConfig
    from modalprompt.methods.o_lora.model import OLoraLLM, StageAdapter
    from modalprompt.model.checkpoint import StageMeta


@dataclass(frozen=True)
class OLoraSettings:
    """O-LoRA's adapters and penalties. Defaults: the authors' code (github cmnfriend/O-LoRA: run_uie_lora.py
    lora_dim 8, lora_alpha 32, lora_dropout 0.1, peft's LLaMA targets q_proj and v_proj; lamda_1 0.5, lamda_2 0
    in its scripts)."""

    rank: int = _help("LoRA rank r of each task's adapter.", default=8, minimum=1)
    alpha: float = _help(
        "LoRA alpha: each adapter's update is scaled by alpha / r.", default=32.0, exclusive_minimum=0.0
    )
    dropout: float = _help(
        "Dropout on the LoRA branches' input while training.", default=0.1, minimum=0.0, exclusive_maximum=1.0,
        training_only=True,
    )  # fmt: skip
    target_modules: tuple[str, ...] = _help(
        "Names of the LLM's linear layers that get each task's adapter (LLaMA's names; O-LoRA: the query and "
        "value projections).",
        default=("q_proj", "v_proj"),
    )
    orthogonal_weight: float = _help(
        "lamda_1: weight of the orthogonality penalty, the sum over target layers and earlier tasks i of "
        "sum |A_i A_t^T| (the new adapter's A against each earlier one's).",
        default=0.5, minimum=0.0, training_only=True,
    )  # fmt: skip
    l2_weight: float = _help(
        "lamda_2: weight of the L2 penalty, the sum of the Frobenius norms of the new adapter's A and B.",
        default=0.0, minimum=0.0, training_only=True,
    )  # fmt: skip
    training: dict[str, Any] = training_overrides("o_lora (e.g. its learning rate)")

    def structure(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "target_modules": list(self.target_modules)}


@register
class OLora(LoraFT):
    name = "o_lora"
    summary = "O-LoRA: a new LoRA adapter per task, kept orthogonal to the earlier tasks' frozen adapters"
    prompts_of = "o_lora"
    section = Section("o_lora", OLoraSettings, "O-LoRA's per-task LoRA adapters and penalties")
    sections = ("o_lora",)
    listing_order = 11

    def build_model(self, backbone: Backbone, method: MethodConfig, options: dict[str, Any]) -> OLoraLLM:
        from modalprompt.methods.o_lora.model import OLoraLLM

        return OLoraLLM(backbone, options["o_lora"])

    def structure(self, model: OLoraLLM) -> dict[str, Any]:
        return {"adapter": "o_lora", **model.settings.structure()}

    def start_stage(
        self, model: OLoraLLM, previous: list[Path], task: str, seed: int
    ) -> tuple[StageAdapter, list[StageMeta]]:
        """Adapters 1..t-1 from their stage files, frozen; adapter t seeded, the only one that trains."""
        from modalprompt.model.prompts import stage_seed

        metas = self._load(model, previous)
        adapter = model.attach(stage_seed(seed, len(metas) + 1))
        model.train_adapter(adapter)
        model.dropout(True)
        return adapter, metas

    def load_for_evaluation(self, model: OLoraLLM, checkpoints: list[Path]) -> list[str]:
        metas = self._load(model, checkpoints)
        model.dropout(False)
        return [m.task for m in metas]

    def _load(self, model: OLoraLLM, folders: list[Path]) -> list[StageMeta]:
        """Stage i's file into adapter i, for each stage given (the chain checked)."""
        from modalprompt.model.checkpoint import read_chain

        metas = read_chain(folders)
        for folder, meta in zip(folders, metas, strict=True):
            model.attach(seed=0).load_state_dict(
                self._tensors(model, Path(folder), meta)
            )  # seed: overwritten
        return metas
