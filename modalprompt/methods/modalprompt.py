"""ModalPrompt (Zeng et al., arXiv 2410.05849): a prompt and key network per task, chosen per sample by
CLIP image and text similarity to the keys; no task id at inference. The interface's defaults are its
behaviour; its settings are the config's `method` section (config.MethodConfig, which every job carries)
and its model is the prompt wrapper (model/wrapper.py) that its baselines share."""

from __future__ import annotations

from modalprompt.methods.base import Method
from modalprompt.methods.registry import register


@register
class ModalPrompt(Method):
    name = "modalprompt"
    summary = "a prompt per task, selected per sample by CLIP image and text features (the method)"
    prompts_of = "modalprompt"
    listing_order = 1
