"""`modalprompt submit`: one training stage as a Slurm job of any shape through submitit, without Snakemake.

Each task of the job runs the `train` command (the callable given, normally `modalprompt.cli.main`).
Checkpointable: when submitit's warning signal comes before the time limit (or on preemption), submitit
requeues the job with the same arguments; Slurm's SIGTERM then makes training save its mid-stage state
(with --state-dir), and the requeued job continues from it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import submitit

from modalprompt.config import JobResources, PreemptionConfig

Command = Callable[[list[str]], int]


class SubmittedTrain(submitit.helpers.Checkpointable):
    def __init__(self, command: Command):
        self.command = command  # pickled by reference: the job imports it on the cluster

    def __call__(self, train_args: list[str]) -> int:
        code = self.command(["train", *train_args])
        if code not in (0, None):
            raise RuntimeError(f"modalprompt train exited with {code} (75: stopped with its state saved)")
        return 0


def submit_training(
    command: Command,
    train_args: list[str],
    resources: JobResources,
    preemption: PreemptionConfig,
    *,
    cluster: str | None = None,
    partition: str | None = None,
    account: str | None = None,
    gpus: int | None = None,
    tasks: int = 1,
    nodes: int = 1,
    cpus: int | None = None,
    mem_gb: float | None = None,
    timeout_min: int | None = None,
    logs: Path = Path("submitit-logs"),
) -> submitit.Job:
    """Submit `command train TRAIN_ARGS` with one process per GPU (or `tasks` per node); resources default to
    the config's resources.train, and submitit's warning signal comes `preemption.signal_seconds` early."""
    gpus = resources.gpus if gpus is None else gpus
    timeout = timeout_min or resources.runtime
    executor = submitit.AutoExecutor(folder=logs, cluster=cluster)
    executor.update_parameters(
        name="modalprompt-train",
        timeout_min=timeout,
        nodes=nodes,
        tasks_per_node=max(gpus, tasks, 1),  # one process per GPU
        gpus_per_node=gpus,
        cpus_per_task=cpus or resources.cpus,
        mem_gb=mem_gb or resources.mem_mb / 1024,
        # submitit's own warning signal (USR2): it requeues the job, which resumes from the last saved state
        slurm_signal_delay_s=min(preemption.signal_seconds or 90, timeout * 30),
        **({"slurm_partition": partition} if partition else {}),
        **({"slurm_account": account} if account else {}),
    )
    return executor.submit(SubmittedTrain(command), train_args)
