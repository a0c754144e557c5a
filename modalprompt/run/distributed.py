"""One training process per GPU (or CPU process): rank, world size and rendezvous from the launcher.

`torchrun` exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT itself. Under `srun` with
several tasks (a Slurm job asking for N GPUs or nodes), submitit's TorchDistributedEnvironment derives the
same variables from Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the node list, a port from the job
id). Either way the process group then starts from the environment (`env://`): NCCL on CUDA, gloo on CPU.
`train_stage` does the rest (sharded data, gradients averaged across ranks).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def _launched_with_tasks() -> bool:
    """Several tasks started by srun or by submitit, and not already described by torchrun."""
    if "RANK" in os.environ:
        return False
    srun = "SLURM_STEP_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1
    return srun or bool(os.environ.get("SUBMITIT_EXECUTOR"))


def init_from_environment() -> tuple[int, int]:
    """Join the process group the launcher describes; returns (rank, world size), (0, 1) when alone."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if _launched_with_tasks():
        from submitit.helpers import TorchDistributedEnvironment

        os.environ.setdefault("SUBMITIT_EXECUTOR", "slurm")  # submitit reads Slurm's variables when told so
        launcher = TorchDistributedEnvironment()
        if launcher.world_size > 1:
            launcher.export(set_cuda_visible_devices=False)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return 0, 1
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
