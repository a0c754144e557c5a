"""The README's by-hand CLI flow on tiny local checkpoints: train 3 stages, evaluate, score; and `run`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modalprompt.model.checkpoint import read_meta

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def toy_config() -> dict:
    """config/toy.yaml with its paths made local to the folder the test writes it into."""
    raw = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
    raw["paths"] = {"models": "models", "data": "data", "results": "results"}
    return raw


def _cli(*args, cwd):
    # one CPU thread: `run` must reproduce the by-hand stage files byte for byte, and multi-threaded CPU
    # kernels once gave a step-1 forward 1e-5 apart between two processes on a 2-core machine
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "modalprompt", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_three_stages_by_hand_then_run(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(toy_config()))
    _cli("make-tiny-base", "models/tiny/llava", "models/tiny/clip", cwd=tmp_path)
    _cli("make-toy-data", "data/toy", cwd=tmp_path)
    checkpoints = []
    for task in ("colors", "shapes", "count"):
        out = tmp_path / "by-hand" / task
        line = _cli("train", "--config", "config.yaml", "--task", task, "--previous", *checkpoints, "--out", out,
                    "--history", out / "history.jsonl", "--quiet", cwd=tmp_path)  # fmt: skip
        summary = json.loads(line.strip().splitlines()[-1])
        assert summary["stage"] == len(checkpoints) + 1 and summary["steps"] > 0
        assert summary["wall_seconds"] > summary["seconds"] and summary["device_hours"] > 0  # the job's cost
        history = [json.loads(r) for r in (out / "history.jsonl").read_text().splitlines()]
        assert len(history) == summary["steps"] and history[-1]["loss"] < history[0]["loss"]
        checkpoints.append(out)
    assert read_meta(checkpoints[-1]).previous[1]["task"] == "shapes"

    preds = tmp_path / "by-hand" / "colors.jsonl"
    _cli("evaluate", "--config", "config.yaml", "--task", "colors", "--checkpoints", *checkpoints, "--out", preds,
         "--quiet", cwd=tmp_path)  # fmt: skip
    rows = [json.loads(r) for r in preds.read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["selected"]) == 3 for r in rows)
    scored = json.loads(_cli("score", "--scorer", "exact_match", "--predictions", preds, "--eval-file",
                             "data/toy/colors/test.json", "--task", "colors", cwd=tmp_path))  # fmt: skip
    assert scored["scored"] == 8 and 0 <= scored["accuracy"] <= 100

    _cli("run", "--config", "config.yaml", "--quiet", cwd=tmp_path)
    method = tmp_path / "results" / "tiny-demo" / "modalprompt"
    assert (method / "matrix.csv").read_text().splitlines()[0] == "stage,colors,shapes,count"
    assert json.loads((method / "metrics.json").read_text())["fwt"] is not None
    cost = json.loads((method / "cost.json").read_text())  # `run` writes what the DAG writes
    assert cost["complete"] and cost["train"]["jobs"] == 3 and cost["total"]["device_hours"] > 0
    overlap = (tmp_path / "results" / "tiny-demo" / "answer_overlap.csv").read_text().splitlines()
    assert overlap[1] == "colors,100.0000,0.0000,0.0000"
    assert json.loads((method / "overlap_forgetting.json").read_text())["correlation"] == "pearson"
    # the same settings and seeds give the same stage files by hand and through `run`
    for task, stage in (("colors", 1), ("shapes", 2), ("count", 3)):
        by_hand = (tmp_path / "by-hand" / task / "task.safetensors").read_bytes()
        assert (method / f"stage-{stage}" / "checkpoint" / "task.safetensors").read_bytes() == by_hand


def test_user_errors_exit_2_with_a_message(tmp_path):
    raw = toy_config()
    raw["method"]["transfer_num"] = 0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "modalprompt", "train", "--config", "config.yaml", "--task",
                           "colors", "--out", "x"], cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    assert "method.transfer_num = 0 is invalid: expected a number >= 1 and <= 64" in done.stderr
    assert "Traceback" not in done.stderr
