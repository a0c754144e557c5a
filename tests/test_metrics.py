"""Continual-learning metrics on hand-computed matrices, and the `modalprompt metrics` command."""

import json

import pytest

from modalprompt.cli import main
from modalprompt.errors import DataError
from modalprompt.scoring.metrics import compute_metrics, format_matrix, read_matrix, selection_accuracy

MATRIX = """stage,a,b,c
0,10,20,30
1,80,25,35
2,85,90,40
3,60,85,95
"""


def _write(tmp_path, text, name="matrix.csv"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_metrics_by_hand(tmp_path):
    tasks, matrix = read_matrix(_write(tmp_path, MATRIX))
    m = compute_metrics(tasks, matrix)
    assert m["stages"] == 3 and m["tasks"] == ["a", "b", "c"]
    assert m["avg"] == pytest.approx((60 + 85 + 95) / 3)
    assert m["mft"] == pytest.approx((80 + 90 + 95) / 3)
    assert m["maa"] == pytest.approx((80 + (85 + 90) / 2 + (60 + 85 + 95) / 3) / 3)
    assert m["bwt"] == pytest.approx(((60 - 80) + (85 - 90)) / 2)
    assert m["bwt_coin"] == pytest.approx(((60 - 80) + (85 - 90)) / 3)
    assert m["forgetting"] == pytest.approx(((85 - 60) + (90 - 85)) / 2)  # max over stages j..T-1
    assert m["fwt"] == pytest.approx(((25 - 20) + (40 - 30)) / 2)


def test_without_row_zero_and_upper_cells(tmp_path):
    tasks, matrix = read_matrix(_write(tmp_path, "stage,a,b\n1,50,\n2,40,70\n"))
    m = compute_metrics(tasks, matrix)
    assert m["fwt"] is None and m["bwt"] == -10.0 and m["avg"] == 55.0 and m["maa"] == pytest.approx(52.5)


def test_single_stage(tmp_path):
    m = compute_metrics(*read_matrix(_write(tmp_path, "stage,a,b\n1,50,\n")))
    assert (m["avg"], m["mft"], m["bwt"], m["bwt_coin"], m["forgetting"], m["fwt"]) == (
        50,
        50,
        None,
        0,
        None,
        None,
    )


def test_partial_run_uses_the_stages_so_far(tmp_path):
    m = compute_metrics(*read_matrix(_write(tmp_path, "stage,a,b,c\n1,50,,\n2,40,70,\n")))
    assert m["stages"] == 2 and m["tasks"] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task,a\n1,50\n", "first column must be 'stage'"),
        ("stage,a,b\n1,50\n", "2 cells, expected 3"),
        ("stage,a\n1,abc\n", "could not convert"),
        ("stage,a\n1,50\n1,60\n", "stage 1 appears twice"),
        ("stage,a\n1,0.5e3\n", r"percentages in \[0, 100\]"),
    ],
)
def test_bad_matrix_files(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_matrix(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stage,a,b\n1,50,\n2,,70\n", r"cell \(stage 2, task a\) is empty"),
        ("stage,a,b\n2,50,70\n", "every stage from 1 to 2 needs a row"),
        ("stage,a\n0,10\n", "no stage >= 1"),
        ("stage,a\n1,10\n2,20\n", "needs at least 2 task columns"),
    ],
)
def test_incomplete_matrices(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        compute_metrics(*read_matrix(_write(tmp_path, text)))


def test_format_round_trip(tmp_path):
    tasks, matrix = read_matrix(_write(tmp_path, MATRIX))
    again = read_matrix(_write(tmp_path, format_matrix(tasks, matrix), "again.csv"))
    assert again == (tasks, matrix)


def test_selection_accuracy():
    assert selection_accuracy(["a", "a", "b", "a"], "a") == 75.0


def test_cli_prints_json(tmp_path, capsys):
    path = _write(tmp_path, MATRIX)
    selection = _write(tmp_path, "stage,a,b,c\n3,100,90,95\n", "selection.csv")
    assert main(["metrics", str(path), "--selection", str(selection)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["avg"] == pytest.approx(80.0) and out["selection_accuracy"] == pytest.approx(95.0)
    assert main(["metrics", str(tmp_path / "missing.csv")]) == 2


def test_scoring_and_metrics_import_no_torch():
    import subprocess
    import sys

    code = "import sys, modalprompt.scoring.scorers, modalprompt.scoring.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_selection_confusion_counts_the_prompt_ranked_first(tmp_path):
    from modalprompt.cli import main

    rows = {"a": [["b", "a"], ["a", "b"], ["a"]], "b": [["a", "b"], []]}  # ascending: the last ranks first
    files = []
    for task, selections in rows.items():
        files.append(tmp_path / f"{task}.jsonl")
        files[-1].write_text(
            "".join(json.dumps({"question_id": i, "selected": s}) + "\n" for i, s in enumerate(selections))
        )
    assert (
        main(
            ["confusion", "--tasks", "a", "b", "--predictions", *map(str, files), "--out-dir", str(tmp_path)]
        )
        == 0
    )
    assert (tmp_path / "selection_confusion.csv").read_text().splitlines()[1:] == ["a,2,1", "b,0,1"]
    assert (tmp_path / "selection_confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_matrix_writes_the_published_matrix_beside_ours(tmp_path):
    """Each score file's accuracy_published goes to matrix_published.csv and metrics_published.json."""
    cells = {(1, "a"): (80.0, 80.0), (2, "a"): (70.0, 70.0), (2, "box"): (90.0, 60.0)}
    scores = []
    for (stage, task), (ours, published) in cells.items():
        scores.append(tmp_path / f"{stage}-{task}.score.json")
        record = {"task": task, "stage": stage, "accuracy": ours, "accuracy_published": published,
                  "selection_accuracy": None}  # fmt: skip
        scores[-1].write_text(json.dumps(record))
    out = tmp_path / "out"
    assert main(["matrix", "--tasks", "a", "box", "--scores", *map(str, scores), "--out-dir", str(out)]) == 0
    assert (out / "matrix.csv").read_text().splitlines()[2] == "2,70.0000,90.0000"
    assert (out / "matrix_published.csv").read_text().splitlines()[2] == "2,70.0000,60.0000"
    assert json.loads((out / "metrics.json").read_text())["avg"] == pytest.approx(80.0)
    assert json.loads((out / "metrics_published.json").read_text())["avg"] == pytest.approx(65.0)
