"""What a job cost, and the sums of a method's `cost.json`. Nothing here imports torch until a job measures.

Each training stage records its cost in its stage.json (`extra.cost`), each evaluation in `<task>.cost.json`
beside its predictions (which its score file copies as `cost`):

- `wall_seconds`: the job's wall time from its process's start (start-up and loading the base included; a
  resumed stage adds its earlier attempts up to their last saved state);
- `device` and `devices`: `gpu` and the GPUs it held (one per process), or `cpu` and the CPU threads of all
  its processes;
- `device_hours`: wall x devices / 3600: GPU-hours on GPUs, core-hours on CPUs;
- `samples`: the samples it trained on or answered, and `samples_per_s` over the wall time;
- `peak_memory_mb`: the CUDA peak allocated on its (first) GPU, or the process's max RSS on CPU.

A method's `cost.json` sums the jobs its matrix is made of, per stage (training stage s, and the
evaluations after stage s; stage 0: the base model's, shared by all methods) and in all.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

GPU, CPU, MIXED = "gpu", "cpu", "mixed"  # `device` of one job, and of a sum over both kinds
SECONDS_PER_HOUR = 3600.0
STAGE_PARTS = ("train", "eval")  # each stage's entry of cost.json
PARTS = (
    *STAGE_PARTS,
    "total",
)  # cost.json's sums over all stages, and the MLflow metrics `cost_<part>_<field>`
SUMMED = ("jobs", "wall_seconds", "device_hours", "samples")  # what a sum adds up (the rest: ratios, maxima)
FIELDS = ("wall_seconds", "device_hours", "samples_per_s", "peak_memory_mb")  # what MLflow gets of each


@dataclass(frozen=True)
class JobCost:
    wall_seconds: float
    device: str  # GPU or CPU
    devices: int  # GPUs, or CPU threads over all processes
    samples: int
    peak_memory_mb: float

    @property
    def device_hours(self) -> float:
        return self.wall_seconds * self.devices / SECONDS_PER_HOUR

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "device_hours": self.device_hours, "samples_per_s": self.samples_per_s}


def job_started(process_age: float | None) -> float:
    """The job's start on time.perf_counter's clock, from the seconds its process has run (None: now)."""
    return time.perf_counter() - (process_age or 0.0)


def measure(
    device: Any, processes: int, started: float, samples: int, earlier_seconds: float = 0.0
) -> JobCost:
    """The cost of a job that began at `started` (time.perf_counter) and ran `processes` processes (one per
    GPU on CUDA) on `device` (a torch.device), plus `earlier_seconds` of its earlier attempts."""
    import torch

    gpu = device.type == "cuda"
    devices = processes if gpu else processes * torch.get_num_threads()
    wall = time.perf_counter() - started + earlier_seconds
    return JobCost(wall, GPU if gpu else CPU, devices, samples, peak_memory_mb(device))


def peak_memory_mb(device: Any) -> float:
    """CUDA's peak allocated memory on `device`, or the process's max RSS on CPU."""
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory(device: Any) -> None:
    """Start a job's CUDA peak from what is allocated now (jobs in one process each get their own peak; a
    process's max RSS cannot be reset)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# ------------------------------------------------------------------------------------------ sums


def add_costs(costs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Jobs' costs (JobCost.to_json) together: wall seconds, device-hours and samples add up, samples/s is
    all samples over all wall seconds, the peak memory is the largest; None for no job."""
    if not costs:
        return None
    wall = sum(c["wall_seconds"] for c in costs)
    samples = sum(c["samples"] for c in costs)
    kinds = {c["device"] for c in costs}
    return {
        "jobs": sum(c.get("jobs", 1) for c in costs),
        "device": kinds.pop() if len(kinds) == 1 else MIXED,  # device-hours of GPUs and CPUs are not alike
        "wall_seconds": wall,
        "device_hours": sum(c["device_hours"] for c in costs),
        "samples": samples,
        "samples_per_s": samples / wall if wall > 0 else 0.0,
        "peak_memory_mb": max(c["peak_memory_mb"] for c in costs),
    }


def method_cost(
    train: dict[int, dict[str, Any] | None], evals: dict[int, list[dict[str, Any]]]
) -> dict[str, Any]:
    """cost.json of a method: `stages` (per stage, the training job's cost and the sum of the evaluations
    after it), `train`, `eval` and `total` over every stage, and `complete`: false when a job recorded no
    cost (a stage trained before costs were recorded), which the sums then leave out. `train`: each trained
    stage's cost (None: not recorded); `evals`: each stage's evaluation costs (None: not recorded)."""
    stages = {}
    for stage in sorted(set(train) | set(evals)):
        trained = [train[stage]] if train.get(stage) else []
        stages[str(stage)] = {
            "train": add_costs(trained),
            "eval": add_costs([c for c in evals.get(stage, []) if c]),
        }
    every_train = [c for c in train.values() if c]
    every_eval = [c for costs in evals.values() for c in costs if c]
    recorded = all(train.values()) and all(c for costs in evals.values() for c in costs)
    return {
        "stages": stages,
        "train": add_costs(every_train),
        "eval": add_costs(every_eval),
        "total": add_costs(every_train + every_eval),
        "complete": recorded,
    }


def mean_cost(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A method's cost over its seeds (each seed's cost.json): each sum as the mean of one seed's run, the
    peak memory the largest, and the seeds."""
    per_seed = list(by_seed.values())
    runs = len(per_seed)

    def mean(costs: list[dict[str, Any] | None]) -> dict[str, Any] | None:
        total = add_costs([c for c in costs if c])
        if total is None:
            return None
        return {**total, **{k: total[k] / runs for k in SUMMED}}

    stages = sorted({s for cost in per_seed for s in cost["stages"]}, key=int)
    return {
        "stages": {
            s: {part: mean([c["stages"].get(s, {}).get(part) for c in per_seed]) for part in STAGE_PARTS}
            for s in stages
        },
        **{part: mean([c[part] for c in per_seed]) for part in PARTS},
        "complete": all(c["complete"] for c in per_seed),
        "seeds": list(by_seed),
    }


def cost_metrics(cost: dict[str, Any]) -> list[tuple[str, float, int]]:
    """MLflow metrics of a cost.json: `cost_<part>_<field>` at step 0, and per stage `cost/<part>_<field>`
    with step = stage."""
    out = [
        (f"cost_{part}_{name}", cost[part][name], 0) for part in PARTS if cost.get(part) for name in FIELDS
    ]
    for stage, parts in cost.get("stages", {}).items():
        out += [(f"cost/{part}_{name}", value[name], int(stage)) for part, value in parts.items() if value
                for name in FIELDS]  # fmt: skip
    return out
