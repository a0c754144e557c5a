"""What each job cost, recorded beside its outputs, and the sums of a method's cost.json: real stages and
evaluations of the tiny base, and hand-built files in the shape the jobs write."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from modalprompt import layout
from modalprompt.cli import main
from modalprompt.cost import add_costs, cost_metrics, mean_cost, method_cost
from modalprompt.model.checkpoint import META_FILE
from modalprompt.run.evaluate import evaluate_stage
from modalprompt.run.resume import ResumeState
from modalprompt.run.train import train_stage

EARLIER = 100.0  # seconds a job "began" before the call: its start-up and loading, in a real job


def test_a_training_stage_records_its_cost_in_its_stage_json(backbone, method, training, toy_tasks, tmp_path):
    started = time.perf_counter() - EARLIER
    result = train_stage(backbone, method, training, toy_tasks["colors"], [], tmp_path / "s1", progress=False,
                         started=started)  # fmt: skip
    cost = json.loads((result.checkpoint / META_FILE).read_text())["extra"]["cost"]
    assert cost == result.cost.to_json()
    assert EARLIER + result.seconds <= cost["wall_seconds"] < EARLIER + 600  # from the job's start on
    assert (cost["device"], cost["devices"]) == ("cpu", torch.get_num_threads())  # core-hours on a CPU
    assert cost["device_hours"] == pytest.approx(cost["wall_seconds"] * cost["devices"] / 3600)
    assert cost["samples"] == result.samples == 16  # one epoch of the 16 training records
    assert cost["samples_per_s"] == pytest.approx(16 / cost["wall_seconds"])
    assert cost["peak_memory_mb"] > 0


def test_an_evaluation_writes_its_cost_beside_its_predictions(
    backbone, method, evaluation, toy_tasks, tmp_path
):
    predictions = tmp_path / "eval" / "colors.jsonl"
    result = evaluate_stage(backbone, method, evaluation, toy_tasks["colors"], [], predictions, progress=False,
                            started=time.perf_counter() - EARLIER)  # fmt: skip
    cost = json.loads((tmp_path / "eval" / "colors.cost.json").read_text())
    assert layout.cost_file_of(predictions) == tmp_path / "eval" / "colors.cost.json"
    assert (cost["task"], cost["stage"], cost["samples"]) == ("colors", 0, 6)
    assert cost["wall_seconds"] >= EARLIER + result.seconds
    assert cost["device_hours"] == pytest.approx(cost["wall_seconds"] * torch.get_num_threads() / 3600)
    assert cost["peak_memory_mb"] > 0


def test_a_resumed_stage_counts_the_time_of_its_earlier_attempt(
    backbone, method, training, toy_tasks, tmp_path
):
    """The first attempt began EARLIER seconds ago and crashed after a saved state: the finished stage's
    wall time includes it."""
    long = dataclasses.replace(training, epochs=3)  # 12 optimizer steps
    state = tmp_path / "state"

    def crash_at_step_5(metrics):
        if metrics.step == 5:
            raise RuntimeError("node lost")

    with pytest.raises(RuntimeError, match="node lost"):
        train_stage(backbone, method, long, toy_tasks["colors"], [], tmp_path / "out", state_dir=state,
                    save_every_steps=4, on_step=crash_at_step_5, progress=False,
                    started=time.perf_counter() - EARLIER)  # fmt: skip
    assert ResumeState.read_step(state) == 4
    result = train_stage(backbone, method, long, toy_tasks["colors"], [], tmp_path / "out", state_dir=state,
                         save_every_steps=4, progress=False)  # fmt: skip
    assert result.resumed_from_step == 4 and result.cost.wall_seconds >= EARLIER + result.seconds


# ------------------------------------------------------------------------------------------ the sums

TASKS = ["a", "b"]


def _job(wall: float, devices: int, samples: int, peak: float, device: str = "gpu") -> dict:
    """A job's cost as JobCost.to_json writes it."""
    return {"wall_seconds": wall, "device": device, "devices": devices, "samples": samples,
            "peak_memory_mb": peak, "device_hours": wall * devices / 3600,
            "samples_per_s": samples / wall}  # fmt: skip


TRAIN = {1: _job(3600, 2, 1000, 5000.0), 2: _job(1800, 2, 800, 6000.0)}
EVALS = {  # stage -> task -> cost (row 0: the base model)
    0: {"a": _job(360, 1, 100, 3000.0), "b": _job(720, 1, 100, 3100.0)},
    1: {"a": _job(360, 1, 100, 4000.0), "b": _job(360, 1, 100, 4100.0)},
    2: {"a": _job(720, 1, 100, 4200.0), "b": _job(1080, 1, 200, 4300.0)},
}


def _method_files(root, train=TRAIN, evals=EVALS):
    """Score files (with the evaluation's `cost`, as `score --cost` writes them) and stage.json files (with
    `extra.cost`, as training writes them)."""
    scores, stages = [], []
    for stage, by_task in evals.items():
        for task, cost in by_task.items():
            path = layout.score_file(root, "m", stage, task)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"task": task, "stage": stage, "accuracy": 50.0, "selection_accuracy": None,
                                        "cost": {"task": task, "stage": stage, **cost}}))  # fmt: skip
            scores.append(path)
    for stage, cost in train.items():
        path = layout.checkpoint_files(root, "m", stage)[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {"seconds": 1.0} if cost is None else {"seconds": 1.0, "cost": cost}
        path.write_text(json.dumps({"task": TASKS[stage - 1], "stage": stage, "extra": extra}))
        stages.append(path)
    return scores, stages


def test_the_matrix_step_sums_each_stage_and_the_whole_method(tmp_path):
    scores, stages = _method_files(tmp_path)
    out = tmp_path / "m"
    args = ["matrix", "--tasks", *TASKS, "--scores", *map(str, scores), "--stages", *map(str, stages)]
    assert main([*args, "--out-dir", str(out)]) == 0
    cost = json.loads((out / "cost.json").read_text())
    assert cost["complete"] and set(cost["stages"]) == {"0", "1", "2"}
    assert cost["stages"]["0"]["train"] is None
    assert cost["stages"]["1"]["train"] == {"jobs": 1, "device": "gpu", "wall_seconds": 3600, "device_hours": 2.0,
                                            "samples": 1000, "samples_per_s": 1000 / 3600,
                                            "peak_memory_mb": 5000.0}  # fmt: skip
    assert cost["stages"]["2"]["eval"] == {"jobs": 2, "device": "gpu", "wall_seconds": 1800, "device_hours": 0.5,
                                           "samples": 300, "samples_per_s": 300 / 1800,
                                           "peak_memory_mb": 4300.0}  # fmt: skip
    assert cost["train"]["device_hours"] == 3.0 and cost["train"]["samples_per_s"] == 1800 / 5400
    assert cost["eval"]["device_hours"] == pytest.approx(1.0) and cost["eval"]["jobs"] == 6
    assert cost["total"]["device_hours"] == pytest.approx(4.0) and cost["total"]["wall_seconds"] == 9000
    assert cost["total"]["peak_memory_mb"] == 6000.0  # the largest of any job


def test_a_job_without_a_recorded_cost_leaves_the_sum_incomplete(tmp_path):
    """A stage trained before costs were recorded: its train entry is null, the sums leave it out, and
    `complete` says so."""
    scores, stages = _method_files(tmp_path, train={1: TRAIN[1], 2: None})
    out = tmp_path / "m"
    args = ["matrix", "--tasks", *TASKS, "--scores", *map(str, scores), "--stages", *map(str, stages)]
    assert main([*args, "--out-dir", str(out)]) == 0
    cost = json.loads((out / "cost.json").read_text())
    assert not cost["complete"] and cost["stages"]["2"]["train"] is None
    assert cost["train"]["device_hours"] == 2.0


def test_gpu_and_cpu_hours_added_together_are_marked_mixed():
    total = add_costs([_job(3600, 1, 10, 1.0), _job(3600, 8, 10, 1.0, device="cpu")])
    assert total["device"] == "mixed" and total["device_hours"] == 9.0
    assert add_costs([]) is None


def test_over_seeds_each_sum_is_the_mean_of_one_run_and_the_peak_the_largest():
    one = method_cost({1: _job(3600, 1, 100, 10.0)}, {1: [_job(360, 1, 10, 5.0)]})
    two = method_cost({1: _job(7200, 1, 300, 30.0)}, {1: [_job(1080, 1, 30, 5.0)]})
    mean = mean_cost({3: one, 5: two})
    assert mean["seeds"] == [3, 5] and mean["complete"]
    assert mean["stages"]["1"]["train"]["device_hours"] == pytest.approx(1.5)
    assert mean["train"]["samples"] == 200 and mean["train"]["peak_memory_mb"] == 30.0
    assert mean["total"]["wall_seconds"] == pytest.approx((3960 + 8280) / 2)
    assert mean["total"]["samples_per_s"] == pytest.approx(440 / 12240)


def test_mlflow_gets_the_sums_at_step_0_and_each_stage_at_its_step():
    cost = method_cost(TRAIN, {s: list(by_task.values()) for s, by_task in EVALS.items()})
    metrics = {(name, step): value for name, value, step in cost_metrics(cost)}
    assert metrics["cost_train_device_hours", 0] == 3.0
    assert metrics["cost_total_device_hours", 0] == pytest.approx(4.0)
    assert metrics["cost_eval_peak_memory_mb", 0] == 4300.0
    assert metrics["cost/train_device_hours", 2] == 1.0 and ("cost/train_device_hours", 0) not in metrics
    assert metrics["cost/eval_wall_seconds", 0] == 1080
