"""The data order and the learning-rate schedule of a stage: pure functions of the settings and the seed."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from modalprompt.config import Schedule

GROUP_CHUNK = 50  # global batches sorted together by length (training.group_by_length)


def shard_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int,
    world: int,
    lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """This rank's batches of one epoch: a seeded permutation, padded to a multiple of the world size by
    wrapping around, split round-robin across ranks, then cut into batches. Global batch k is the block
    order[k * world * batch_size : (k + 1) * world * batch_size], whatever the world size.

    With `lengths`, samples of similar length share a global batch (less padding): the permutation is cut
    into chunks of GROUP_CHUNK global batches, each chunk sorted by length, and the global batches are then
    put in a seeded random order. Still one pass over every sample, the same for any world size."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    order += order[: (-len(order)) % world]
    if lengths is not None:
        block = world * batch_size
        chunk = block * GROUP_CHUNK
        order = [
            i
            for c in range(0, len(order), chunk)
            for i in sorted(order[c : c + chunk], key=lambda i: -lengths[i])
        ]
        blocks = [order[b : b + block] for b in range(0, len(order), block)]
        order = [i for k in torch.randperm(len(blocks), generator=generator).tolist() for i in blocks[k]]
    mine = order[rank::world]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def lr_multiplier(schedule: Schedule, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up over `warmup_steps`, then constant or cosine decay to zero at `total_steps`."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == Schedule.CONSTANT:
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return multiplier
