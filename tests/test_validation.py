"""Bad data: every problem found up front, each naming file, record (index and id), field and expectation."""

import json

import pytest
from PIL import Image

from modalprompt.data.datasets import ConversationEncoder, EvalDataset, ImagePreprocessor, TrainDataset
from modalprompt.data.validation import (
    ImageChecker,
    validate_eval_records,
    validate_folder,
    validate_train_records,
)
from modalprompt.errors import DataError


def _turns(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


GOOD_TRAIN = {"id": "g", "image": "ok.png", "conversations": _turns("<image>\nq", "a")}


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    return tmp_path


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"id": 1}, "conversations", "missing or empty"),
        ({"id": 1, "conversations": []}, "conversations", "missing or empty"),
        ({"id": 1, "conversations": _turns("q")}, "conversations", "1 turns: expected human/gpt pairs"),
        (
            {"id": 1, "conversations": list(reversed(_turns("q", "a")))},
            "conversations[0].from",
            "expected 'human'",
        ),
        (
            {"id": 1, "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}]},
            "conversations[0].value",
            "not a string",
        ),
        ({"id": 1, "conversations": _turns("q", "  ")}, "conversations[1].value", "empty answer"),
        ({"id": 1, "conversations": _turns("q", "a", "q2", "")}, "conversations[3].value", "empty answer"),
        ({"id": 1, "image": "missing.png", "conversations": _turns("q", "a")}, "image", "does not exist"),
        ({"id": 1, "image": "broken.png", "conversations": _turns("q", "a")}, "image", "cannot read image"),
        ({"id": 1, "image": 7, "conversations": _turns("q", "a")}, "image", "expected a relative path"),
        ("text", "<record>", "expected an object"),
    ],
)
def test_bad_train_record(folder, record, field, message):
    report = validate_train_records([GOOD_TRAIN, record], "train.json", ImageChecker(folder))
    assert report.bad_indices == {1}, report.summary()
    problem = report.problems[0]
    assert (problem.index, problem.field) == (1, field) and message in problem.message
    assert str(problem).startswith("train.json record 1 (id ")


def test_good_train_records_multi_turn_and_text_only(folder):
    records = [GOOD_TRAIN, {"id": "t", "conversations": _turns("q", "a", "q2", "a2")}]
    assert validate_train_records(records, "train.json", ImageChecker(folder)).ok


GOOD_EVAL = {"question_id": 0, "image": "ok.png", "text": "q", "answer": "a"}


@pytest.mark.parametrize(
    ("record", "field", "message", "scorer"),
    [
        ({"image": "ok.png", "text": "q", "answer": "a"}, "question_id", "missing", None),
        ({"question_id": 0, "text": "q", "answer": "a"}, "question_id", "duplicate of record 0", None),
        ({"question_id": True, "text": "q", "answer": "a"}, "question_id", "missing", None),
        ({"question_id": 1, "answer": "a"}, "text", "missing", None),
        ({"question_id": 1, "text": "q"}, "answer", "missing", None),
        ({"question_id": 1, "text": "q", "answer": ""}, "answer", "empty", None),
        ({"question_id": 1, "text": "q", "answer": 4}, "answer", "not a string", None),
        ({"question_id": 1, "text": "q", "answers": ["a", ""]}, "answers", "non-empty strings", "vqa_soft"),
        (
            {"question_id": 1, "text": "q", "answer": "x", "answer_bbox": "[0.1, 0.2]"},
            "answer_bbox",
            "four numbers",
            "box_iou",
        ),
        ({"question_id": 1, "text": "q", "answer": "a", "size": [0, 3]}, "size", "[width, height]", None),
        (
            {"question_id": 1, "text": "q", "answer": "a", "image": "nope.png"},
            "image",
            "does not exist",
            None,
        ),
    ],
)
def test_bad_eval_record(folder, record, field, message, scorer):
    good = {**GOOD_EVAL, "answer_bbox": "[0.1, 0.2, 0.3, 0.4]"} if scorer == "box_iou" else GOOD_EVAL
    report = validate_eval_records([good, record], "test.json", ImageChecker(folder), scorer)
    assert len(report.problems) == 1, report.summary()
    assert (report.problems[0].index, report.problems[0].field) == (1, field)
    assert message in report.problems[0].message


def test_every_problem_is_reported_and_error_lists_them(folder, backbone):
    records = [GOOD_TRAIN] + [{"id": f"bad{i}", "conversations": _turns("q", "")} for i in range(30)]
    (folder / "train.json").write_text(json.dumps(records))
    (folder / "test.json").write_text(json.dumps([GOOD_EVAL, GOOD_EVAL]))
    reports = validate_folder(folder)
    assert [len(r.problems) for r in reports] == [30, 1]
    encoder = ConversationEncoder(
        backbone.tokenizer, backbone.clip_tokenizer, backbone.image_token_id, backbone.num_image_tokens, 2048
    )
    images = ImagePreprocessor(backbone.image_processor)
    with pytest.raises(DataError) as err:
        TrainDataset(folder / "train.json", folder, encoder, images)
    text = str(err.value)
    assert "30 of 31 records have problems" in text and "record 1 (id 'bad0')" in text
    assert "... and 10 more" in text and "data.skip_bad_records" in text


def test_skip_option_drops_and_reports_bad_records(folder, backbone):
    records = [GOOD_TRAIN, {"id": "x", "conversations": _turns("q", "")}, {**GOOD_TRAIN, "id": "h"}]
    (folder / "train.json").write_text(json.dumps(records))
    encoder = ConversationEncoder(
        backbone.tokenizer, backbone.clip_tokenizer, backbone.image_token_id, backbone.num_image_tokens, 2048
    )
    data = TrainDataset(
        folder / "train.json", folder, encoder, ImagePreprocessor(backbone.image_processor), skip_bad=True
    )
    assert len(data) == 2 and [p.record_id for p in data.skipped] == ["x"]
    assert [data[i].key for i in range(2)] == ["g", "h"]
    (folder / "test.json").write_text(json.dumps([GOOD_EVAL, {"question_id": 5, "text": "q"}]))
    evaluation = EvalDataset(
        folder / "test.json", folder, encoder, ImagePreprocessor(backbone.image_processor), skip_bad=True
    )
    assert len(evaluation) == 1 and evaluation.skipped[0].record_id == 5


def test_file_level_errors(folder):
    (folder / "train.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        validate_folder(folder)
    (folder / "train.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(DataError, match="expected a JSON list"):
        validate_folder(folder)
    with pytest.raises(DataError, match=r"no train\.json, test\.json or val\.json"):
        validate_folder(folder / "ok.png")


def test_validate_command_reports_every_problem(folder, capsys):
    from modalprompt.cli import main

    records = [GOOD_TRAIN] + [{"id": f"bad{i}", "conversations": _turns("q", "")} for i in range(25)]
    (folder / "train.json").write_text(json.dumps(records))
    (folder / "val.json").write_text(json.dumps([GOOD_EVAL, {**GOOD_EVAL, "image": "broken.png"}]))
    assert main(["validate", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "25 of 26 records have problems" in out and all(f"(id 'bad{i}')" in out for i in range(25))
    assert "val.json record 1 (id 0): field 'question_id': duplicate of record 0" in out
    assert "cannot read image" in out
    assert main(["validate", str(folder), "--json"]) == 1
    reports = json.loads(capsys.readouterr().out)
    assert [r["bad_records"] for r in reports] == [25, 1]
    (folder / "train.json").write_text(json.dumps([GOOD_TRAIN]))
    (folder / "val.json").write_text(json.dumps([GOOD_EVAL]))
    assert main(["validate", str(folder)]) == 0
