"""The model a method runs, by the kind it declares (`methods.Method.model_kind`): ModalPrompt's wrapper
with its prompt store, the base with LoRA in its LLM, or a prompt pool. Each has `backbone`,
forward(batch) -> ModalPromptOutput and generate(batch, max_new_tokens, force_task) -> Generation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modalprompt.bases.backbone import Backbone
from modalprompt.config import MethodConfig
from modalprompt.model.lora import LoraLLM
from modalprompt.model.pool import CodaPromptModel, DualPromptModel, L2PModel
from modalprompt.model.wrapper import ModalPromptModel

MODELS: dict[str, Callable[[Backbone, MethodConfig, dict[str, Any]], Any]] = {
    "prompts": lambda backbone, method, options: ModalPromptModel(backbone, method),
    "lora": lambda backbone, method, options: LoraLLM(backbone, options["lora"]),
    "l2p": lambda backbone, method, options: L2PModel(backbone, options["l2p"]),
    "dualprompt": lambda backbone, method, options: DualPromptModel(backbone, options["dualprompt"]),
    "coda_prompt": lambda backbone, method, options: CodaPromptModel(backbone, options["coda_prompt"]),
}


def build_model(kind: str, backbone: Backbone, method: MethodConfig, options: dict[str, Any]) -> Any:
    """The model of a method's `model_kind`, with the `method` settings and its own sections (`options`)."""
    return MODELS[kind](backbone, method, options)
