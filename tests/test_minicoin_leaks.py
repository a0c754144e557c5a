"""mini-CoIN holds its test sets out, checked on the files the default config's DAG writes (its sizes, its
seed): no test image (same pixels) in any train split, any other test set or the pretraining corpus, none
twice in a test set; no answer of the corpus in any task's answer format; boxes spread over positions and
sizes, not a few fixed ones.

The answer-format rule, per task and per answer of the corpus (every `gpt` turn): the task's own scorer
gives 0 against every answer that task has (train and test), and no answer holds four numbers (a box). The
one exception: text-only records (the "Repeat:" vocabulary, not about any image) may contain a digit
inside a longer phrase, which `contains` (digit_class's scorer: substring) would accept; for them the
digit task's rule is that the whole answer is never a bare digit. Without it the base could not learn to
say a digit at all.
"""

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from modalprompt.bench import minicoin
from modalprompt.config import load_experiment
from modalprompt.data.validation import parse_box
from modalprompt.scoring.scorers import box_iou_value, exact_match, reference_of, score

ROOT = Path(__file__).resolve().parents[1]


def _pixels(path: Path) -> str:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


@pytest.fixture(scope="module", params=["small", pytest.param("default", marks=pytest.mark.slow)])
def generated(request, tmp_path_factory):
    """The tasks and corpus as the DAG's jobs write them: the default config's sizes and seed (slow tier),
    and the same with a tenth of the train and corpus images (fast tier)."""
    bench = load_experiment(ROOT / "config.yaml").benchmark
    if request.param == "small":
        bench = dataclasses.replace(
            bench,
            train_size=bench.train_size // 10,
            generic_size=bench.generic_size // 10,
        )
    out = tmp_path_factory.mktemp("minicoin")
    for task in minicoin.TASKS:
        minicoin.write_task(out, task, bench.train_size, bench.test_size, bench.seed)
    minicoin.generic_corpus(out / "generic", bench.generic_size, bench.seed, test_size=bench.test_size)
    return out, bench


def _records(folder: Path, split: str) -> list[dict]:
    return json.loads((folder / f"{split}.json").read_text())


def test_no_test_image_anywhere_else_and_none_twice(generated):
    out, bench = generated
    where: dict[str, list[str]] = {}  # pixel hash -> every place it occurs
    test_hashes: dict[str, list[str]] = {}
    for task in minicoin.TASKS:
        for split in ("train", "test"):
            records = _records(out / task, split)
            if split == "test":
                assert len(records) == bench.test_size
            for r in records:
                h = _pixels(out / task / r["image"])
                where.setdefault(h, []).append(f"{task}/{split}")
                if split == "test":
                    test_hashes.setdefault(task, []).append(h)
    corpus = _records(out / "generic", "train")
    assert sum(1 for r in corpus if r.get("image")) == bench.generic_size
    for r in corpus:
        if r.get("image"):
            where.setdefault(_pixels(out / "generic" / r["image"]), []).append("corpus")
    problems = {}
    for task, hashes in test_hashes.items():
        repeats = [h for h, n in Counter(hashes).items() if n > 1]
        if repeats:
            problems[f"{task}: repeated in its test set"] = len(repeats)
        elsewhere = Counter(p for h in set(hashes) for p in where[h] if p != f"{task}/test")
        for place, n in elsewhere.items():
            problems[f"{task} test images also in {place}"] = n
    assert not problems


def _task_answers(out: Path, task: str) -> list:
    """Every distinct answer of the task, in its scorer's reference form (train answers as `answer`)."""
    scorer = minicoin.SCORERS[task]
    references = {json.dumps(reference_of(r, scorer)) for r in _records(out / task, "test")}
    for r in _records(out / task, "train"):
        answer = r["conversations"][-1]["value"]
        references.add(json.dumps([answer] * 10 if scorer == "vqa_soft" else answer))
    return [json.loads(x) for x in sorted(references)]


def test_the_corpus_states_no_answer_in_a_task_format(generated):
    out, _ = generated
    image_answers, text_answers = set(), set()
    for r in _records(out / "generic", "train"):
        answers = {t["value"] for t in r["conversations"] if t["from"] == "gpt"}
        (image_answers if r.get("image") else text_answers).update(answers)
    boxes = sorted(a for a in image_answers | text_answers if parse_box(a) is not None)
    assert not boxes, boxes[:5]  # no four numbers anywhere: box_iou needs them, so it scores 0 on all
    found = []
    for task in minicoin.TASKS:
        scorer = minicoin.SCORERS[task]
        if scorer == "box_iou":
            continue  # covered by the box check above
        for reference in _task_answers(out, task):
            for answer in image_answers:
                if score(scorer, answer, reference):
                    found.append((task, "image record", answer, reference))
            for answer in text_answers:
                said = (
                    exact_match(answer, reference)
                    if scorer == "contains"
                    else score(scorer, answer, reference)
                )
                if said:
                    found.append((task, "text record", answer, reference))
    assert not found, found[:10]


def test_boxes_are_continuous_not_a_few_choices(generated):
    out, bench = generated
    test = [parse_box(r["answer_bbox"]) for r in _records(out / "box_grounding", "test")]
    train = [parse_box(r["conversations"][-1]["value"]) for r in _records(out / "box_grounding", "train")]
    assert len({tuple(b) for b in test}) >= 0.9 * bench.test_size
    assert len({round(b[2] - b[0], 2) for b in test}) >= 8 and len({round(b[3] - b[1], 2) for b in test}) >= 8
    # no single box answers much of the test set: the best constant answer among the train boxes
    best = max(sum(box_iou_value(guess, b) > 0.5 for b in test) for guess in train)
    assert best <= 0.25 * bench.test_size, best
