"""A method that fails while putting its tensors into the frozen base (out of memory, say) takes out what it
had put in before the error reaches the stage: the base is as it was, and the next job can use it."""

from __future__ import annotations

import pytest
import torch

from modalprompt.methods.ewc import EwcSettings
from modalprompt.methods.ewc.model import EwcLLM
from modalprompt.methods.lora_ft import LoraSettings
from modalprompt.methods.moe_lora import MoeLoraSettings
from modalprompt.methods.moe_lora.model import LoraExperts, MoeLoraLLM


def _clean(backbone) -> bool:
    """No LoRA layer and no forward hook of ours anywhere in the base."""
    names = [n for n, _ in backbone.llava.named_modules()]
    hooks = [h for m in backbone.llava.modules() for h in m._forward_hooks.values()
             if h.__qualname__.startswith("_adds.")]  # fmt: skip
    return not any("lora_" in n for n in names) and not hooks


def test_a_failed_ewc_adapter_leaves_no_lora_layer(backbone, monkeypatch):
    before = {k: v.clone() for k, v in backbone.llava.state_dict().items()}

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    model = EwcLLM(backbone, LoraSettings(rank=4, alpha=8.0), EwcSettings())
    monkeypatch.setattr(torch, "zeros_like", out_of_memory)  # the Fisher's buffers, after peft's layers
    with pytest.raises(RuntimeError, match="out of memory"):
        model.attach(seed=0)
    monkeypatch.undo()
    assert _clean(backbone)
    after = backbone.llava.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_a_failed_mixture_leaves_no_hook(backbone, monkeypatch):
    built = []
    original = LoraExperts.to

    def fail_on_the_third(self, *args, **kwargs):
        built.append(self)
        if len(built) == 3:  # two layers' hooks are in by then
            raise RuntimeError("CUDA out of memory")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LoraExperts, "to", fail_on_the_third)
    model = MoeLoraLLM(backbone, MoeLoraSettings(experts=2, rank=4, alpha=8.0))
    with pytest.raises(RuntimeError, match="out of memory"):
        model.attach(seed=0)
    assert len(built) == 3 and _clean(backbone)
