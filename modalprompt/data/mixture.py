"""A stage's training set when it also trains on earlier tasks' records (replay, multitask): the current
task's records, then a seeded choice of each earlier task's."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from modalprompt.data.datasets import Encoded, TrainDataset
from modalprompt.data.validation import Problem


def kept_records(count: int, keep: int | None, seed: int, task_position: int) -> list[int]:
    """The records of task `task_position` (1-based) a later stage trains on: all of them (keep None), or
    the first `keep` of one permutation seeded by (seed, position). The permutation does not depend on the
    stage, so a smaller share is always a prefix of a larger one."""
    if keep is None or keep >= count:
        return list(range(count))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + task_position)
    return sorted(torch.randperm(count, generator=generator)[:keep].tolist())


class MixedTrainDataset(Dataset):
    """Several TrainDatasets, each with the indices of its records that are kept, as one dataset."""

    def __init__(self, parts: list[tuple[TrainDataset, list[int]]]):
        self.parts = parts
        self.index = [(p, i) for p, (_, kept) in enumerate(parts) for i in kept]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> Encoded:
        part, record = self.index[index]
        return self.parts[part][0][record]

    def lengths(self) -> list[int]:
        every = [dataset.lengths() for dataset, _ in self.parts]
        return [every[p][i] for p, i in self.index]

    @property
    def skipped(self) -> list[Problem]:
        return [problem for dataset, _ in self.parts for problem in dataset.skipped]

    def counts(self) -> list[int]:
        """Records taken from each part, in order (the current task first)."""
        return [len(kept) for _, kept in self.parts]
