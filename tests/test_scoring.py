"""Scorers: the official VQA normalisation, and the reference scorers' bugs as test cases."""

import json

import pytest

from modalprompt.errors import DataError
from modalprompt.scoring.scorers import normalize_vqa_answer, score, score_predictions, score_published


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


# ------------------------------------------------------------ the official tables and rules, case by case


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("well", "well"),
        ("its", "its"),
        ("shell", "shell"),
        ("were", "were"),
        ("id", "id"),  # words that a generated table turned into contractions; the published one has none
        ("dont", "don't"),
        ("Whats", "what's"),
        ("yall'll", "y'all'll"),  # entries of the published table
        ("Im", "im"),
        (
            "somebody'd",
            "somebodyd",
        ),  # its quirks: capitalised keys never match, one entry drops the apostrophe
        ("x-y (-z", "x y z"),  # '-' is decided on the original text, where no space touches it
        ("The dog's ball", "dog 's ball"),  # "'s" is split off (m4c's word_tokenize)
        ("what, when?", "what when"),
    ],
)
def test_vqa_normalisation_follows_the_published_processor(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


def test_vqa_period_quirk_is_only_in_the_published_score():
    """m4c passes re.UNICODE (32) as the count of periods to remove: ours removes them all."""
    answer = "." * 40 + "sign"
    assert normalize_vqa_answer(answer) == "sign"
    assert normalize_vqa_answer(answer, periods=32) == "." * 8 + "sign"
    assert score("vqa_soft", answer, ["sign"] * 10) == 1.0
    assert score_published("vqa_soft", answer, ["sign"] * 10) == 0.0


@pytest.mark.parametrize(
    ("prediction", "reference", "ours", "published"),
    [
        ("The answer is a triangle.", "A", 0.0, 1.0),  # an article, read by CoIN as the letter A
        ("A.I. says C", "A", 0.0, 1.0),  # an abbreviation
        ("A.I. says C", "C", 0.0, 0.0),
        ("I think the answer is A.", "A", 1.0, 0.0),  # CoIN reads the first one-letter word, "I"
        ("Answer: A", "A", 1.0, 1.0),
        ("answer: (b)", "B", 1.0, 1.0),
        ("the correct option is d.", "D", 1.0, 1.0),
        ("b", "B", 1.0, 1.0),  # a bare lower-case letter
        ("B", "B. a rock", 1.0, 1.0),
        ("(C). a liquid", "C", 1.0, 1.0),
        ("F", "F", 1.0, 0.0),  # CoIN's options stop at E
    ],
)
def test_option_letter_against_coins_parser(prediction, reference, ours, published):
    assert score("option_letter", prediction, reference) == ours
    assert score_published("option_letter", prediction, reference) == published


@pytest.mark.parametrize(
    ("prediction", "reference", "ours", "published"),
    [
        ("", "golden retriever", 0.0, 1.0),  # '' is in every class name
        ("retriever", "golden retriever", 0.0, 1.0),  # so is any part of it
        ("Golden Retriever", "golden retriever", 1.0, 0.0),  # CoIN compares case-sensitively
        ("a golden retriever", "golden retriever", 1.0, 1.0),
    ],
)
def test_contains_against_coins_imagenet(prediction, reference, ours, published):
    assert score("contains", prediction, reference) == ours
    assert score_published("contains", prediction, reference) == published


@pytest.mark.parametrize(
    ("scorer", "prediction", "reference", "expected"),
    [
        ("exact_match", "yes..", "yes", 1.0),  # GQA: rstrip('.') and lower case
        ("exact_match", "Left", "left", 1.0),
        ("exact_match_strict", "Unanswerable", "unanswerable", 1.0),  # VizWiz: upper() on both sides
        ("exact_match_strict", "yes.", "yes", 0.0),  # VizWiz, VQAv2, OCR-VQA keep the period
        ("exact_match_strict", "Dr. Seuss", "dr. seuss", 1.0),
        ("exact_match_strict", "Unanswerable", "Unanswerable", 1.0),  # CoIN's OCR-VQA would count it wrong
    ],
)
def test_exact_match_rules_per_task(scorer, prediction, reference, expected):
    assert score(scorer, prediction, reference) == expected
    assert score_published(scorer, prediction, reference) == expected  # CoIN's rule is the same


@pytest.mark.parametrize(
    ("prediction", "reference", "ours", "published"),
    [
        ("[0.10, 0.10, 0.50, 0.18]", "[0.1, 0.1, 0.5, 0.18]", 1.0, 0.0),  # CoIN reads y2 = 0.1: height 0
        ("[0.1, 0.1, 0.5, 0.8]", "[0.1, 0.1, 0.5, 0.8]", 1.0, 0.0),  # "0.8" becomes "0."
        ("[0.10, 0.10, 0.50, 0.25]", "[0.1, 0.1, 0.5, 0.25]", 1.0, 1.0),  # 0.2 for 0.25 still overlaps enough
        ("[1, 1, 5, 2]", "[1, 1, 5, 2]", 1.0, 0.0),  # the first number "1" becomes ""
        ("The box is [0.10, 0.10, 0.50, 0.18].", "[0.1, 0.1, 0.5, 0.18]", 1.0, 0.0),
        ("[0.6, 0.6, 0.9, 0.9]", "[0.1, 0.1, 0.5, 0.18]", 0.0, 0.0),
    ],
)
def test_box_iou_against_coins_parser(prediction, reference, ours, published):
    assert score("box_iou", prediction, reference) == ours
    assert score_published("box_iou", prediction, reference) == published


def test_score_file_records_the_published_accuracy_beside_ours(tmp_path):
    refs = [
        {"question_id": i, "text": "q", "answer_bbox": box, "size": [640, 480]}
        for i, box in enumerate(["[0.1, 0.1, 0.5, 0.18]", "[0.2, 0.3, 0.6, 0.8]"])
    ]
    rows = [
        {"question_id": 0, "prediction": "[0.10, 0.10, 0.50, 0.18]"},
        {"question_id": 1, "prediction": "[0.2, 0.3, 0.6, 0.8]"},
    ]
    result = score_predictions("box_iou", *_files(tmp_path, refs, rows))
    assert result.accuracy == 100.0 and result.accuracy_published == 0.0
    assert result.to_json()["accuracy_published"] == 0.0


def test_answers_file_gives_the_reference_answers(tmp_path):
    """CoIN scores TextVQA against the 10 human answers of TextVQA_0.5.1_val.json, joined on question_id."""
    refs = [{"question_id": 34602, "image": "TextVQA/train_images/a.jpg", "text": "q", "answer": "nokia"}]
    annotations = {"data": [{"question_id": 34602, "answers": ["nokia"] * 2 + ["toshiba"] * 8}]}
    (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps(annotations))
    predictions, eval_file = _files(tmp_path, refs, [{"question_id": 34602, "prediction": "Nokia"}])
    result = score_predictions(
        "vqa_soft", predictions, eval_file, answers_file=tmp_path / "TextVQA_0.5.1_val.json"
    )
    assert result.accuracy == pytest.approx(100 * (8 * 2 / 3 + 2 * 1 / 3) / 10)
    annotations["data"][0]["question_id"] = 1
    (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps(annotations))
    with pytest.raises(DataError, match=r"TextVQA_0.5.1_val.json: no answers for 1 question\(s\)"):
        score_predictions(
            "vqa_soft", predictions, eval_file, answers_file=tmp_path / "TextVQA_0.5.1_val.json"
        )


def test_score_command_takes_the_answers_file_or_none(tmp_path, capsys):
    """The score rule passes `--answers-file` with the task's file, or with nothing when it has none."""
    from modalprompt.cli import main

    refs = [{"question_id": 7, "text": "q", "answer": "dakota"}]
    predictions, eval_file = _files(tmp_path, refs, [{"question_id": 7, "prediction": "Dakota"}])
    answers = tmp_path / "TextVQA_0.5.1_val.json"
    answers.write_text(json.dumps({"data": [{"question_id": 7, "answers": ["dakota"] + ["nikon"] * 9}]}))
    common = [
        "score",
        "--scorer",
        "vqa_soft",
        "--predictions",
        str(predictions),
        "--eval-file",
        str(eval_file),
    ]
    assert main([*common, "--answers-file", str(answers)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(100 * 0.3)  # 1 of 10, x 3 / 10
    assert main([*common, "--answers-file"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 100.0  # the eval file's one answer
