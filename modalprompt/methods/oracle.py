"""oracle, the selection upper bound: ModalPrompt's prompts, with each sample's own task always ranked
first at inference (once that task is learned); the other K - 1 prompts are selected as usual. It trains
nothing of its own."""

from __future__ import annotations

from modalprompt.methods.base import Method
from modalprompt.methods.registry import register


@register
class Oracle(Method):
    name = "oracle"
    summary = "ModalPrompt's prompts with each sample's own task ranked first (the selection upper bound)"
    prompts_of = "modalprompt"
    listing_order = 3

    def forced_task(self, learned: list[str], task: str) -> int | None:
        return learned.index(task) if task in learned else None
