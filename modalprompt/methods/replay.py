"""replay: lora_ft with a replay buffer. Each stage trains on its task's records plus `replay.buffer_size`
records of the earlier tasks, split evenly over them; task j's share is a prefix of one fixed seeded
permutation of its records (training.seed, task j), so a record kept at stage t was also kept at every
earlier stage (a class-balanced memory that gives up its newest entries as tasks arrive)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modalprompt.config import _help
from modalprompt.methods.base import Section
from modalprompt.methods.lora_ft import LoraFT
from modalprompt.methods.registry import register


@dataclass(frozen=True)
class ReplayConfig:
    buffer_size: int = _help(
        "Training records of earlier tasks replayed with each stage, split evenly over those tasks; each task's "
        "share is a seeded prefix of a fixed permutation of its records (training.seed).",
        default=1000,
        minimum=0,
        training_only=True,
    )


@register
class Replay(LoraFT):
    name = "replay"
    summary = "lora_ft plus a replay buffer of earlier tasks' training records (replay.buffer_size)"
    prompts_of = "replay"
    section = Section("replay", ReplayConfig, "The replay buffer")
    sections = ("lora", "replay")
    reads_earlier_tasks = True
    listing_order = 6

    def earlier_records(self, options: dict[str, Any], earlier_tasks: int) -> int | None:
        return options["replay"].buffer_size // max(earlier_tasks, 1)
