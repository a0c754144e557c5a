"""moe_lora, CoIN's MoELoRA baseline (Chen et al., NeurIPS 2024 Datasets & Benchmarks): a mixture of LoRA
experts on every linear layer of the LLM, each layer with its own router, fine-tuned task after task like
lora_ft: stage t starts from stage t-1's experts and routers, an evaluation after stage s uses stage s's, no
task id. Settings: `moe_lora` (8 experts sharing rank 128, alpha 256, dropout 0.05, a dense softmax router,
no load-balancing loss: CoIN's Train_MOE scripts and its coinmoelora.py). Its model: model.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modalprompt.config import ConfigError, _help, training_overrides
from modalprompt.methods.base import Section
from modalprompt.methods.lora_ft import LoraFT
from modalprompt.methods.registry import register

if TYPE_CHECKING:
    from modalprompt.bases.backbone import Backbone
    from modalprompt.config import MethodConfig
    from modalprompt.methods.moe_lora.model import MoeLoraLLM


@dataclass(frozen=True)
class MoeLoraSettings:
    """A mixture of LoRA experts with a router on every linear layer of the LLM (moe_lora). Defaults: CoIN's
    Train_MOE scripts (`--lora_r 128 --lora_alpha 256 --expert_num 8`), its coinmoelora.py (the rank split
    evenly over the experts, scaling alpha / rank, A ~ N(0, 0.01), B = 0, a dense softmax router) and LLaVA's
    train.py (dropout 0.05, all linear layers of the LLM)."""

    experts: int = _help("E: LoRA experts per linear layer.", default=8, minimum=1)
    rank: int = _help(
        "Total LoRA rank per layer, split evenly over the experts (each has rank / experts; CoIN's lora_r).",
        default=128, minimum=1,
    )  # fmt: skip
    alpha: float = _help(
        "LoRA alpha: the mixture's output is scaled by alpha / rank (the total rank, as in CoIN).",
        default=256.0, exclusive_minimum=0.0,
    )  # fmt: skip
    top_k: int = _help(
        "Experts each token uses: 0 = all of them, weighted by the router's softmax (CoIN); k > 0 = the k with "
        "the largest router logits, the softmax renormalised over them.",
        default=0, minimum=0,
    )  # fmt: skip
    dropout: float = _help(
        "Dropout on the experts' input while training (the router sees the input itself).", default=0.05,
        minimum=0.0, exclusive_maximum=1.0, training_only=True,
    )  # fmt: skip
    init_std: float = _help(
        "Standard deviation of the experts' A at initialisation (B starts at zero).", default=0.01,
        exclusive_minimum=0.0, training_only=True,
    )  # fmt: skip
    target_modules: tuple[str, ...] = _help(
        "Names of the LLM's linear layers that get the mixture (LLaMA's names: every linear layer of the LLM).",
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    )
    training: dict[str, Any] = training_overrides("moe_lora (e.g. its learning rate)")

    def __post_init__(self):
        if self.experts >= 1 and self.rank % self.experts:  # experts < 1: the schema's bound refuses it
            raise ConfigError(
                f"moe_lora.rank = {self.rank} is not a multiple of moe_lora.experts = {self.experts}: the rank is "
                "split evenly over the experts"
            )
        if self.top_k > self.experts:
            raise ConfigError(
                f"moe_lora.top_k = {self.top_k} exceeds moe_lora.experts = {self.experts}: choose 0 (all "
                f"experts) or at most {self.experts}"
            )
        if not self.target_modules:
            raise ConfigError("moe_lora.target_modules is empty: name at least one linear layer of the LLM")

    @property
    def expert_rank(self) -> int:
        return self.rank // self.experts

    def structure(self) -> dict[str, Any]:
        return {"experts": self.experts, "rank": self.rank, "alpha": self.alpha, "top_k": self.top_k,
                "target_modules": list(self.target_modules)}  # fmt: skip


@register
class MoeLora(LoraFT):
    """lora_ft's stages and loading (one set of tensors continued stage after stage), with the mixture."""

    name = "moe_lora"
    summary = "MoELoRA: a mixture of LoRA experts with a router per LLM linear layer, task after task (CoIN)"
    prompts_of = "moe_lora"
    section = Section("moe_lora", MoeLoraSettings, "The mixture of LoRA experts of the LLM")
    sections = ("moe_lora",)
    listing_order = 12

    def build_model(self, backbone: Backbone, method: MethodConfig, options: dict[str, Any]) -> MoeLoraLLM:
        from modalprompt.methods.moe_lora.model import MoeLoraLLM

        return MoeLoraLLM(backbone, options["moe_lora"])

    def structure(self, model: MoeLoraLLM) -> dict[str, Any]:
        return {"adapter": "moe_lora", **model.settings.structure()}
