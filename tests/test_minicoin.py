"""mini-CoIN: deterministic, valid CoIN files for every task; the pretrained base loads like any other."""

import json
import random

import pytest

from modalprompt.bases.backbone import load_backbone
from modalprompt.bench import minicoin
from modalprompt.bench.pretrain import pretrain_base
from modalprompt.config import ModelConfig, PretrainConfig, ProgressConfig
from modalprompt.data.validation import parse_box, validate_folder
from modalprompt.scoring.scorers import score


@pytest.mark.parametrize("task", minicoin.TASKS)
def test_tasks_are_valid_deterministic_and_answerable_by_their_scorer(tmp_path, task):
    a = minicoin.write_task(tmp_path / "a", task, train_size=12, test_size=6, seed=3)
    b = minicoin.write_task(tmp_path / "b", task, train_size=12, test_size=6, seed=3)
    assert (a / "train.json").read_text() == (b / "train.json").read_text()
    assert (a / "images" / f"{task}_00003.png").read_bytes() == (
        b / "images" / f"{task}_00003.png"
    ).read_bytes()
    reports = validate_folder(a, scorer=minicoin.SCORERS[task])
    assert all(r.ok for r in reports), [r.summary() for r in reports]
    for record in json.loads((a / "test.json").read_text()):
        reference = record.get("answer_bbox") or record.get("answers") or record["answer"]
        assert score(minicoin.SCORERS[task], record["answer"], reference) == 1.0  # the gold answer scores 1
        if task == "box_grounding":
            assert parse_box(record["answer_bbox"]) is not None and record["size"] == [minicoin.SIZE] * 2


def test_tasks_differ_in_wording_and_style(tmp_path):
    questions = set()
    for task in minicoin.TASKS:
        folder = minicoin.write_task(tmp_path, task, train_size=3, test_size=1, seed=0)
        first = json.loads((folder / "test.json").read_text())[0]
        questions.add(first["text"].split("?")[0])
    assert len(questions) == len(minicoin.TASKS)


def test_generic_corpus_speaks_no_task_wording(tmp_path):
    folder = minicoin.generic_corpus(tmp_path / "generic", size=21, seed=0, test_size=5)
    records = json.loads((folder / "train.json").read_text())
    assert validate_folder(folder)[0].ok
    humans = {t["value"].replace("<image>\n", "") for r in records for t in r["conversations"][::2]}
    prefixes = (minicoin.GENERIC_INSTRUCTION, minicoin.FACT_PREFIX, minicoin.REPEAT_PREFIX)
    assert all(h.startswith(prefixes) for h in humans)
    rng = random.Random(0)
    task_questions = {minicoin.GENERATORS[t](rng, {}).question for t in minicoin.TASKS}
    assert not humans & task_questions


def test_generic_corpus_teaches_llava_skills_in_its_own_wording(tmp_path):
    """Short answers, multiple choice answered by the letter of the fact the image shows, and boxes of the
    shapes drawn (what LLaVA-1.5's own data teaches), asked as "Short answer: ...?". A multiple-choice turn
    comes before every other turn of its conversation and its fact is not also asked as a short answer: no
    earlier answer gives it away, only the image does."""
    folder = minicoin.generic_corpus(tmp_path / "generic", size=70, seed=0, test_size=5)
    choices = boxes = 0
    for record in json.loads((folder / "train.json").read_text()):
        turns = record["conversations"]
        qa = {
            h["value"].replace("<image>\n", ""): a["value"]
            for h, a in zip(turns[::2], turns[1::2], strict=True)
        }
        asked = list(qa)
        caption = qa.get(minicoin.GENERIC_INSTRUCTION, "")
        for position, (question, answer) in enumerate(qa.items()):
            key = question.removeprefix(f"{minicoin.FACT_PREFIX} ").split("?")[0]
            if key.endswith(", pick one"):  # the letter names what the image shows (its caption says it)
                options = dict(line.split(". ", 1) for line in question.split("\n")[1:])
                fact, chosen = key.removesuffix(", pick one"), options[answer]
                said = minicoin.NUMBER_WORDS[int(chosen)] if chosen.isdigit() else chosen
                assert said in caption.split()
                assert f"{minicoin.FACT_PREFIX} {fact}?" not in qa
                assert all(", pick one" in q for q in asked[:position])
                choices += 1
            elif key.startswith("box of"):
                box = parse_box(answer)
                assert (
                    box is not None and all(0 <= v <= 1 for v in box) and box[0] < box[2] and box[1] < box[3]
                )
                boxes += 1
    assert choices >= 10 and boxes >= 10


def test_generic_corpus_teaches_to_say_every_word_of_the_tasks(tmp_path):
    """Text-only records: the base must be able to say 'unanswerable', option letters, numerals, inside
    phrases of two to four words ('Repeat:'), to read a labelled list (the label: 'B'), and a number word's
    numeral ('three is 3')."""
    folder = minicoin.generic_corpus(tmp_path / "generic", size=1500, seed=0, test_size=5)
    records = json.loads((folder / "train.json").read_text())
    language = [r for r in records if "image" not in r]
    assert len(language) == 1500 // minicoin.LANGUAGE_EVERY
    said, numerals, labels = set(), set(), set()
    for r in language:
        human, answer = (t["value"] for t in r["conversations"])
        said.update(answer.split())
        if human.startswith(minicoin.REPEAT_PREFIX):
            assert human == f"{minicoin.REPEAT_PREFIX} {answer}" and 2 <= len(answer.split()) <= 4
        elif minicoin.NUMERAL_QUESTION in human:
            word, _, digit = answer.split()
            assert human == f"{minicoin.FACT_PREFIX} {word} {minicoin.NUMERAL_QUESTION}?"
            assert minicoin.NUMBER_WORDS[int(digit)] == word
            numerals.add(digit)
        else:
            question, *options = human.split("\n")
            thing = question.removeprefix(f"{minicoin.FACT_PREFIX} {minicoin.LIST_QUESTION} ").removesuffix(
                "?"
            )
            assert question == f"{minicoin.FACT_PREFIX} {minicoin.LIST_QUESTION} {thing}?"
            assert f"{answer}. {thing}" in options and len(options) == 4
            labels.add(answer)
    assert {a for answers in minicoin.ANSWER_SPACE.values() for a in answers} <= said  # every bare answer
    for task, words in minicoin.vocabulary_by_task().items():  # the many box numbers: half of them at least
        assert len(said & set(words)) >= (0.5 if task == "box_grounding" else 0.8) * len(words), task
    assert numerals == set("0123456789") and labels == set("ABCD")


def test_pretrained_base_loads_through_the_production_path(tmp_path):
    corpus = minicoin.generic_corpus(tmp_path / "generic", size=16, seed=0, test_size=5)
    settings = PretrainConfig(hidden=32, layers=1, vision_hidden=16, feature=16, clip_steps=2, caption_steps=2,
                              batch_size=4)  # fmt: skip
    report = pretrain_base(
        corpus,
        tmp_path / "llava",
        tmp_path / "clip",
        settings,
        ProgressConfig(every_steps=0, every_seconds=0),
    )
    assert report["records"] == 16 + 16 // minicoin.LANGUAGE_EVERY and report["caption_loss"] > 0
    backbone = load_backbone(
        ModelConfig(llava=str(tmp_path / "llava"), clip=str(tmp_path / "clip"), device="cpu")
    )
    assert backbone.clip_vision is None  # LLaVA's tower is the pretrained CLIP's: one vision pass
    assert backbone.num_image_tokens == (minicoin.SIZE // 8) ** 2
    assert json.loads((tmp_path / "llava" / "pretraining.json").read_text())["settings"]["hidden"] == 32


def test_the_generic_corpus_holds_grounding_weight_grounding_images_per_other_kind(tmp_path):
    """`benchmark.generic_grounding_weight` k: k box-grounding images for one of each other kind; 1 keeps the
    corpus the even cycle it was."""
    weight = 3
    size = 2 * (len(minicoin.TASKS) - 1 + weight)  # two whole cycles
    folder = minicoin.generic_corpus(
        tmp_path / "weighted", size=size, seed=0, test_size=5, grounding_weight=weight
    )
    records = [r for r in json.loads((folder / "train.json").read_text()) if r.get("image")]
    # blur_query's images are boxed too, as "the red thing"
    grounding = [r for r in records if "box of the" in json.dumps(r) and " thing" not in json.dumps(r)]
    assert len(records) == size and len(grounding) == 2 * weight
    even = minicoin.generic_corpus(tmp_path / "even", size=size, seed=0, test_size=5)
    default = minicoin.generic_corpus(
        tmp_path / "default", size=size, seed=0, test_size=5, grounding_weight=1
    )
    assert (even / "train.json").read_bytes() == (default / "train.json").read_bytes()
