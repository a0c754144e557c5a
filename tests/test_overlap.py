"""The answer overlap of tasks (share of one task's test answers among another's training answers, as the
tested task's scorer normalises them) and its Pearson correlation with forgetting, on hand-made files."""

from __future__ import annotations

import json
import math

import pytest

from modalprompt.cli import main
from modalprompt.scoring.metrics import format_matrix
from modalprompt.scoring.overlap import (
    eval_answers,
    forgetting_cells,
    overlap_against_forgetting,
    pearson,
    read_overlap,
)

# name -> (scorer, training answers, test answers)
TASKS = {
    "colors": ("exact_match", ["Red.", "blue", "2"], ["red", "green", "Blue", "two"]),
    "count": ("vqa_soft", ["two", "3", "red"], ["2", "three", "five", "4"]),
    "choice": ("option_letter", ["A", "(B) a cat"], ["A", "C", "b", "D"]),
}
# rows: whose training answers; columns: whose test answers. E.g. count's test answers normalised as VQA
# answers ("three" -> "3") are 2, 3, 5, 4: colors trained on "2" (25%), count on "2" and "3" (50%); choice's
# are the letters A, C, B, D, of which choice trained on A and B.
EXPECTED = [[50.0, 25.0, 0.0], [50.0, 50.0, 0.0], [0.0, 0.0, 50.0]]


def _task_files(root):
    files = {}
    for name, (_, train, test) in TASKS.items():
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "train.json").write_text(json.dumps([
            {"id": f"{name}-{i}", "conversations": [{"from": "human", "value": "q?"}, {"from": "gpt", "value": a}]}
            for i, a in enumerate(train)
        ]))  # fmt: skip
        (folder / "test.json").write_text(json.dumps([
            {"question_id": f"{name}-{i}", "text": "q?", "answer": a} for i, a in enumerate(test)
        ]))  # fmt: skip
        files[name] = folder
    return files


def _overlap_command(files, out, *limits):
    names = list(TASKS)
    args = ["answer-overlap", "--tasks", *names, "--train-files", *(str(files[n] / "train.json") for n in names),
            "--eval-files", *(str(files[n] / "test.json") for n in names),
            "--scorers", *(TASKS[n][0] for n in names), "--out", str(out)]  # fmt: skip
    return main([*args, "--max-samples", *limits] if limits else args)


def test_the_overlap_of_hand_made_tasks_is_the_expected_matrix(tmp_path):
    files = _task_files(tmp_path)
    assert _overlap_command(files, tmp_path / "answer_overlap.csv") == 0
    tasks, overlap = read_overlap(tmp_path / "answer_overlap.csv")
    assert tasks == list(TASKS) and overlap == EXPECTED


def test_only_the_questions_the_evaluation_scores_count(tmp_path):
    """count's evaluation scores its first two questions ("2", "three"): colors trained on "2", count on
    both."""
    files = _task_files(tmp_path)
    assert _overlap_command(files, tmp_path / "answer_overlap.csv", "0", "2", "0") == 0
    _, overlap = read_overlap(tmp_path / "answer_overlap.csv")
    assert [row[1] for row in overlap] == [50.0, 100.0, 0.0]


def test_a_question_with_several_answers_counts_its_most_common(tmp_path):
    eval_file = tmp_path / "test.json"
    eval_file.write_text(json.dumps([{"question_id": 1, "text": "q", "answers": ["two", "2", "2", "3"]}]))
    assert eval_answers(eval_file) == ["2"]


ACCURACY = {1: [60.0, None, None], 2: [80.0, 70.0, None], 3: [50.0, 40.0, 90.0]}  # t1 gains at stage 2
OVERLAP = [[100.0, 0.0, 0.0], [10.0, 100.0, 0.0], [40.0, 70.0, 100.0]]


def test_forgetting_of_each_cell_is_its_best_earlier_accuracy_minus_the_current():
    assert forgetting_cells(ACCURACY) == {(2, 1): -20.0, (3, 1): 30.0, (3, 2): 30.0}  # t1: 80 at best


def test_the_correlation_is_pearsons_over_the_cells_below_the_diagonal():
    """overlap 10, 40, 70 against forgetting -20, 30, 30: r = 1500 / sqrt(1800 * 5000 / 3) = sqrt(3) / 2."""
    result = overlap_against_forgetting(["t1", "t2", "t3"], OVERLAP, ACCURACY)
    assert [(c["stage"], c["tested"], c["overlap"], c["forgetting"]) for c in result["cells"]] == [
        (2, "t1", 10.0, -20.0), (3, "t1", 40.0, 30.0), (3, "t2", 70.0, 30.0)]  # fmt: skip
    assert result["correlation"] == "pearson" and result["pearson_r"] == pytest.approx(math.sqrt(3) / 2)
    assert pearson([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)


def test_the_correlation_is_undefined_without_two_cells_or_without_spread():
    assert pearson([10.0], [5.0]) is None
    assert pearson([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]) is None


def test_the_overlap_figure_and_table_of_a_method(tmp_path):
    (tmp_path / "answer_overlap.csv").write_text(
        "train_answers_of,t1,t2,t3\n"
        + "".join(f"t{i + 1},{','.join(map(str, row))}\n" for i, row in enumerate(OVERLAP))
    )
    (tmp_path / "matrix.csv").write_text(format_matrix(["t1", "t2", "t3"], ACCURACY))
    args = ["overlap-forgetting", "--overlap", str(tmp_path / "answer_overlap.csv"), "--matrix",
            str(tmp_path / "matrix.csv"), "--out-dir", str(tmp_path / "m")]  # fmt: skip
    assert main(args) == 0
    table = json.loads((tmp_path / "m" / "overlap_forgetting.json").read_text())
    assert table["pearson_r"] == pytest.approx(math.sqrt(3) / 2) and len(table["cells"]) == 3
    assert (tmp_path / "m" / "answer_overlap.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "matrix.csv").write_text(format_matrix(["t1", "t3", "t2"], ACCURACY))  # another task order
    assert main(args) == 2
