"""Warm start: a job forked from a server that imported torch and transformers once gives the job's own
results, exit status and log lines; a stopped client stops its job; a changed package gets a new server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modalprompt.config import EvaluationConfig, TrainingConfig, job_to_json
from modalprompt.jobs import EvalJob, TrainJob
from modalprompt.run import warm

pytestmark = pytest.mark.skipif(not warm.wanted(), reason="warm start needs fork and a local run")


@pytest.fixture
def private_servers(monkeypatch):
    """Servers of this test only: their sockets in a folder of its own (short: a socket path has at most
    107 bytes), stopped at the end by deleting their sockets."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mpw-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    yield folder
    shutil.rmtree(folder)  # a server whose socket is gone ends


def _modalprompt(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "modalprompt", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=600)  # fmt: skip


def _evaluate_args(tiny_base, task, out):
    llava, clip = tiny_base
    job = json.loads(
        job_to_json(EvalJob(evaluation=EvaluationConfig(batch_size=4, max_new_tokens=3), task=task))
    )
    job["model"].update(llava=str(llava), clip=str(clip), device="cpu")
    return ["evaluate", "--settings", json.dumps(job), "--out", str(out), "--threads", "1"]


def test_a_warm_job_writes_what_a_cold_one_writes(tiny_base, toy_tasks, tmp_path, private_servers):
    args = _evaluate_args(tiny_base, toy_tasks["colors"], tmp_path / "cold.jsonl")
    cold = _modalprompt(*args, cwd=tmp_path)
    assert cold.returncode == 0, cold.stderr[-2000:]
    first = _modalprompt("--warm", "yes", *args[:-4], "--out", str(tmp_path / "warm1.jsonl"), "--threads", "1",
                         cwd=tmp_path)  # fmt: skip
    second = _modalprompt("--warm", "yes", *args[:-4], "--out", str(tmp_path / "warm2.jsonl"), "--threads", "1",
                          cwd=tmp_path)  # fmt: skip
    assert first.returncode == second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    cold_rows = (tmp_path / "cold.jsonl").read_text()
    assert (tmp_path / "warm1.jsonl").read_text() == cold_rows == (tmp_path / "warm2.jsonl").read_text()
    # the job's own output reached the client's stdout and stderr (the log of a Snakemake job)
    assert json.loads(second.stdout.strip().splitlines()[-1])["samples"] == 6
    assert "modalprompt evaluate stage 0 colors: sample 6/6" in second.stderr
    servers = list(private_servers.glob("modalprompt-warm-*/*.sock"))
    assert len(servers) == 1  # both warm jobs were children of one server


def test_a_warm_job_fails_as_a_cold_one_does(tiny_base, toy_tasks, tmp_path, private_servers):
    args = _evaluate_args(tiny_base, toy_tasks["colors"], tmp_path / "x.jsonl")
    args[2] = args[2].replace(str(tiny_base[1]), str(tmp_path / "no-clip"))
    done = _modalprompt("--warm", "yes", *args, cwd=tmp_path)
    assert done.returncode == 2 and "modalprompt: error:" in done.stderr and "no-clip" in done.stderr


def test_a_stopped_client_stops_its_job(tiny_base, toy_tasks, tmp_path, private_servers):
    """SIGTERM to the client (Snakemake cancelling a job) ends the forked job too."""
    llava, clip = tiny_base
    job = json.loads(job_to_json(TrainJob(training=TrainingConfig(epochs=10_000, batch_size=4),
                                          task=toy_tasks["colors"])))  # fmt: skip
    job["model"].update(llava=str(llava), clip=str(clip), device="cpu")
    server = subprocess.Popen([sys.executable, "-m", "modalprompt", "warm-server", str(warm.socket_path())],
                              start_new_session=True)  # fmt: skip
    try:
        # the client must find this server ready, or it starts one of its own (a race on a slow machine)
        deadline = time.time() + 300
        while time.time() < deadline and not warm.socket_path().exists():
            time.sleep(0.2)
        assert warm.socket_path().exists(), "the server never listened"
        client = subprocess.Popen([sys.executable, "-m", "modalprompt", "--warm", "yes", "train", "--settings",
                                   json.dumps(job), "--out", str(tmp_path / "out"), "--quiet"], cwd=tmp_path)  # fmt: skip
        deadline = time.time() + 300
        while time.time() < deadline and not _children_of(server.pid):
            time.sleep(0.2)
        forked = _children_of(server.pid)
        assert forked, "the server forked no job"
        time.sleep(2)  # the job is training
        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=30) == 128 + signal.SIGTERM
        deadline = time.time() + 30
        while time.time() < deadline and _alive(forked[0]):
            time.sleep(0.2)
        assert not _alive(forked[0]), "the forked job outlived its stopped client"
        assert not (tmp_path / "out" / "stage.json").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _children_of(pid: int) -> list[int]:
    """The server's forked jobs: children running the server's own command line (not a tool that an
    import started for a moment)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    own = Path(f"/proc/{pid}/cmdline").read_bytes()
    found = [int(c) for c in children.read_text().split()] if children.exists() else []
    return [
        c
        for c in found
        if Path(f"/proc/{c}/cmdline").exists() and Path(f"/proc/{c}/cmdline").read_bytes() == own
    ]


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_a_changed_package_or_environment_gets_another_server(tmp_path, private_servers, monkeypatch):
    first = warm.socket_path()
    assert warm.socket_path() == first
    assert warm.socket_path({**os.environ, "HF_HUB_OFFLINE": "0"}) != first  # read at import time
    assert warm.socket_path({**os.environ, "UNRELATED": "1"}) == first
    monkeypatch.setattr(warm, "_source_stamp", lambda: "edited")
    assert warm.socket_path() != first


def test_installing_a_package_gets_another_server(tmp_path, private_servers, monkeypatch):
    """A package installed since (it may bring methods, families or scorers) is not served by a server that
    loaded the registries before it."""
    site_packages = tmp_path / "site-packages"
    site_packages.mkdir()
    monkeypatch.setattr(warm.site, "getsitepackages", lambda: [str(site_packages)])
    first = warm.socket_path()
    before = site_packages.stat()
    (site_packages / "a_package-0.1.0.dist-info").mkdir()
    # what the install did to the folder's time, made sure of on a clock coarser than the test
    os.utime(site_packages, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert warm.socket_path() != first


def test_under_slurm_or_as_a_rank_the_job_runs_in_its_own_process(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert not warm.wanted() and warm.run_warm(["evaluate"]) is None
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not warm.wanted()
