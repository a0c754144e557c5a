"""What every method's tests check of the base: after stages and evaluations it is the base it was."""

from __future__ import annotations

import torch


def base_state(backbone) -> dict[str, torch.Tensor]:
    """A copy of the base LLaVA's weights, to compare with later."""
    return {k: v.detach().clone() for k, v in backbone.llava.state_dict().items()}


def assert_base_unchanged(backbone, before: dict[str, torch.Tensor], hook_owner: str | None = None) -> None:
    """Same modules, bit-identical weights, nothing trainable; with `hook_owner`, no forward hook whose
    qualified name holds it is left in the base (transformers registers hooks of its own)."""
    after = backbone.llava.state_dict()
    assert set(after) == set(before), "the base's modules changed (LoRA layers left behind?)"
    assert all(torch.equal(after[k], v) for k, v in before.items()), "a frozen base weight changed"
    assert not any(p.requires_grad for p in backbone.llava.parameters())
    if hook_owner is not None:
        hooks = [h for m in backbone.llava.modules() for h in m._forward_hooks.values()]
        assert not [h for h in hooks if hook_owner in h.__qualname__], "a LoRA hook was left in the base"
