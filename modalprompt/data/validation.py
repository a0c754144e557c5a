"""Up-front validation of CoIN-format files: every problem found, each naming file, record, id and field.

Training and evaluation validate their whole file before the first step (images included: each distinct
image path is opened once, header only). By default any problem stops the job; with
`data.skip_bad_records` the bad records are dropped and reported instead.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from modalprompt.errors import DataError

MAX_LISTED = 20  # problems spelled out in an error message; the report holds all of them
BOX_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE]-?\d+)?")


@dataclass(frozen=True)
class Problem:
    file: str
    index: int  # position of the record in the file's list
    record_id: Any  # `id` (train) or `question_id` (eval), None when absent
    field: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file} record {self.index} (id {self.record_id!r}): field {self.field!r}: {self.message}"
        )


@dataclass
class Report:
    file: str
    records: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def bad_indices(self) -> set[int]:
        return {p.index for p in self.problems}

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        bad = len(self.bad_indices)
        head = f"{self.file}: {bad} of {self.records} records have problems ({len(self.problems)} in all)"
        lines = [str(p) for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(
                f"... and {len(self.problems) - MAX_LISTED} more (run `modalprompt validate` for all)"
            )
        return "\n".join([head, *("  " + line for line in lines)])

    def full(self) -> str:
        """The summary line and every problem."""
        lines = [str(p) for p in self.problems]
        return "\n".join([self.summary().splitlines()[0], *("  " + line for line in lines)])

    def raise_if_bad(self) -> None:
        if self.problems:
            raise DataError(
                self.summary()
                + "\nFix the records, or set data.skip_bad_records: true to skip and report them"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "records": self.records,
            "bad_records": len(self.bad_indices),
            "problems": [p.__dict__ for p in self.problems],
        }


class ImageChecker:
    """Checks that image files exist and are images (header only), each distinct path once."""

    def __init__(self, root: Path, open_images: bool = True):
        self.root, self.open_images = root, open_images
        self.seen: dict[str, str | None] = {}

    def problem(self, relative: str) -> str | None:
        if relative not in self.seen:
            self.seen[relative] = self._check(self.root / relative)
        return self.seen[relative]

    def _check(self, path: Path) -> str | None:
        if not os.path.isfile(path):
            return f"image file {path} does not exist (check the task's image_root)"
        if not self.open_images:
            return None
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 (parses the header)
        except (UnidentifiedImageError, OSError) as err:
            return f"cannot read image {path}: {err}"
        return None


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def parse_box(value: Any) -> list[float] | None:
    """Four numbers from a list or from free text such as '[0.12, 0.34, 0.56, 0.78]'; None if not four."""
    if isinstance(value, list | tuple):
        numbers = value
    elif isinstance(value, str):
        numbers = BOX_NUMBER.findall(value)
    else:
        return None
    if len(numbers) < 4:
        return None
    try:
        return [float(n) for n in numbers[:4]]
    except (TypeError, ValueError):
        return None


def validate_train_records(records: Any, file: str, images: ImageChecker) -> Report:
    """CoIN train.json: LLaVA conversations, human then gpt turns, non-empty answers, readable images."""
    if not isinstance(records, list):
        raise DataError(f"{file}: expected a JSON list of records, got {type(records).__name__}")
    report = Report(file, len(records))
    add = report.problems.append
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            add(Problem(file, i, None, "<record>", f"expected an object, got {type(record).__name__}"))
            continue
        rid = record.get("id")
        turns = record.get("conversations")
        if not isinstance(turns, list) or not turns:
            add(
                Problem(file, i, rid, "conversations", "missing or empty: expected a list of human/gpt turns")
            )
        elif len(turns) % 2:
            add(Problem(file, i, rid, "conversations", f"{len(turns)} turns: expected human/gpt pairs"))
        else:
            for j, turn in enumerate(turns):
                expected = "human" if j % 2 == 0 else "gpt"
                where = f"conversations[{j}]"
                if not isinstance(turn, dict) or turn.get("from") != expected:
                    add(Problem(file, i, rid, f"{where}.from", f"expected {expected!r}"))
                elif not isinstance(turn.get("value"), str):
                    add(Problem(file, i, rid, f"{where}.value", "missing or not a string"))
                elif expected == "gpt" and not turn["value"].strip():
                    add(Problem(file, i, rid, f"{where}.value", "empty answer"))
        _check_image(record, i, rid, file, images, add)
    return report


def validate_eval_records(records: Any, file: str, images: ImageChecker, scorer: str | None = None) -> Report:
    """CoIN test.json / val.json: unique question_id, text, a non-empty answer (a box for box_iou)."""
    if not isinstance(records, list):
        raise DataError(f"{file}: expected a JSON list of records, got {type(records).__name__}")
    report = Report(file, len(records))
    add = report.problems.append
    first_seen: dict[Any, int] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            add(Problem(file, i, None, "<record>", f"expected an object, got {type(record).__name__}"))
            continue
        qid = record.get("question_id")
        if not isinstance(qid, str | int) or isinstance(qid, bool):
            add(Problem(file, i, qid, "question_id", "missing: expected a string or integer"))
        elif qid in first_seen:
            add(Problem(file, i, qid, "question_id", f"duplicate of record {first_seen[qid]}"))
        else:
            first_seen[qid] = i
        if not _is_text(record.get("text")):
            add(Problem(file, i, qid, "text", "missing, empty or not a string"))
        if scorer == "box_iou":
            box = record.get("answer_bbox", record.get("answer"))
            if parse_box(box) is None:
                add(Problem(file, i, qid, "answer_bbox", f"{box!r}: expected four numbers [x1, y1, x2, y2]"))
        elif "answers" in record:
            answers = record["answers"]
            if not isinstance(answers, list) or not answers or not all(_is_text(a) for a in answers):
                add(Problem(file, i, qid, "answers", "expected a non-empty list of non-empty strings"))
        elif not _is_text(record.get("answer")):
            add(Problem(file, i, qid, "answer", "missing, empty or not a string"))
        size = record.get("size")
        if size is not None and not (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(s, int | float) and s > 0 for s in size)
        ):
            add(Problem(file, i, qid, "size", f"{size!r}: expected [width, height] > 0"))
        _check_image(record, i, qid, file, images, add)
    return report


def _check_image(record: dict, index: int, rid: Any, file: str, images: ImageChecker, add) -> None:
    if "image" not in record or record["image"] in (None, ""):
        return  # text-only sample
    if not isinstance(record["image"], str):
        add(Problem(file, index, rid, "image", f"{record['image']!r}: expected a relative path"))
        return
    message = images.problem(record["image"])
    if message:
        add(Problem(file, index, rid, "image", message))


def load_records(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file not found: check the task's train_file / eval_file in config.yaml")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err


def read_answers(path: Path) -> dict[str, list[str]]:
    """Reference answers per question_id (as a string) from an annotation file: TextVQA's
    `{"data": [{"question_id", "answers": [...]}, ...]}` (TextVQA_0.5.1_val.json), or a plain list of such
    records."""
    records = load_records(path)
    if isinstance(records, dict):
        records = records.get("data")
    if not isinstance(records, list):
        raise DataError(
            f"{path}: expected a list of records with 'question_id' and 'answers' (or {{'data': ...}})"
        )
    answers: dict[str, list[str]] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict) or "question_id" not in record:
            raise DataError(f"{path} record {index}: expected an object with 'question_id' and 'answers'")
        values = record.get("answers")
        if not isinstance(values, list) or not values or not all(isinstance(a, str) for a in values):
            raise DataError(
                f"{path} record {index} (question_id {record['question_id']!r}): field 'answers': expected a "
                "non-empty list of strings"
            )
        answers[str(record["question_id"])] = values
    return answers


def validate_answers_file(records: Any, eval_file: str, answers_file: Path) -> Report:
    """Every question of an eval file has its reference answers in `answers_file` (a task's answers_file)."""
    answers = read_answers(answers_file)
    report = Report(str(answers_file), len(answers))
    for i, record in enumerate(records if isinstance(records, list) else []):
        qid = record.get("question_id") if isinstance(record, dict) else None
        if isinstance(qid, str | int) and str(qid) not in answers:
            report.problems.append(
                Problem(
                    str(answers_file), i, qid, "answers", f"no answers for question {qid!r} of {eval_file}"
                )
            )
    return report


def validate_config_tasks(cfg: Any) -> list[Report]:
    """Every task file of an experiment config (train, eval, and a task's answers file), images checked as
    `data.check_images` says."""
    reports = []
    for task in cfg.tasks:
        images = ImageChecker(Path(task.image_root), open_images=cfg.data.check_images)
        train, test = Path(task.train_file), Path(task.eval_file)
        reports.append(validate_train_records(load_records(train), str(train), images))
        test_records = load_records(test)
        reports.append(validate_eval_records(test_records, str(test), images, task.scorer))
        if task.answers_file:
            reports.append(validate_answers_file(test_records, str(test), Path(task.answers_file)))
    return reports


def validate_folder(folder: Path, image_root: Path | None = None, scorer: str | None = None) -> list[Report]:
    """Validate a CoIN task folder: train.json and test.json / val.json, whichever exist."""
    images = ImageChecker(image_root or folder)
    reports = []
    if (folder / "train.json").is_file():
        reports.append(
            validate_train_records(load_records(folder / "train.json"), str(folder / "train.json"), images)
        )
    for name in ("test.json", "val.json"):
        if (folder / name).is_file():
            reports.append(
                validate_eval_records(load_records(folder / name), str(folder / name), images, scorer)
            )
    if not reports:
        raise DataError(f"{folder}: no train.json, test.json or val.json in this folder")
    return reports
