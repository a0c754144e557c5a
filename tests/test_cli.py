"""The README's CLI flow on tiny local checkpoints: make-tiny, train 3 stages, evaluate, run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modalprompt.checkpoint import read_meta

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "modalprompt", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_three_stages_by_hand_then_run(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    _cli("make-tiny", cwd=tmp_path)
    checkpoints = []
    for task in ("colors", "shapes", "count"):
        out = tmp_path / "results" / task
        line = _cli(
            "train",
            "--config",
            "config.yaml",
            "--task",
            task,
            "--previous",
            *checkpoints,
            "--out",
            out,
            "--history",
            out / "history.jsonl",
            "--quiet",
            cwd=tmp_path,
        )
        summary = json.loads(line.strip().splitlines()[-1])
        assert summary["stage"] == len(checkpoints) + 1 and summary["steps"] > 0
        history = [json.loads(r) for r in (out / "history.jsonl").read_text().splitlines()]
        assert len(history) == summary["steps"] and history[-1]["loss"] < history[0]["loss"]
        checkpoints.append(out)
    assert read_meta(checkpoints[-1]).previous[1]["task"] == "shapes"

    preds = tmp_path / "preds" / "colors.jsonl"
    _cli(
        "evaluate",
        "--config",
        "config.yaml",
        "--task",
        "colors",
        "--checkpoints",
        *checkpoints,
        "--out",
        preds,
        "--quiet",
        cwd=tmp_path,
    )
    rows = [json.loads(r) for r in preds.read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["selected"]) == 3 for r in rows)

    _cli("run", "--config", "config.yaml", "--results", "all", "--quiet", cwd=tmp_path)
    evals = sorted(p.relative_to(tmp_path / "all").as_posix() for p in (tmp_path / "all").rglob("*.jsonl"))
    assert evals == [
        "stage-1/eval/colors.jsonl",
        "stage-2/eval/colors.jsonl",
        "stage-2/eval/shapes.jsonl",
        "stage-3/eval/colors.jsonl",
        "stage-3/eval/count.jsonl",
        "stage-3/eval/shapes.jsonl",
    ]
    # the same settings and seeds give the same stage files by hand and through `run`
    for task, stage in (("colors", 1), ("shapes", 2), ("count", 3)):
        by_hand = (tmp_path / "results" / task / "task.safetensors").read_bytes()
        assert (
            tmp_path / "all" / f"stage-{stage}" / "checkpoint" / "task.safetensors"
        ).read_bytes() == by_hand


def test_user_errors_exit_2_with_a_message(tmp_path):
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["method"]["transfer_num"] = 0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "modalprompt",
            "train",
            "--config",
            "config.yaml",
            "--task",
            "colors",
            "--out",
            "x",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "method.transfer_num = 0 is invalid: expected an integer >= 1" in done.stderr
    assert "Traceback" not in done.stderr
