"""Scorers: the official VQA normalisation, and the reference scorers' bugs as test cases."""

import json

import pytest

from modalprompt.errors import DataError
from modalprompt.scoring.scorers import normalize_vqa_answer, score, score_predictions


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("ten dogs", "10 dogs"),  # number words to digits
        ("a dog", "dog"),
        ("The Red Car", "red car"),
        ("an apple", "apple"),  # articles, lower case
        ("dont", "don't"),
        ("isnt it", "isn't it"),
        ("couldnt've", "couldn't've"),
        ("couldn'tve", "couldn't've"),
        ("yes.", "yes"),
        ("yes!", "yes"),
        ("what?", "what"),  # punctuation
        ("3.5", "3.5"),
        ("1,000", "1000"),  # numbers keep their period, lose thousands commas
        ("hello-world", "hello world"),
        ("left / right", "left right"),  # a mark between words becomes a space
        ("  two\n", "2"),
        ("x\ty", "x y"),  # white space
    ],
)
def test_vqa_normalisation(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


def test_vqa_soft_leave_one_out():
    assert score("vqa_soft", "yes", ["yes"] * 10) == 1.0
    assert score("vqa_soft", "Two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)  # 7 x 1 + 3 x 2/3, over 10
    assert score("vqa_soft", "no", ["yes"] * 9 + ["no"]) == pytest.approx(0.3)
    assert score("vqa_soft", "cat", ["dog"] * 10) == 0.0
    assert score("vqa_soft", "a cat.", ["cat"]) == 1.0  # a single answer scores by normalised equality


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("A", 1.0),
        ("A.", 1.0),
        ("A. a plant", 1.0),
        ("(A)", 1.0),
        ("The answer is A.", 1.0),
        ("the answer is (A)", 1.0),
        ("B", 0.0),
        ("B. a plant", 0.0),
        ("A cat sat", 0.0),
        ("", 0.0),
        ("I don't know", 0.0),
    ],
)
def test_option_letter(prediction, expected):
    assert score("option_letter", prediction, "A") == expected


def test_option_letter_reference_may_carry_text():
    assert score("option_letter", "C", "C. photosynthesis") == 1.0
    with pytest.raises(DataError, match="no option letter"):
        score("option_letter", "A", "photosynthesis")


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("Yes", "yes", 1.0),
        (" yes. ", "yes", 1.0),
        ("yes", "Yes.", 1.0),
        ("yes sir", "yes", 0.0),
        ("", "yes", 0.0),
    ],
)
def test_exact_match(prediction, reference, expected):
    assert score("exact_match", prediction, reference) == expected


def test_contains_counts_empty_prediction_wrong():
    """The reference counted '' as right: '' is a substring of every class name."""
    assert score("contains", "", "golden retriever") == 0.0
    assert score("contains", "   ", "golden retriever") == 0.0
    assert score("contains", "This is a Golden  Retriever.", "golden retriever") == 1.0
    assert score("contains", "a poodle", "golden retriever") == 0.0


def test_box_iou_parses_all_four_numbers():
    """The reference dropped the first and last character after removing brackets: 0.78 became 0.7."""
    reference = "[0.12, 0.34, 0.56, 0.78]"
    assert score("box_iou", "[0.12, 0.34, 0.56, 0.78]", reference) == 1.0
    assert score("box_iou", "The box is (0.12,0.34, 0.56 ,0.78).", [0.12, 0.34, 0.56, 0.78]) == 1.0
    # exact answers the reference's parser got wrong: "0.9" lost its "9", "10" its "1" and "40" its "0"
    assert score("box_iou", "[0.1, 0.1, 0.2, 0.9]", "[0.1, 0.1, 0.2, 0.9]") == 1.0
    assert score("box_iou", "[10, 20, 30, 40]", [10, 20, 30, 40]) == 1.0
    assert score("box_iou", "[0.13, 0.35, 0.57, 0.79]", reference) == 1.0  # IoU ~0.9
    assert score("box_iou", "[0.5, 0.5, 0.9, 0.9]", reference) == 0.0
    assert score("box_iou", "no box here", reference) == 0.0
    assert score("box_iou", "[0.1, 0.2, 0.3]", reference) == 0.0


def test_iou_threshold_is_strict():
    # IoU exactly 0.5: [0,0,1,1] vs [0,0,1,0.5] -> 0.5 / 1.0
    assert score("box_iou", "[0, 0, 1, 0.5]", [0, 0, 1, 1]) == 0.0
    assert score("box_iou", "[0, 0, 1, 0.51]", [0, 0, 1, 1]) == 1.0


def test_unknown_scorer():
    with pytest.raises(DataError, match="unknown scorer 'bleu'"):
        score("bleu", "a", "b")


def _files(tmp_path, references, rows):
    (tmp_path / "test.json").write_text(json.dumps(references))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "p.jsonl", tmp_path / "test.json"


REFS = [{"question_id": 1, "text": "q", "answer": "A"}, {"question_id": "x", "text": "q", "answer": "B"}]


def test_predictions_join_on_question_id_not_row_order(tmp_path):
    rows = [
        {"question_id": "x", "prediction": "B", "selected": ["t1", "sqa"]},
        {"question_id": 1, "prediction": "A", "selected": ["sqa", "t1"]},
    ]
    result = score_predictions("option_letter", *_files(tmp_path, REFS, rows), task="sqa")
    assert result.accuracy == 100.0 and result.scored == 2
    assert result.selection_accuracy == 50.0  # the last selected prompt is the most similar one
    assert result.per_question == {"x": 1.0, "1": 1.0}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"question_id": 1, "prediction": "A"}], r"no prediction for 1 question\(s\)"),
        (
            [
                {"question_id": 1, "prediction": "A"},
                {"question_id": 1, "prediction": "A"},
                {"question_id": "x", "prediction": "B"},
            ],
            "duplicate prediction for question_id 1",
        ),
        (
            [
                {"question_id": 1, "prediction": "A"},
                {"question_id": "x", "prediction": "B"},
                {"question_id": 9, "prediction": "B"},
            ],
            r"prediction\(s\) for question_ids not in",
        ),
        ([{"question_id": 1}], "expected a 'prediction'"),
    ],
)
def test_missing_duplicate_or_unknown_predictions_are_errors(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        score_predictions("option_letter", *_files(tmp_path, REFS, rows))


def test_skipped_rows_are_reported_not_scored(tmp_path):
    rows = [{"question_id": 1, "prediction": "A"}, {"question_id": "x", "skipped": "image unreadable"}]
    result = score_predictions("option_letter", *_files(tmp_path, REFS, rows))
    assert result.scored == 1 and result.accuracy == 100.0
    assert result.skipped == [{"question_id": "x", "reason": "image unreadable"}]


def test_max_samples_limits_the_references(tmp_path):
    result = score_predictions(
        "option_letter", *_files(tmp_path, REFS, [{"question_id": 1, "prediction": "B"}]), max_samples=1
    )
    assert result.scored == 1 and result.accuracy == 0.0


def test_vqa_soft_uses_all_answers_and_box_uses_answer_bbox(tmp_path):
    refs = [
        {"question_id": 1, "text": "q", "answer": "2", "answers": ["2"] * 3 + ["3"] * 7},
        {"question_id": 2, "text": "q", "answer": "x", "answer_bbox": "[0, 0, 1, 1]"},
    ]
    vqa = score_predictions(
        "vqa_soft", *_files(tmp_path, refs[:1], [{"question_id": 1, "prediction": "two"}])
    )
    assert vqa.accuracy == pytest.approx(90.0)
    box = score_predictions(
        "box_iou", *_files(tmp_path, refs[1:], [{"question_id": 2, "prediction": "[0,0,1,1]"}])
    )
    assert box.accuracy == 100.0


def test_score_command(tmp_path, capsys):
    from modalprompt.cli import main

    predictions, eval_file = _files(
        tmp_path,
        REFS,
        [
            {"question_id": 1, "prediction": "A", "selected": ["sqa"]},
            {"question_id": "x", "prediction": "C", "selected": ["sqa"]},
        ],
    )
    out = tmp_path / "score.json"
    args = [
        "score",
        "--scorer",
        "option_letter",
        "--predictions",
        str(predictions),
        "--eval-file",
        str(eval_file),
        "--task",
        "sqa",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["accuracy"] == 50.0 and printed["selection_accuracy"] == 100.0
    assert json.loads(out.read_text())["per_question"] == {"1": 1.0, "x": 0.0}
    predictions.write_text(json.dumps({"question_id": 1, "prediction": "A"}) + "\n")
    assert main(args) == 2
    assert "no prediction for 1 question(s)" in capsys.readouterr().err
