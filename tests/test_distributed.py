"""train_stage under torch.distributed (gloo, CPU): 2 ranks give the tensors of 1 rank with the same global batch."""

import dataclasses
import os
import socket
import subprocess
import sys

import pytest
import safetensors.torch
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modalprompt.bases.backbone import load_backbone
from modalprompt.config import MethodConfig, ModelConfig, TrainingConfig, TrainJob, job_to_json
from modalprompt.run.checkpoint import TENSORS_FILE
from modalprompt.run.train import train_stage

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, model_cfg, method, training, task, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        train_stage(load_backbone(model_cfg), method, training, task, [], out, progress=False)
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_rank(tiny_base, toy_tasks, tmp_path):
    model_cfg = ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[1]), device="cpu")
    method = MethodConfig(prefix_length=4)
    single = TrainingConfig(epochs=2, batch_size=8, lr=1e-2, warmup_ratio=0.0)
    per_rank = dataclasses.replace(single, batch_size=4)
    task = toy_tasks["count"]
    mp.spawn(_worker, args=(2, _free_port(), model_cfg, method, per_rank, task, tmp_path / "two"), nprocs=2)
    reference = train_stage(
        load_backbone(model_cfg), method, single, task, [], tmp_path / "one", progress=False
    )
    two = safetensors.torch.load_file(tmp_path / "two" / TENSORS_FILE)
    one = safetensors.torch.load_file(reference.checkpoint / TENSORS_FILE)
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5), key


def _train_command(model_cfg, method, training, task, out) -> list[str]:
    job = TrainJob(model=model_cfg, method=method, training=training, task=task)
    return ["-m", "modalprompt", "train", "--settings", job_to_json(job), "--out", str(out), "--quiet",
            "--threads", "1"]  # fmt: skip


def test_torchrun_two_processes_equal_one_process(tiny_base, toy_tasks, tmp_path):
    """`torchrun --nproc-per-node 2 -m modalprompt train`: the CLI joins the group from torchrun's env."""
    model_cfg = ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[1]), device="cpu")
    method = MethodConfig(prefix_length=4)
    single = TrainingConfig(epochs=2, batch_size=8, lr=1e-2, warmup_ratio=0.0)
    task = toy_tasks["count"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *_train_command(model_cfg, method, dataclasses.replace(single, batch_size=4), task,
                                          tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert len([line for line in two.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 reports
    one = subprocess.run([sys.executable, *_train_command(model_cfg, method, single, task, tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    a = safetensors.torch.load_file(tmp_path / "one" / TENSORS_FILE)
    b = safetensors.torch.load_file(tmp_path / "two" / TENSORS_FILE)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
