"""l2p (Wang et al., CVPR 2022): one pool of prompts with keys, shared by all tasks and trained in every
stage; each sample takes the top-N prompts by cosine between its query and the keys. An evaluation after
stage s uses stage s's pool. Settings: `l2p`; its model: model.py (model/pool.py says what was adapted)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modalprompt.config import Query, _help, training_overrides
from modalprompt.methods.base import Section
from modalprompt.methods.prompt_pool import PromptPoolMethod
from modalprompt.methods.registry import register

if TYPE_CHECKING:
    from modalprompt.bases.backbone import Backbone
    from modalprompt.config import MethodConfig
    from modalprompt.methods.l2p.model import L2PModel


@dataclass(frozen=True)
class L2PConfig:
    """L2P (Wang et al., CVPR 2022): one shared pool of prompts with keys; the top-k keys by cosine to the
    query pick the prompts. Defaults: the paper and its official code (pool 10, length 5, top 5, pull 0.1)."""

    pool_size: int = _help("M: prompts in the pool.", default=10, minimum=1)
    prompt_length: int = _help("L_p: rows per prompt.", default=5, minimum=1)
    top_k: int = _help("N: prompts selected per sample.", default=5, minimum=1)
    pull_weight: float = _help(
        "lambda: weight of the surrogate loss pulling the selected keys to the query.", default=0.1,
        minimum=0.0, training_only=True,
    )  # fmt: skip
    query: Query = _help("The feature keys are matched against.", default=Query.IMAGE)
    training: dict[str, Any] = training_overrides("l2p")

    def structure(self) -> dict[str, Any]:
        return {"pool_size": self.pool_size, "prompt_length": self.prompt_length}


@register
class L2P(PromptPoolMethod):
    name = "l2p"
    summary = "L2P: a shared pool of prompts, the top-N keys by the CLIP query pick them"
    prompts_of = "l2p"
    selects = False  # its prompts belong to no task
    section = Section("l2p", L2PConfig, "The L2P prompt pool")
    sections = ("l2p",)
    listing_order = 8

    def prefix_tokens(self, method: MethodConfig, options: dict[str, Any]) -> int:
        return options["l2p"].top_k * options["l2p"].prompt_length

    def build_model(self, backbone: Backbone, method: MethodConfig, options: dict[str, Any]) -> L2PModel:
        from modalprompt.methods.l2p.model import L2PModel

        return L2PModel(backbone, options["l2p"])
