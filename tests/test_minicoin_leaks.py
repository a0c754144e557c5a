"""mini-CoIN holds its test sets out, checked on the files the default config's DAG writes (its sizes, its
seed): no test image (same pixels) in any train split, any other test set or the pretraining corpus, none
twice in a test set; no task's instruction wording in the corpus; boxes spread over positions and sizes,
not a few fixed ones.

The corpus may teach what LLaVA-1.5's own instruction data teaches a real base (captions, short answers,
multiple choice answered by a letter, RefCOCO-style boxes), on images that are no task's test images and
in a generic wording ("Short answer: color of circle?"); each task's prompt must learn its own wording.
"""

import dataclasses
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from modalprompt.bench import minicoin
from modalprompt.data.validation import parse_box
from modalprompt.experiment import load_experiment
from modalprompt.scoring.scorers import box_iou_value

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


def _instruction_ngrams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    """The n-grams of a question's wording, option lines ("A. circle") left out: they are content."""
    lines = [line for line in text.replace("<image>", "").splitlines() if not re.match(r"^[A-D]\. ", line)]
    words = " ".join(lines).lower().replace("?", " ").replace(".", " ").replace(":", " ").split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_the_corpus_uses_no_task_instruction_wording(generated):
    """What LLaVA-1.5's own training gives a base (captions, short answers, multiple choice, boxes on
    other images) is allowed; a task's instruction wording is not: no four words in a row of any task's
    question (train or test) occur in any question of the corpus."""
    out, _ = generated
    task_ngrams = set()
    for task in minicoin.TASKS:
        for r in _records(out / task, "train"):
            task_ngrams |= _instruction_ngrams(r["conversations"][0]["value"])
        for r in _records(out / task, "test"):
            task_ngrams |= _instruction_ngrams(r["text"])
    found = {}
    for r in _records(out / "generic", "train"):
        for turn in r["conversations"][::2]:
            shared = _instruction_ngrams(turn["value"]) & task_ngrams
            if shared:
                found[turn["value"]] = sorted(shared)[:3]
    assert not found, list(found.items())[:5]


def test_boxes_are_continuous_not_a_few_choices(generated):
    out, bench = generated
    test = [parse_box(r["answer_bbox"]) for r in _records(out / "box_grounding", "test")]
    train = [parse_box(r["conversations"][-1]["value"]) for r in _records(out / "box_grounding", "train")]
    assert len({tuple(b) for b in test}) >= 0.9 * bench.test_size
    assert len({round(b[2] - b[0], 2) for b in test}) >= 8 and len({round(b[3] - b[1], 2) for b in test}) >= 8
    # no single box answers much of the test set: the best constant answer among the train boxes
    best = max(sum(box_iou_value(guess, b) > 0.5 for b in test) for guess in train)
    assert best <= 0.25 * bench.test_size, best
