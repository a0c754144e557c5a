"""Mid-stage state: a stage interrupted (signal, crash, kill -9) continues where it stopped and ends with
exactly the tensors of an uninterrupted run of the same seed."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import safetensors.torch
import torch

from modalprompt.config import ModelConfig, job_to_json
from modalprompt.jobs import TrainJob
from modalprompt.model.checkpoint import TENSORS_FILE
from modalprompt.run.resume import Preempted, ResumeState
from modalprompt.run.train import train_stage


def _tensors(folder):
    return safetensors.torch.load_file(str(folder / TENSORS_FILE))


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def long_training(training):
    return dataclasses.replace(training, epochs=3, lr=5e-2)  # 12 optimizer steps on 16 records


@pytest.fixture
def reference(backbone, method, long_training, toy_tasks, tmp_path):
    result = train_stage(
        backbone, method, long_training, toy_tasks["colors"], [], tmp_path / "ref", progress=False
    )
    return _tensors(result.checkpoint), result.history


def test_crash_after_a_saved_state_resumes_to_identical_tensors(
    backbone, method, long_training, toy_tasks, tmp_path, reference
):
    state = tmp_path / "state"

    def crash_at_step_7(metrics):
        if metrics.step == 7:
            raise RuntimeError("node lost")

    with pytest.raises(RuntimeError, match="node lost"):
        train_stage(backbone, method, long_training, toy_tasks["colors"], [], tmp_path / "out", state_dir=state,
                    save_every_steps=3, on_step=crash_at_step_7, progress=False)  # fmt: skip
    assert ResumeState.read_step(state) == 6  # the last interval before the crash
    result = train_stage(backbone, method, long_training, toy_tasks["colors"], [], tmp_path / "out", state_dir=state,
                         save_every_steps=3, progress=False)  # fmt: skip
    _same(_tensors(result.checkpoint), reference[0])
    assert [m.step for m in result.history] == list(range(1, 13))  # the history is whole, not restarted
    assert [m.loss for m in result.history] == pytest.approx([m.loss for m in reference[1]], abs=0)
    assert not state.exists()  # the finished stage removes its mid-stage state


def test_a_signal_saves_at_the_end_of_the_step_and_stops(
    backbone, method, long_training, toy_tasks, tmp_path, reference
):
    state = tmp_path / "state"

    def signal_at_step_5(metrics):
        if metrics.step == 5:
            os.kill(os.getpid(), signal.SIGUSR1)  # what Slurm's --signal sends before the time limit

    with pytest.raises(Preempted):
        train_stage(backbone, method, long_training, toy_tasks["colors"], [], tmp_path / "out", state_dir=state,
                    on_step=signal_at_step_5, progress=False)  # fmt: skip
    assert ResumeState.read_step(state) == 5
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers are restored
    result = train_stage(backbone, method, long_training, toy_tasks["colors"], [], tmp_path / "out", state_dir=state,
                         progress=False)  # fmt: skip
    _same(_tensors(result.checkpoint), reference[0])


def test_a_state_from_other_settings_is_refused(backbone, method, long_training, toy_tasks, tmp_path):
    state = tmp_path / "state"
    with pytest.raises(Preempted):
        train_stage(backbone, method, long_training, toy_tasks["colors"], [], tmp_path / "out", state_dir=state,
                    on_step=lambda m: m.step == 2 and os.kill(os.getpid(), signal.SIGUSR1), progress=False)  # fmt: skip
    other = dataclasses.replace(long_training, lr=1e-3)
    with pytest.raises(ValueError, match="was saved by other settings"):
        train_stage(backbone, method, other, toy_tasks["colors"], [], tmp_path / "out", state_dir=state,
                    progress=False)  # fmt: skip


@pytest.mark.slow
def test_kill_9_mid_stage_then_rerun_gives_identical_tensors(
    tiny_base, method, long_training, toy_tasks, tmp_path
):
    """The CLI, killed with SIGKILL after it wrote a state: the rerun continues; nothing partial is left."""
    llava, clip = tiny_base
    job = TrainJob(model=ModelConfig(llava=str(llava), clip=str(clip), device="cpu"), method=method,
                   training=dataclasses.replace(long_training, epochs=12), task=toy_tasks["colors"])  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def train(out, *extra):
        command = [sys.executable, "-m", "modalprompt", "train", "--settings", job_to_json(job), "--out", str(out),
                   "--quiet", "--threads", "1", *extra]  # fmt: skip
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    reference = train(tmp_path / "ref")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    state = tmp_path / "state"
    victim = train(tmp_path / "out", "--state-dir", str(state), "--save-every", "5")
    deadline = time.time() + 300
    while ResumeState.read_step(state) < 10 and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert not (tmp_path / "out" / TENSORS_FILE).exists()  # no stage file: the DAG does not take it as done
    killed_at = ResumeState.read_step(state)
    assert 10 <= killed_at < 48
    rerun = train(tmp_path / "out", "--state-dir", str(state), "--save-every", "5")
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()
    summary = json.loads(rerun.stdout.read().strip().splitlines()[-1])
    assert summary["resumed_from_step"] == killed_at
    _same(_tensors(tmp_path / "out"), _tensors(tmp_path / "ref"))
