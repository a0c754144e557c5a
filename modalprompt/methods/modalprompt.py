"""ModalPrompt (Zeng et al., arXiv 2410.05849): a prompt and key network per task, chosen per sample by
CLIP image and text similarity to the keys; no task id at inference. The interface's defaults are its
behaviour."""

from __future__ import annotations

from modalprompt.methods.base import Method


class ModalPrompt(Method):
    name = "modalprompt"
    summary = "a prompt per task, selected per sample by CLIP image and text features (the method)"
    prompts_of = "modalprompt"
