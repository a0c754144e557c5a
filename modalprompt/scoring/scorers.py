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

from modalprompt import plugins
from modalprompt.data.validation import load_records, parse_box, read_answers
from modalprompt.errors import DataError, PluginError
from modalprompt.scoring.metrics import selection_accuracy

# ------------------------------------------------------------------ the official VQA answer normalisation
# As EvalAIAnswerProcessor (mmf; LLaVA's m4c_evaluator.py, which CoIN's TextVQA evaluation runs) and the VQA
# API's vqaEval.py: the same published tables and rules. Differences to both are listed in docs/scoring.md.

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!"]  # fmt: skip
_PERIOD_NOT_IN_NUMBER = re.compile(
    r"(?!<=\d)(\.)(?!\d)"
)  # the published pattern: a period not before a digit
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")

# The published contraction table, entry for entry (quirks included: the capitalised keys never match a
# lower-cased answer, and "somebody'd" maps to "somebodyd"). Keys are answers typed without apostrophes.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip


def _strip_punctuation(text: str, periods: int = 0) -> str:
    """The published rule, decided on the original text: a mark next to a space (or any mark, when the text
    holds a digit,digit comma) is removed, elsewhere it becomes a space ("hello-world" -> "hello world");
    then periods not before a digit go. `periods`: how many (0: all; the m4c evaluator passes re.UNICODE,
    32, as the count)."""
    remove_all = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if remove_all or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_IN_NUMBER.sub("", out, count=periods)


def normalize_vqa_answer(text: str, periods: int = 0) -> str:
    """The TextVQA answer processor (EvalAIAnswerProcessor): lower case; ',' and '?' removed and "'s" split
    off; white space; punctuation; number words to digits; articles removed; the contraction table."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = _strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip(), periods)
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def _soft_accuracy(pred: str, normalized: list[str]) -> float:
    if len(normalized) == 1:  # a single answer scores by normalised equality (leave-one-out leaves nothing)
        return float(pred == normalized[0])
    matches = normalized.count(pred)
    # leaving out answer r: the others hold `matches` copies of the prediction, one fewer if r is one
    accs = [min(1.0, (matches - (r == pred)) / 3) for r in normalized]
    return sum(accs) / len(accs)


def _answers(references: list[str] | str) -> list[str]:
    return [references] if isinstance(references, str) else list(references)


def vqa_soft(prediction: str, references: list[str] | str) -> float:
    """VQA accuracy: mean over the leave-one-out subsets of min(1, matches / 3), every answer normalised."""
    refs = [normalize_vqa_answer(r) for r in _answers(references)]
    return _soft_accuracy(normalize_vqa_answer(prediction), refs)


# ------------------------------------------------------------------ the other scorers

_LETTER = r"\(?([A-Z])\)?"  # "A" or "(A)"
_LETTER_PATTERNS = [
    # the whole answer is one letter, any case: "A", "b", "(C)", "D.", "e)"
    re.compile(r"^\(?([A-Za-z])\)?[.):]?$"),
    # a letter that opens the answer and is followed by ". ", ") " or ": ": "A. text", "(B) text",
    # "(C). text"; not an abbreviation such as "A.I." nor an article ("A cat")
    re.compile(r"^\(?([A-Z])(?:\)|[.:])+\s"),
    # an answer phrase: "The answer is B", "Answer: (C)", "the correct option is d." (a lower-case letter only
    # where it ends the answer or is in brackets, so that "the answer is a triangle" is no letter)
    re.compile(r"\b(?:answer|option|choice)(?: is)?:?\s+" + _LETTER + r"(?!\w|\.\w)", re.IGNORECASE),
]


def option_letter_of(text: str) -> str | None:
    """The option letter an answer names, or None. Reads "A", "a", "(A)", "A.", "A. text", "(A) text",
    "The answer is A.", "Answer: A"; not an article ("The answer is a triangle.") or an abbreviation
    ("A.I. says C")."""
    text = text.strip()
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(text)
        if match and (
            match.group(1).isupper() or pattern is _LETTER_PATTERNS[0] or _bracketed_or_last(match)
        ):
            return match.group(1).upper()
    return None


def _bracketed_or_last(match: re.Match) -> bool:
    rest = match.string[match.end() :].strip()
    return match.group(0).rstrip().endswith(")") or rest in ("", ".")


def option_letter(prediction: str, reference: str) -> float:
    expected = option_letter_of(reference)
    if expected is None:
        raise DataError(f"option_letter: reference {reference!r} has no option letter")
    return float(option_letter_of(prediction) == expected)


def _plain(text: str) -> str:
    text = " ".join(text.split())
    return text.removesuffix(".").strip().lower()


def exact_match(prediction: str, reference: str) -> float:
    """GQA's rule (CoIN's convert_gqa_for_eval.py): case-insensitive, trailing periods dropped."""
    return float(_gqa_plain(prediction) == _gqa_plain(reference))


def _gqa_plain(text: str) -> str:
    return text.strip().rstrip(".").strip().lower()


def exact_match_strict(prediction: str, reference: str) -> float:
    """CoIN's VizWiz, VQAv2 and OCR-VQA rule: the whole answer, case-insensitive; a trailing period or any
    other extra character makes it wrong."""
    return float(prediction.strip().upper() == reference.strip().upper())


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
    "exact_match_strict": exact_match_strict,
    "contains": contains,
    "box_iou": box_iou,
}


def plain_answer(text: str) -> str:
    """The least an answer is compared by: lower case, no surrounding white space."""
    return text.strip().lower()


# How each scorer normalises an answer before it compares (the scorers without one compare plain_answer)
ANSWER_NORMALISERS: dict[str, Callable[[str], str]] = {
    "option_letter": lambda text: option_letter_of(text) or plain_answer(text),
    "vqa_soft": normalize_vqa_answer,
    "exact_match": _gqa_plain,
    "exact_match_strict": plain_answer,  # its comparison is upper-cased: the same classes of answers
    "contains": _plain,
}


def normalise_answer(scorer: str, text: str) -> str:
    """An answer as `scorer` normalises it before comparing (plain_answer for the scorers without one)."""
    return ANSWER_NORMALISERS.get(scorer, plain_answer)(text)


def _add_installed_scorers() -> None:
    """The scorers of installed packages (group modalprompt.scorers): the entry point's name is the scorer's
    (a task's `scorer`), its object a function (prediction, reference) -> float in [0, 1]."""
    for entry_point in plugins.installed(plugins.SCORERS):
        if entry_point.name in SCORERS:
            raise PluginError(f"{plugins.describe(entry_point)}: a scorer named {entry_point.name!r} exists "
                              "already: name the entry point otherwise")  # fmt: skip
        scorer = plugins.load(entry_point)
        if not callable(scorer):
            raise PluginError(
                f"{plugins.describe(entry_point)} is not a function (prediction, reference) -> float"
            )
        SCORERS[entry_point.name] = scorer


_add_installed_scorers()


# ------------------------------------------------------------------ the published evaluation, bugs included
# What CoIN's eval_*.py scripts (and the ModalPrompt code and MCITlib, which carry the same logic) give for
# one prediction, where that differs from ours; published tables are computed this way. Each is recorded as
# `accuracy_published` beside our `accuracy`.

_COIN_OPTIONS = ("A", "B", "C", "D", "E")  # eval_science_qa.py's --options


def coin_option_letter(prediction: str, reference: str) -> float:
    """eval_science_qa.py: the answer itself, or "X. ...", else the first one-character word, upper-cased
    ("I think the answer is A." reads as I; "The answer is a triangle." as A)."""
    if prediction in _COIN_OPTIONS:
        letter = prediction
    elif len(prediction) >= 3 and prediction[0] in _COIN_OPTIONS and prediction[1:3] == ". ":
        letter = prediction[0]
    else:
        words = re.findall(r"\b(\w)\b", prediction)
        letter = words[0].upper() if words else "FAILED"
    return float(letter in _COIN_OPTIONS and letter == option_letter_of(reference))


def coin_vqa_soft(prediction: str, references: list[str] | str) -> float:
    """m4c_evaluator.py: as vqa_soft, but only the first 32 periods of an answer are removed."""
    refs = [normalize_vqa_answer(r, periods=32) for r in _answers(references)]
    return _soft_accuracy(normalize_vqa_answer(prediction, periods=32), refs)


def coin_contains(prediction: str, reference: str) -> float:
    """eval_ImagetNet.py: the answer in the prediction or the prediction in the answer, case-sensitive; an
    empty prediction is in every answer."""
    return float(reference in prediction or prediction in reference)


def coin_box(text: str) -> list[float] | None:
    """eval_grounding.py's parser: brackets removed, then the first and last character dropped before
    splitting on commas ("[0.59, 0.03, 0.75, 0.24]" gives 0.2 for the last number)."""
    text = text[1:] if text.startswith(" ") else text
    try:
        numbers = [float(x) for x in text.replace("[", "").replace("]", "")[1:-1].split(",")]
    except ValueError:
        return None
    return numbers if len(numbers) == 4 else None


def coin_box_iou(prediction: str, reference: Any) -> float:
    """eval_grounding.py: its parser on the prediction, the reference read whole, IoU > 0.5 (areas not
    clipped at zero)."""
    expected = parse_box(reference)
    predicted = coin_box(prediction)
    if expected is None or predicted is None:
        return 0.0
    (x1, y1, x2, y2), (u1, v1, u2, v2) = predicted, expected
    inter = max(0.0, min(x2, u2) - max(x1, u1)) * max(0.0, min(y2, v2) - max(y1, v1))
    union = (x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1) - inter
    return float(union > 0 and inter / union > 0.5)


# Scorers whose published counterpart gives other numbers; the rest are scored the same way by CoIN.
PUBLISHED: dict[str, Callable[[str, Any], float]] = {
    "option_letter": coin_option_letter,
    "vqa_soft": coin_vqa_soft,
    "contains": coin_contains,
    "box_iou": coin_box_iou,
}


def score(scorer: str, prediction: str, reference: Any) -> float:
    """Score one prediction in [0, 1] with the named scorer."""
    if scorer not in SCORERS:
        raise DataError(f"unknown scorer {scorer!r}: choose one of {sorted(SCORERS)}")
    return SCORERS[scorer](prediction, reference)


def score_published(scorer: str, prediction: str, reference: Any) -> float:
    """Score one prediction as the published evaluation code would."""
    return PUBLISHED.get(scorer, SCORERS[scorer])(prediction, reference)


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
    # percent as the published evaluation code scores the same predictions (its parsers, bugs included)
    accuracy_published: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer, "accuracy": self.accuracy, "accuracy_published": self.accuracy_published,
            "scored": self.scored, "skipped": self.skipped, "selection_accuracy": self.selection_accuracy,
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
    scorer: str,
    predictions: Path,
    eval_file: Path,
    task: str | None = None,
    max_samples: int | None = None,
    answers_file: Path | None = None,
) -> ScoreResult:
    """Join predictions to the eval file on question_id and score each; accuracy in percent. With
    `answers_file`, each question's reference answers come from it (joined on question_id as text)."""
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
    if answers_file is not None:
        answers = read_answers(answers_file)
        absent = [q for q in references if str(q) not in answers]
        if absent:
            raise DataError(
                f"{answers_file}: no answers for {len(absent)} question(s) of {eval_file}: {absent[:10]} (is it "
                "the annotation file of the same split?)"
            )
        references = {q: {**r, "answers": answers[str(q)]} for q, r in references.items()}
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
    published = 0.0  # the same predictions, scored as the published evaluation code does
    top_selected: list[str] = []  # per sample, the prompt that ranked first (the last of `selected`)
    for qid, row in rows.items():
        if "skipped" in row:
            skipped.append({"question_id": qid, "reason": row["skipped"]})
            continue
        prediction, reference = str(row["prediction"]), reference_of(references[qid], scorer)
        per_question[str(qid)] = score(scorer, prediction, reference)
        published += score_published(scorer, prediction, reference)
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
        accuracy_published=100.0 * published / scored if scored else 0.0,
    )
