"""Scorers for CoIN's tasks, and scoring of a predictions file against its eval file. No torch here.

One entry point per sample: `score(scorer, prediction, reference) -> float in [0, 1]`. Predictions are
joined to references on `question_id`, never on row order; a missing, unknown or duplicate prediction is
an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modalprompt.data.validation import load_records, parse_box
from modalprompt.errors import DataError
from modalprompt.scoring.metrics import selection_accuracy

# ------------------------------------------------------------------ the official VQA answer normalisation

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!"]  # fmt: skip
_PERIOD_NOT_IN_NUMBER = re.compile(r"\.(?!\d)")  # "3.5" keeps its period
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")

# Contractions written with their apostrophes; answers typed without them are mapped back.
_CONTRACTIONS = [
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't",
    "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he'll", "he's", "how'd", "how'll", "how's", "i'd",
    "i'd've", "i'll", "i'm", "i've", "isn't", "it'd", "it'd've", "it'll", "it's", "let's", "ma'am", "mightn't",
    "mightn't've", "might've", "mustn't", "must've", "needn't", "not've", "o'clock", "oughtn't", "shan't",
    "she'd", "she'd've", "she'll", "she's", "should've", "shouldn't", "shouldn't've", "somebody'd",
    "somebody'd've", "somebody'll", "somebody's", "someone'd", "someone'd've", "someone'll", "someone's",
    "something'd", "something'd've", "something'll", "that's", "there'd", "there'd've", "there're", "there's",
    "they'd", "they'd've", "they'll", "they're", "they've", "twas", "wasn't", "we'd", "we'd've", "we'll",
    "we're", "we've", "weren't", "what'll", "what're", "what's", "what've", "when's", "where'd", "where's",
    "where've", "who'd", "who'd've", "who'll", "who's", "who've", "why'll", "why're", "why's", "won't",
    "would've", "wouldn't", "wouldn't've", "y'all", "y'all'll", "y'all'd've", "you'd", "you'd've", "you'll",
    "you're", "you've",
]  # fmt: skip


def _contraction_map() -> dict[str, str]:
    """'dont' -> "don't", and for double contractions each partly-apostrophised spelling too."""
    mapping = {}
    for canonical in _CONTRACTIONS:
        parts = canonical.split("'")
        for mask in range(2 ** (len(parts) - 1)):
            spelled = parts[0]
            for k, part in enumerate(parts[1:]):
                spelled += ("'" if mask >> k & 1 else "") + part
            if spelled != canonical:
                mapping[spelled] = canonical
    return mapping


_CONTRACTION_MAP = _contraction_map()


def _strip_punctuation(text: str) -> str:
    # The official rule: a punctuation mark next to a space (or any text with a digit,digit comma) is
    # removed; elsewhere it becomes a space ("hello-world" -> "hello world"). Periods go unless in a number.
    remove = _COMMA_IN_NUMBER.search(text) is not None
    for mark in _PUNCTUATION:
        if remove or f"{mark} " in text or f" {mark}" in text:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    return _PERIOD_NOT_IN_NUMBER.sub("", text)


def normalize_vqa_answer(text: str) -> str:
    """VQA evaluation normalisation: white space, punctuation, number words to digits, articles removed,
    contractions restored, lower case."""
    text = _strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTION_MAP.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_soft(prediction: str, references: list[str] | str) -> float:
    """VQA accuracy: mean over the leave-one-out subsets of min(1, matches / 3). A single reference
    answer scores by normalised equality (leave-one-out would leave nothing to match)."""
    refs = [references] if isinstance(references, str) else list(references)
    pred = normalize_vqa_answer(prediction)
    normalized = [normalize_vqa_answer(r) for r in refs]
    if len(normalized) == 1:
        return float(pred == normalized[0])
    matches = normalized.count(pred)
    # leaving out answer r: the others hold `matches` copies of the prediction, one fewer if r is one
    accs = [min(1.0, (matches - (r == pred)) / 3) for r in normalized]
    return sum(accs) / len(accs)


# ------------------------------------------------------------------ the other scorers

_LETTER_PATTERNS = [
    re.compile(r"^\(?([A-Z])\)?$"),  # "A", "(A)"
    re.compile(r"^\(?([A-Z])[.):]"),  # "A.", "A) text", "A: text", "(A). text"
    re.compile(r"answer is:?\s*\(?([A-Z])\b", re.IGNORECASE),  # "The answer is A."
]


def option_letter_of(text: str) -> str | None:
    text = text.strip()
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1).upper()
    return None


def option_letter(prediction: str, reference: str) -> float:
    expected = option_letter_of(reference)
    if expected is None:
        raise DataError(f"option_letter: reference {reference!r} has no option letter")
    return float(option_letter_of(prediction) == expected)


def _plain(text: str) -> str:
    text = " ".join(text.split())
    return text.removesuffix(".").strip().lower()


def exact_match(prediction: str, reference: str) -> float:
    """Case-insensitive, after stripping white space and a trailing period."""
    return float(_plain(prediction) == _plain(reference))


def contains(prediction: str, reference: str) -> float:
    """The normalised reference (e.g. a class name) occurs in the normalised prediction; empty is wrong."""
    pred, ref = _plain(prediction), _plain(reference)
    return float(bool(pred) and bool(ref) and ref in pred)


def box_iou_value(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (
        max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    )
    return inter / area if area > 0 else 0.0


def box_iou(prediction: str, reference: Any) -> float:
    """Correct (1.0) when the first four numbers in the prediction make a box with IoU > 0.5."""
    expected = parse_box(reference)
    if expected is None:
        raise DataError(f"box_iou: reference {reference!r} is not four numbers [x1, y1, x2, y2]")
    predicted = parse_box(prediction)
    return float(predicted is not None and box_iou_value(predicted, expected) > 0.5)


SCORERS: dict[str, Callable[[str, Any], float]] = {
    "option_letter": option_letter,
    "vqa_soft": vqa_soft,
    "exact_match": exact_match,
    "contains": contains,
    "box_iou": box_iou,
}


def score(scorer: str, prediction: str, reference: Any) -> float:
    """Score one prediction in [0, 1] with the named scorer."""
    if scorer not in SCORERS:
        raise DataError(f"unknown scorer {scorer!r}: choose one of {sorted(SCORERS)}")
    return SCORERS[scorer](prediction, reference)


def reference_of(record: dict[str, Any], scorer: str) -> Any:
    """What a scorer compares against: the box for box_iou, all answers for vqa_soft, else `answer`."""
    if scorer == "box_iou":
        return record.get("answer_bbox", record.get("answer"))
    if scorer == "vqa_soft" and "answers" in record:
        return record["answers"]
    return record["answer"]


# ------------------------------------------------------------------ files


@dataclass
class ScoreResult:
    scorer: str
    accuracy: float  # percent over scored samples
    scored: int
    skipped: list[dict[str, Any]]  # rows the evaluation skipped as bad records, with the reason
    selection_accuracy: (
        float | None
    )  # percent of samples whose most similar selected prompt is the task's own
    per_question: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer, "accuracy": self.accuracy, "scored": self.scored,
            "skipped": self.skipped, "selection_accuracy": self.selection_accuracy,
            "per_question": self.per_question,
        }  # fmt: skip


def read_predictions(path: Path) -> dict[Any, dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path}: predictions file not found")
    rows: dict[Any, dict[str, Any]] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {line_no}: not valid JSON ({err})") from err
        if not isinstance(row, dict) or "question_id" not in row:
            raise DataError(f"{path} line {line_no}: expected an object with a 'question_id'")
        if "prediction" not in row and "skipped" not in row:
            raise DataError(f"{path} line {line_no}: expected a 'prediction' (or 'skipped') field")
        if row["question_id"] in rows:
            raise DataError(
                f"{path} line {line_no}: duplicate prediction for question_id {row['question_id']!r}"
            )
        rows[row["question_id"]] = row
    return rows


def score_predictions(
    scorer: str, predictions: Path, eval_file: Path, task: str | None = None, max_samples: int | None = None
) -> ScoreResult:
    """Join predictions to the eval file on question_id and score each; accuracy in percent."""
    if scorer not in SCORERS:
        raise DataError(f"unknown scorer {scorer!r}: choose one of {sorted(SCORERS)}")
    records = load_records(eval_file)
    if not isinstance(records, list):
        raise DataError(f"{eval_file}: expected a JSON list of records")
    references: dict[Any, dict[str, Any]] = {}
    skipped: list[dict[str, Any]] = []
    for index, record in enumerate(records[:max_samples]):
        qid = record.get("question_id") if isinstance(record, dict) else None
        if not isinstance(qid, str | int) or isinstance(qid, bool):
            skipped.append({"question_id": None, "index": index, "reason": "no usable question_id"})
        elif qid not in references:  # the first of duplicates is the one evaluated
            references[qid] = record
    rows = read_predictions(predictions)
    unknown = [q for q in rows if q not in references]
    if unknown:
        raise DataError(
            f"{predictions}: {len(unknown)} prediction(s) for question_ids not in {eval_file}: {unknown[:10]}"
        )
    missing = [q for q in references if q not in rows]
    if missing:
        raise DataError(
            f"{predictions}: no prediction for {len(missing)} question(s) of {eval_file}: "
            f"{missing[:10]} (rerun the evaluation; a missing prediction is not scored as wrong)"
        )
    per_question: dict[str, float] = {}
    top_selected: list[str] = []  # per sample, the prompt that ranked first (the last of `selected`)
    for qid, row in rows.items():
        if "skipped" in row:
            skipped.append({"question_id": qid, "reason": row["skipped"]})
            continue
        per_question[str(qid)] = score(scorer, str(row["prediction"]), reference_of(references[qid], scorer))
        if row.get("selected"):
            top_selected.append(row["selected"][-1])
    scored = len(per_question)
    return ScoreResult(
        scorer=scorer,
        accuracy=100.0 * sum(per_question.values()) / scored if scored else 0.0,
        scored=scored,
        skipped=skipped,
        selection_accuracy=selection_accuracy(top_selected, task)
        if task is not None and top_selected
        else None,
        per_question=per_question,
    )
