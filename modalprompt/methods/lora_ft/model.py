"""lora_ft's model: LoRA on the frozen LLM (peft), for the baselines that fine-tune it (lora_ft, replay,
multitask).

peft puts its LoRA layers in place of the LLM's linear layers (its documented mechanism); the frozen base
weights stay untouched inside them, and `LoraAdapter.remove` puts the original layers back, so the base a
process loaded is exactly as before once a stage or an evaluation is done. `LoraLLM` is the model those
methods train and evaluate: ModalPrompt's wrapper (embedding, image features, LLM calls) with no prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from modalprompt.bases.backbone import Backbone
from modalprompt.config import ConfigError, MethodConfig
from modalprompt.data.datasets import Batch
from modalprompt.model.tensors import TensorSet
from modalprompt.model.wrapper import Generation, ModalPromptModel, ModalPromptOutput

if TYPE_CHECKING:
    from modalprompt.methods.lora_ft import LoraSettings

ADAPTER = "default"  # peft's adapter name; one adapter at a time


class LoraAdapter(TensorSet):
    """peft's LoRA layers in the LLM, as one set of trainable tensors: parameters(), state_dict() (the LoRA
    tensors only, named as in the LLM) and load_state_dict(), like a module's."""

    def __init__(self, language_model: nn.Module, settings: LoraSettings, seed: int):
        from peft import LoraConfig, LoraModel

        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=list(settings.target_modules), bias="none")  # fmt: skip
        with torch.random.fork_rng(devices=[]):  # peft draws lora_A from the global generator
            torch.manual_seed(seed)
            try:
                self._tuner = LoraModel(language_model, config, ADAPTER)
            except ValueError as err:  # peft: none of the target modules found
                raise ConfigError(
                    f"lora.target_modules = {list(settings.target_modules)} do not name linear layers of this "
                    f"LLM ({err}): give the names of its layers (LLaMA: q_proj, k_proj, v_proj, o_proj, "
                    "gate_proj, up_proj, down_proj)"
                ) from err
        self.language_model = language_model
        try:
            device = next(p.device for n, p in language_model.named_parameters() if "lora_" not in n)
            for param in self.parameters():  # trained in fp32 whatever the base's dtype, on its device
                param.data = param.data.to(device, torch.float32)
        except BaseException:  # e.g. out of memory: no LoRA layer may stay in the frozen base
            self.remove()
            raise

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.language_model.named_parameters() if ".lora_" in n]

    def train(self, mode: bool = True) -> None:
        """LoRA's dropout is on while a stage trains, off for evaluation (the base stays in eval mode)."""
        for module in self.language_model.modules():
            if hasattr(module, "lora_dropout"):
                module.lora_dropout.train(mode)

    def remove(self) -> None:
        """Put the LLM's own linear layers back (unmerged: the base weights are as they were loaded)."""
        self._tuner.unload()


class LoraLLM(nn.Module):
    """The frozen base with a LoRA adapter in its LLM and no prompt: CE training and greedy generation."""

    def __init__(self, backbone: Backbone, settings: LoraSettings):
        super().__init__()
        self.wrapper = ModalPromptModel(backbone, MethodConfig())  # embedding, image features, LLM calls
        self.settings = settings
        self.adapter: LoraAdapter | None = None

    @property
    def backbone(self) -> Backbone:
        return self.wrapper.backbone

    def attach(self, seed: int) -> LoraAdapter:
        """A fresh adapter (lora_A seeded, lora_B zero: the model starts as the base)."""
        if self.adapter is not None:
            raise RuntimeError("this model already has a LoRA adapter")
        self.adapter = LoraAdapter(self.backbone.llava.model.language_model, self.settings, seed)
        return self.adapter

    def detach_adapter(self) -> None:
        if self.adapter is not None:
            self.adapter.remove()
            self.adapter = None

    def forward(self, batch: Batch) -> ModalPromptOutput:
        queries = self.wrapper.encode(batch)
        ce_sum, tokens = self.wrapper.prefixed_cross_entropy(batch, queries, None)
        return ModalPromptOutput.cross_entropy_only(ce_sum, tokens, queries)

    @torch.no_grad()
    def generate(
        self, batch: Batch, max_new_tokens: int, force_task: torch.Tensor | None = None
    ) -> Generation:
        queries = self.wrapper.encode(batch)
        tokens = self.wrapper.generate_with_prefix(batch, queries, None, max_new_tokens)
        empty = torch.zeros(len(batch.input_ids), 0, dtype=torch.long, device=tokens.device)
        return Generation(token_ids=tokens, selected=empty, scores=empty.float())
