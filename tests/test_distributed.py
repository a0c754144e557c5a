"""train_stage under torch.distributed (gloo, CPU): 2 ranks give the tensors of 1 rank with the same global batch."""

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys

import pytest
import safetensors.torch
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modalprompt.bases.backbone import load_backbone
from modalprompt.config import MethodConfig, ModelConfig, TrainingConfig, job_to_json
from modalprompt.jobs import TrainJob
from modalprompt.methods.lora_ft import LoraSettings
from modalprompt.model.checkpoint import TENSORS_FILE
from modalprompt.run.resume import STATE_FILE, Preempted, ResumeState, load_state, rng_states, set_rng_states
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


def _lora_worker(rank, world, port, model_cfg, method, training, task, earlier, out, state, stop_at):
    """multitask (LoRA, default dropout) on `world` ranks; rank 0 gets SIGUSR1 after step `stop_at` (0: never)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)

        def preempt(metrics):  # on_step runs on rank 0; the stop reaches every rank through an all-reduce
            if metrics.step == stop_at:
                os.kill(os.getpid(), signal.SIGUSR1)

        with contextlib.suppress(Preempted):  # the preempted run stops there; its rerun continues
            train_stage(load_backbone(model_cfg), method, training, task, [], out, method_name="multitask",
                        options={"lora": LoraSettings(rank=4, alpha=8.0)}, earlier_tasks=earlier, state_dir=state,
                        on_step=preempt, progress=False)  # fmt: skip
    finally:
        dist.destroy_process_group()


def _identity(state) -> str:
    with safetensors.safe_open(str(state / STATE_FILE), framework="pt") as f:
        return f.metadata()["identity"]


def test_two_ranks_resume_to_the_uninterrupted_tensors_with_dropout(tiny_base, toy_tasks, tmp_path):
    """A preempted 2-rank stage with dropout on resumes to the tensors of an uninterrupted 2-rank stage."""
    model_cfg = ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[1]), device="cpu")
    method = MethodConfig(prefix_length=4)
    training = TrainingConfig(epochs=1, batch_size=2, lr=5e-2, warmup_ratio=0.0)  # 12 steps on 2 ranks
    assert LoraSettings().dropout > 0
    state = tmp_path / "state"
    # Three tasks' records mixed: each rank's batches have their own lengths, so its dropout draws its own.
    run = (model_cfg, method, training, toy_tasks["colors"], [toy_tasks["count"], toy_tasks["shapes"]])
    mp.spawn(_lora_worker, args=(2, _free_port(), *run, tmp_path / "ref", None, 0), nprocs=2)
    mp.spawn(_lora_worker, args=(2, _free_port(), *run, tmp_path / "out", state, 5), nprocs=2)
    assert ResumeState.read_step(state) == 5 and not (tmp_path / "out" / TENSORS_FILE).exists()
    assert {"rank0.cpu", "rank1.cpu"} <= set(load_state(state, _identity(state)).rng)
    mp.spawn(_lora_worker, args=(2, _free_port(), *run, tmp_path / "out", state, 0), nprocs=2)
    reference = safetensors.torch.load_file(tmp_path / "ref" / TENSORS_FILE)
    resumed = safetensors.torch.load_file(tmp_path / "out" / TENSORS_FILE)
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key


def _rng_worker(rank, world, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # each rank's own stream (on GPUs, dropout on batches of other shapes)
        saved = rng_states(torch.device("cpu"), world)
        expected = torch.rand(4)
        torch.manual_seed(1234)
        set_rng_states(saved, torch.device("cpu"), rank)
        torch.save((sorted(saved), torch.equal(torch.rand(4), expected)), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_rank_saves_and_restores_its_own_rng_state(tmp_path):
    mp.spawn(_rng_worker, args=(2, _free_port(), tmp_path), nprocs=2)
    for rank in (0, 1):
        keys, restored = torch.load(tmp_path / f"rank{rank}.pt")
        assert keys == ["rank0.cpu", "rank1.cpu"] and restored, rank


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
