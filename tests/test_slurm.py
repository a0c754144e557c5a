"""On a real Slurm cluster (.ci/slurm: slurmctld, slurmd, slurmdbd, munge, two placeholder GPUs): the DAG
through profiles/slurm, training as 2 srun tasks, and a training job preempted (signal) and killed (-9)
that continues to the same tensors. `make test-slurm` starts the cluster and runs this tier."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml
from conftest import skip_unless_required

from modalprompt.config import MethodConfig, ModelConfig, TrainingConfig, job_to_json
from modalprompt.jobs import TrainJob
from modalprompt.model.checkpoint import TENSORS_FILE
from modalprompt.run.resume import ResumeState
from modalprompt.run.train import train_stage

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
pytestmark = pytest.mark.slurm


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def _run(*command: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(), **kw)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if not os.environ.get("SLURM_CONF") or not shutil.which("sbatch"):
        skip_unless_required(
            "slurm", "no Slurm test cluster: run `make test-slurm` (starts one with .ci/slurm/start.sh)"
        )
    info = _run("sinfo", "-h", "-o", "%t")
    if info.returncode != 0 or not info.stdout.strip():
        skip_unless_required("slurm", f"the Slurm test cluster does not answer: {info.stderr.strip()}")


def _sacct(*jobs: str) -> list[dict[str, str]]:
    fields = "JobID,JobName,Comment%200,ReqTRES%200,Timelimit,Partition,Account,State,ExitCode"
    done = _run("sacct", "-X", "-P", "-n", f"--format={fields}", *(["-j", ",".join(jobs)] if jobs else []))
    names = [f.split("%")[0] for f in fields.split(",")]
    return [dict(zip(names, line.split("|"), strict=True)) for line in done.stdout.splitlines() if line]


def _wait(job: str, timeout: float = 300) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = _sacct(job)
        if rows and rows[0]["State"] not in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED", ""):
            return rows[0]
        time.sleep(0.5)
    raise AssertionError(f"job {job} did not finish in {timeout} s")


def _sbatch(*args: str) -> str:
    done = _run("sbatch", "--parsable", "-p", "debug", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(folder / TENSORS_FILE))


def _train_args(job: TrainJob, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "modalprompt", "train", "--settings", job_to_json(job), "--out", str(out),
            "--quiet", "--threads", "1", *extra]  # fmt: skip


def test_two_srun_tasks_equal_one_process(tiny_base, toy_tasks, tmp_path):
    """A job of 2 tasks (one per GPU on a real node): each derives its rank from Slurm's environment."""
    model = ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[1]), device="cpu")
    single = TrainingConfig(epochs=2, batch_size=8, lr=1e-2, warmup_ratio=0.0)
    job = TrainJob(model=model, method=MethodConfig(prefix_length=4),
                   training=dataclasses.replace(single, batch_size=4), task=toy_tasks["count"])  # fmt: skip
    done = _run("srun", "-p", "debug", "-n", "2", "--cpus-per-task", "1", "--mem-per-cpu", "1500", "-t", "5",
                *_train_args(job, tmp_path / "two"), timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len([line for line in done.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 reports
    from modalprompt.bases.backbone import load_backbone

    one = train_stage(
        load_backbone(model), job.method, single, job.task, [], tmp_path / "one", progress=False
    )
    a, b = _tensors(one.checkpoint), _tensors(tmp_path / "two")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_preempted_then_killed_job_continues_to_the_same_tensors(tiny_base, toy_tasks, tmp_path):
    """sbatch with --signal: the warning signal saves the state and ends the job (exit 75); a kill -9
    (scancel --signal=KILL) loses at most the steps since the last periodic save; each resubmission
    continues; the last one ends with the tensors of an uninterrupted run."""
    model = ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[1]), device="cpu")
    job = TrainJob(model=model, method=MethodConfig(prefix_length=4), task=toy_tasks["colors"],
                   training=TrainingConfig(epochs=150, batch_size=4, lr=1e-2, warmup_ratio=0.0))  # fmt: skip
    state, out = tmp_path / "state", tmp_path / "out"
    command = " ".join(
        f"'{a}'" for a in _train_args(job, out, "--state-dir", str(state), "--save-every", "20")
    )
    batch = ["-n", "1", "--cpus-per-task", "1", "--mem", "1500", "-t", "10", "--signal", "B:USR1@60",
             "-o", str(tmp_path / "slurm-%j.out"), "--wrap", f"exec {command}"]  # fmt: skip

    first = _sbatch(*batch)
    deadline = time.time() + 300
    while ResumeState.read_step(state) < 20 and time.time() < deadline:
        time.sleep(0.1)
    assert _run("scancel", "--signal=USR1", "--batch", first).returncode == 0  # what --signal sends
    row = _wait(first)
    assert row["ExitCode"] == "75:0", row  # stopped with its state saved
    stopped_at = ResumeState.read_step(state)
    assert stopped_at >= 20 and not (out / TENSORS_FILE).exists()

    second = _sbatch(*batch)
    while ResumeState.read_step(state) < stopped_at + 40 and time.time() < deadline + 300:
        time.sleep(0.1)
    assert _run("scancel", "--signal=KILL", second).returncode == 0
    _wait(second)
    killed_at = ResumeState.read_step(state)
    assert killed_at > stopped_at and not (out / TENSORS_FILE).exists()

    third = _sbatch(*batch)
    assert _wait(third, timeout=600)["State"] == "COMPLETED"
    log = (tmp_path / f"slurm-{third}.out").read_text()
    assert json.loads(log.strip().splitlines()[-1])["resumed_from_step"] == killed_at
    reference = _run(*_train_args(job, tmp_path / "reference"), timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    a, b = _tensors(out), _tensors(tmp_path / "reference")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _toy_project(folder: Path) -> dict:
    raw = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
    raw["paths"] = {"models": "models", "data": "data", "results": "results"}
    raw["training"].update(epochs=2, batch_size=8)
    raw["evaluation"].update(max_new_tokens=3)
    raw["pipeline"]["methods"] = ["modalprompt"]
    raw["resources"] = {
        "train": {"gpus": 1, "cpus": 1, "mem_mb": 1500, "runtime": 7},
        "evaluate": {"gpus": 1, "cpus": 1, "mem_mb": 1200, "runtime": 5},
        "prepare": {"gpus": 0, "cpus": 1, "mem_mb": 1000, "runtime": 4},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw


def test_dag_through_the_slurm_profile_equals_the_local_run(tmp_path):
    slurm, local = tmp_path / "slurm", tmp_path / "local"
    raw = _toy_project(slurm)
    _toy_project(local)
    base = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE)]
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    done = _run(*base, "--directory", str(slurm), "--configfile", str(slurm / "config.yaml"),
                "--profile", str(ROOT / "profiles" / "slurm"), "--jobs", "4",
                "--default-resources", "slurm_partition=debug", "slurm_account=test",  # the test's site settings
                "--slurm-init-seconds-before-status-checks", "2", cwd=slurm, timeout=1500)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    ran_local = _run(*base, "--directory", str(local), "--configfile", str(local / "config.yaml"), "--cores", "2",
                     cwd=local, timeout=1500)  # fmt: skip
    assert ran_local.returncode == 0, (ran_local.stdout + ran_local.stderr)[-5000:]

    ids = _run("sacct", "-X", "-P", "-n", "-S", started, "--format=JobID").stdout.split()
    by_rule: dict[str, list[dict]] = {}
    for row in _sacct(*ids):  # the plugin puts rule and wildcards in each job's comment
        rule = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", row["Comment"])
        if rule:
            by_rule.setdefault(rule.group(1), []).append(row)
    tasks = [t["name"] for t in raw["tasks"]]
    n = len(tasks)
    assert len(by_rule["train"]) == n  # one sbatch per stage
    assert len(by_rule["evaluate"]) == n * (n + 1) // 2 + n + (n - 1)  # lower triangle, row 0, forward cells
    for rule in ("train", "evaluate"):
        res = raw["resources"][rule]
        for row in by_rule[rule]:
            assert row["State"] == "COMPLETED" and row["Partition"] == "debug" and row["Account"] == "test", (
                row
            )
            tres = dict(item.split("=") for item in row["ReqTRES"].split(","))
            assert tres["cpu"] == str(res["cpus"]) and tres["gres/gpu"] == str(res["gpus"]), row
            assert tres["mem"] in (f"{res['mem_mb']}M", f"{res['mem_mb'] / 1024:g}G"), row
            assert row["Timelimit"] == f"00:{res['runtime']:02d}:00", row
    assert "score" not in by_rule and "matrix" not in by_rule  # local rules stay on the submitting node
    for name in ("matrix.csv", "metrics.json"):
        ours = (slurm / "results" / raw["experiment"] / "modalprompt" / name).read_text()
        theirs = (local / "results" / raw["experiment"] / "modalprompt" / name).read_text()
        assert ours == theirs, name


def test_submit_runs_one_stage_as_two_tasks_through_submitit(tiny_base, toy_tasks, tmp_path):
    """`modalprompt submit`: one stage without Snakemake, as a Slurm job of 2 tasks, equal to one process."""
    model = ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[1]), device="cpu")
    single = TrainingConfig(epochs=2, batch_size=8, lr=1e-2, warmup_ratio=0.0)
    job = TrainJob(model=model, method=MethodConfig(prefix_length=4),
                   training=dataclasses.replace(single, batch_size=4), task=toy_tasks["shapes"])  # fmt: skip
    done = _run(sys.executable, "-m", "modalprompt", "submit", "--cluster", "slurm", "--partition", "debug",
                "--tasks", "2", "--cpus", "1", "--mem-gb", "3", "--timeout-min", "5", "--logs", str(tmp_path / "logs"),
                "--wait", "--", *_train_args(job, tmp_path / "two")[4:], timeout=600)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    job_id = json.loads(done.stdout.splitlines()[0])["job_id"]
    assert _wait(job_id)["State"] == "COMPLETED"
    one = _run(*_train_args(dataclasses.replace(job, training=single), tmp_path / "one"), timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = _tensors(tmp_path / "one"), _tensors(tmp_path / "two")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
