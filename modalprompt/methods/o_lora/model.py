"""o_lora's model: one LoRA adapter per task in the frozen LLM (peft's multi-adapter API), all of them active,
only the newest trained, with O-LoRA's penalties on the newest.

peft puts its LoRA layers in place of the target linear layers once; each stage's adapter is another named
adapter in those layers (`inject_adapter`, what `PeftModel.add_adapter` does), and `set_adapter` with the
list of every name makes a layer add all their updates: the model after stage t uses the sum of adapters
1..t, with no task id. `release` unloads the layers: the base weights inside them were never touched.
The forward is lora_ft's (`LoraLLM`) plus the regulariser:
    lamda_1 * sum over target layers and earlier tasks i of sum |A_i A_t^T|  +  lamda_2 * sum ||W||_2
over the new adapter's A and B (the authors' code: elementwise absolute values of the r x r overlap,
Frobenius norms not squared)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from modalprompt.config import ConfigError
from modalprompt.data.datasets import Batch
from modalprompt.methods.lora_ft.model import LoraLLM
from modalprompt.model.tensors import TensorSet
from modalprompt.model.wrapper import ModalPromptOutput

if TYPE_CHECKING:
    from peft.tuners.lora import LoraModel

    from modalprompt.bases.backbone import Backbone
    from modalprompt.methods.o_lora import OLoraSettings


def adapter_name(stage: int) -> str:
    """peft's name of stage `stage`'s adapter (it appears in the tensors' names: ...lora_A.stage2.weight)."""
    return f"stage{stage}"


class StageAdapter(TensorSet):
    """One stage's LoRA tensors inside the LLM, as one set of tensors: parameters(), state_dict() (named as in
    the LLM) and load_state_dict(), like a module's (what a stage trains and its stage file holds)."""

    def __init__(self, language_model: nn.Module, name: str):
        self.language_model = language_model
        self.name = name

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        def own(param_name: str) -> bool:  # ...<layer>.lora_A.<name>.weight
            parts = param_name.split(".")
            return len(parts) > 2 and parts[-3] in ("lora_A", "lora_B") and parts[-2] == self.name

        return [(n, p) for n, p in self.language_model.named_parameters() if own(n)]


class AdapterStack:
    """peft's LoRA layers in the LLM with one named adapter per stage, all active. Not a module: like lora_ft's
    adapter, it keeps the frozen LLM out of the model's submodules (the engines see only trained tensors)."""

    def __init__(self, language_model: nn.Module):
        self.language_model = language_model
        self._tuner: LoraModel | None = None
        self.adapters: list[StageAdapter] = []  # stage 1..t, in order

    def add(self, settings: OLoraSettings, seed: int) -> StageAdapter:
        """The next stage's adapter beside the earlier ones (lora_A seeded, lora_B zero: it adds nothing
        yet); every adapter active and frozen afterwards."""
        from peft import LoraConfig, LoraModel

        s = settings
        config = LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout,
                            target_modules=list(s.target_modules), bias="none")  # fmt: skip
        name = adapter_name(len(self.adapters) + 1)
        with torch.random.fork_rng(devices=[]):  # peft draws lora_A from the global generator
            torch.manual_seed(seed)
            try:
                if self._tuner is None:
                    self._tuner = LoraModel(self.language_model, config, name)
                else:  # peft's way of adding an adapter to a tuned model (PeftModel.add_adapter)
                    self._tuner.peft_config[name] = config
                    self._tuner.inject_adapter(self._tuner.model, name)
            except ValueError as err:  # peft: none of the target modules found
                raise ConfigError(
                    f"o_lora.target_modules = {list(s.target_modules)} do not name linear layers of this LLM "
                    f"({err}): give the names of its layers (LLaMA: q_proj, v_proj, ...)"
                ) from err
        adapter = StageAdapter(self.language_model, name)
        device = next(p.device for n, p in self.language_model.named_parameters() if "lora_" not in n)
        for param in adapter.parameters():  # kept in fp32 whatever the base's dtype, on its device
            param.data = param.data.to(device, torch.float32)
        self.adapters.append(adapter)
        self.activate([a.name for a in self.adapters])
        return adapter

    def activate(self, names: list[str]) -> None:
        """The adapters whose updates a layer adds (all of them, but for a test), frozen: peft's set_adapter
        makes active adapters trainable unless inference_mode."""
        self._tuner.set_adapter(names, inference_mode=True)

    def lora_layers(self) -> list[nn.Module]:
        from peft.tuners.lora import LoraLayer

        return [m for m in self.language_model.modules() if isinstance(m, LoraLayer)]

    def remove(self) -> None:
        """Put the LLM's own linear layers back (unmerged: the base weights are as they were loaded)."""
        if self._tuner is not None:
            self._tuner.unload()
        self._tuner, self.adapters = None, []


class OLoraLLM(LoraLLM):
    """The frozen base with one LoRA adapter per learned task in its LLM (summed), no prompt; the newest
    adapter may train, under O-LoRA's penalties."""

    def __init__(self, backbone: Backbone, settings: OLoraSettings):
        super().__init__(backbone, settings)  # type: ignore[arg-type]  (the fields LoraLLM reads are the same)
        self.stack = AdapterStack(backbone.llava.model.language_model)
        self.training_adapter: StageAdapter | None = None  # the one the penalties act on

    @property
    def adapters(self) -> list[StageAdapter]:
        return self.stack.adapters

    def attach(self, seed: int) -> StageAdapter:
        """Add the next stage's adapter beside the earlier ones; all are active and frozen, the caller
        unfreezes the one it trains (train_adapter)."""
        return self.stack.add(self.settings, seed)

    def train_adapter(self, adapter: StageAdapter) -> None:
        """`adapter` (the newest) is the only one that trains; the penalties act on it."""
        if adapter is not self.adapters[-1]:
            raise ValueError("only the newest adapter may train: the earlier ones stay frozen")
        for other in self.adapters:
            other.requires_grad_(other is adapter)
        self.training_adapter = adapter

    def dropout(self, mode: bool) -> None:
        """LoRA's dropout on (training: on every adapter's branch, as the authors' code drops the input of
        both its old and new branches) or off (evaluation); the base stays in eval mode."""
        for layer in self.stack.lora_layers():
            layer.lora_dropout.train(mode)

    def detach_adapter(self) -> None:
        self.stack.remove()
        self.training_adapter = None

    # ------------------------------------------------------------------ O-LoRA's penalties

    def orthogonality(self) -> torch.Tensor:
        """sum over the target layers of sum |A_old A_t^T|, A_old the earlier adapters' A stacked (r*(t-1) x
        in): zero when the new adapter's rows span a subspace orthogonal to every earlier one's."""
        current = self.training_adapter.name
        earlier = [a.name for a in self.adapters if a is not self.training_adapter]
        total = torch.zeros((), device=self.backbone.device)
        for layer in self.stack.lora_layers() if earlier else []:
            new = layer.lora_A[current].weight  # (r, in)
            old = torch.cat([layer.lora_A[name].weight for name in earlier])  # (r * (t-1), in), frozen
            total = total + (old @ new.T).abs().sum()
        return total

    def l2(self) -> torch.Tensor:
        """The new adapter's sum of Frobenius norms (not squared: the authors' code's torch.norm per tensor)."""
        zero = torch.zeros((), device=self.backbone.device)
        return sum((p.norm() for p in self.training_adapter.parameters()), zero)

    def forward(self, batch: Batch) -> ModalPromptOutput:
        out = super().forward(batch)
        if self.training_adapter is None:  # evaluation: no penalty
            return out
        s, terms = self.settings, []
        # in fp32 even under a bf16 autocast: small overlaps are what the penalty pushes to zero
        with torch.autocast(self.backbone.device.type, enabled=False):
            if s.orthogonal_weight > 0:
                terms.append(s.orthogonal_weight * self.orthogonality())
            if s.l2_weight > 0:
                terms.append(s.l2_weight * self.l2())
        out.regulariser = sum(terms) if terms else None  # once per optimizer step (normalised_loss)
        return out
