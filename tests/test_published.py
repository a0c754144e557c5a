"""`modalprompt published`: a finished run's last matrix row and metrics beside the published row."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modalprompt.cli import main

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "docs" / "published" / "modalprompt-coin-llava-1.5-7b.json"
TASKS = ["ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCRVQA"]


def finished_run(folder: Path, stages: int = len(TASKS)) -> Path:
    """A run's summary files as the matrix step writes them: A[i][j] = 50 + i + j (ours); CoIN's scoring
    gives Grounding (task 6) 20 points less."""
    scores = []
    for stage in range(1, stages + 1):
        for j, task in enumerate(TASKS[:stage], start=1):
            ours = 50.0 + stage + j
            record = {"task": task, "stage": stage, "accuracy": ours, "selection_accuracy": 90.0,
                      "accuracy_published": ours - 20 if task == "Grounding" else ours}  # fmt: skip
            scores.append(folder / "scores" / f"{stage}-{task}.json")
            scores[-1].parent.mkdir(parents=True, exist_ok=True)
            scores[-1].write_text(json.dumps(record))
    run = folder / "modalprompt"
    assert main(["matrix", "--tasks", *TASKS, "--scores", *map(str, scores), "--out-dir", str(run)]) == 0
    return run


def test_published_row_is_the_committed_table():
    row = json.loads(PUBLISHED.read_text())
    assert list(row["final"]) == TASKS
    assert row["metrics"]["avg"] == pytest.approx(sum(row["final"].values()) / len(TASKS), abs=0.005)


def test_prints_the_last_row_and_metrics_beside_the_published_row(tmp_path, capsys):
    run = finished_run(tmp_path)
    capsys.readouterr()
    assert main(["published", str(run), str(PUBLISHED)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "after stage 8" in lines[0] and "RECAP, Table 2" in lines[0]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:] if line.strip()}
    assert rows["ScienceQA"] == ["59.00", "59.00", "68.42"]  # A[8][1] = 50 + 8 + 1
    assert rows["Grounding"] == ["64.00", "44.00", "36.69"]
    assert rows["OCRVQA"] == ["66.00", "66.00", "59.68"]
    assert rows["avg"] == ["62.50", "60.00", "55.06"]
    assert rows["mft"] == ["59.00", "56.50", "-"]  # A[j][j] = 50 + 2j; CoIN's scoring: A[6][6] - 20
    assert rows["selection_accuracy"] == ["90.00", "90.00", "-"]
    assert main(["published", str(run), str(PUBLISHED), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["final"]["Grounding"] == [64.0, 44.0, 36.69] and printed["stage"] == 8


def test_unfinished_run_unknown_tasks_and_bad_rows_are_named(tmp_path, capsys):
    run = finished_run(tmp_path, stages=5)
    capsys.readouterr()
    assert main(["published", str(run), str(PUBLISHED)]) == 2
    assert "the last row is stage 5 of 8" in capsys.readouterr().err
    run = finished_run(tmp_path / "full")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"final": {"ScienceQA": 60.0, "TextVQA-v2": 50.0}}))
    assert main(["published", str(run), str(other)]) == 2
    assert "task(s) ['TextVQA-v2'] are not in" in capsys.readouterr().err
    other.write_text(json.dumps({"final": {"ScienceQA": "sixty"}}))
    assert main(["published", str(run), str(other)]) == 2
    assert "field 'final' must map each task name" in capsys.readouterr().err
    (run / "matrix_published.csv").unlink()
    assert main(["published", str(run), str(PUBLISHED)]) == 2
    assert "matrix_published.csv not found" in capsys.readouterr().err


def test_published_imports_no_torch():
    code = "import sys, modalprompt.scoring.published; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
