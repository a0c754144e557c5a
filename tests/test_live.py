"""Watching a training job: progress lines in its log, and its curves in MLflow while it trains, completed
(not duplicated) by the `track` step afterwards; a tracking server that does not answer stops nothing."""

from __future__ import annotations

import json
import re
import socket

import pytest

from modalprompt import layout
from modalprompt.cli import main
from modalprompt.config import TrainingConfig, job_to_json
from modalprompt.jobs import TrainJob
from modalprompt.tracking import HASH_TAG, KEY_TAG, LIVE_TAG, sync_method


def _train_args(tiny_base, task, results, *flags):
    llava, clip = tiny_base
    job = TrainJob(training=TrainingConfig(epochs=1, batch_size=4, lr=1e-2, warmup_ratio=0.0), task=task)
    job = json.loads(job_to_json(job))
    job["model"].update(llava=str(llava), clip=str(clip), device="cpu")
    job["method"]["prefix_length"] = 4
    out = layout.checkpoint_dir(results, "modalprompt", 1)
    return ["train", "--settings", json.dumps(job), "--out", str(out), "--history",
            str(layout.history_file(results, "modalprompt", 1)), "--threads", "1", *flags]  # fmt: skip


def _runs(uri, experiment="live-test"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return client, [r for r in runs if r.data.tags.get(KEY_TAG) == "modalprompt/stage-1"]


def test_a_training_job_logs_progress_and_live_curves_that_track_completes(
    tiny_base, toy_tasks, tmp_path, capsys
):
    results, uri = tmp_path / "results", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = _train_args(tiny_base, toy_tasks["colors"], results, "--progress-steps", "1", "--progress-seconds",
                       "0", "--tracking-uri", uri, "--tracking-experiment", "live-test")  # fmt: skip
    assert main(args) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("modalprompt train")]
    history = [json.loads(r) for r in layout.history_file(results, "modalprompt", 1).read_text().splitlines()]
    assert len(lines) == len(history) == 4  # 16 samples, batch 4: a line per step
    assert re.match(
        r"modalprompt train stage 1 colors: step 1/4 \(25%\) epoch 0\.25 loss [\d.]+ ce ", lines[0]
    )
    assert all(
        re.search(r"samples_per_s [\d.]+ peak_memory_mb [\d.]+ elapsed \d:\d\d:\d\d eta ", x) for x in lines
    )

    # right after the job: the stage's run holds every step, live (the `track` step has not run)
    client, runs = _runs(uri)
    assert len(runs) == 1 and runs[0].data.tags[LIVE_TAG] == "true" and HASH_TAG not in runs[0].data.tags
    live_id = runs[0].info.run_id
    losses = client.get_metric_history(live_id, "loss")
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [1, 2, 3, 4]
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx(
        [h["loss"] for h in history]
    )

    # `track` completes the same run: params, a hash, FINISHED, and still one value per step
    sync_method(uri, "live-test", results, "modalprompt", ["colors"])
    client, runs = _runs(uri)
    assert [r.info.run_id for r in runs] == [live_id] and runs[0].info.status == "FINISHED"
    assert HASH_TAG in runs[0].data.tags and runs[0].data.params["training.epochs"] == "1.0"
    for name in ("loss", "ce", "lr", "samples_per_s"):
        steps = [m.step for m in client.get_metric_history(live_id, name)]
        assert sorted(steps) == [1, 2, 3, 4], name


def test_track_fills_in_the_steps_a_live_run_missed(tiny_base, toy_tasks, tmp_path):
    """A server that went away mid-stage leaves a live run with a gap: `track` logs exactly the missing steps."""
    from mlflow.tracking import MlflowClient

    results, uri = tmp_path / "results", f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(_train_args(tiny_base, toy_tasks["colors"], results, "--tracking-uri", uri,
                            "--tracking-experiment", "live-test", "--quiet")) == 0  # fmt: skip
    client, runs = _runs(uri)
    run = runs[0]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4]
    # the same live run, as a server that vanished after step 2 would have left it
    client.delete_run(run.info.run_id)
    fresh = client.create_run(run.info.experiment_id, tags=dict(run.data.tags)).info.run_id
    for m in client.get_metric_history(run.info.run_id, "loss"):
        if m.step <= 2:
            client.log_metric(fresh, "loss", m.value, step=m.step)
    sync_method(uri, "live-test", results, "modalprompt", ["colors"])
    client = MlflowClient(uri)
    _, runs = _runs(uri)
    assert [r.info.run_id for r in runs] == [fresh]
    assert sorted(m.step for m in client.get_metric_history(fresh, "loss")) == [1, 2, 3, 4]


def test_a_tracking_server_that_does_not_answer_stops_nothing(tiny_base, toy_tasks, tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = tmp_path / "results"
    args = _train_args(tiny_base, toy_tasks["colors"], results, "--tracking-uri", f"http://127.0.0.1:{port}",
                       "--quiet")  # fmt: skip
    assert main(args) == 0
    assert (layout.checkpoint_dir(results, "modalprompt", 1) / layout.META_FILE).is_file()
    err = capsys.readouterr().err
    assert f"live curves to MLflow at http://127.0.0.1:{port} stopped" in err and "trains on" in err


_OPEN_STORE = """
import sys, time
from pathlib import Path
from modalprompt.tracking import _tracker
go = Path(sys.argv[2])
Path(sys.argv[3]).touch()  # imported, ready
while not go.exists():
    time.sleep(0.01)
print(_tracker(sys.argv[1], "parallel").experiment_id)
"""


@pytest.mark.slow
def test_parallel_jobs_open_a_new_sqlite_store_without_corrupting_it(tmp_path):
    """Parallel training jobs each open their live run on a store nobody has created yet (CI saw the
    `track` step fail after it): four processes released at once all open it, and so does a fifth after."""
    import subprocess
    import sys
    import time

    uri, go = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "go"
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_STORE, uri, str(go), str(tmp_path / f"ready-{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    answers = [job.communicate(timeout=120) for job in jobs]
    assert all(job.returncode == 0 for job in jobs), [err[-600:] for _, err in answers]
    assert len({out.strip() for out, _ in answers}) == 1  # one experiment, not one per job
    after = subprocess.run([sys.executable, "-c", _OPEN_STORE, uri, str(go), str(tmp_path / "ready-after")],
                           capture_output=True, text=True)  # fmt: skip
    assert after.returncode == 0, after.stderr[-600:]
