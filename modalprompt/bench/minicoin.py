"""mini-CoIN: a small continual-instruction benchmark in CoIN's file format, generated offline from a seed.

Seven tasks mirror CoIN's kinds, each with its own image style and instruction wording:

| task | CoIN analogue | answer | scorer |
|---|---|---|---|
| shape_choice | ScienceQA | option letter | option_letter |
| sign_reading | TextVQA | the word on a sign | vqa_soft |
| digit_class | ImageNet | the handwritten digit (scikit-learn's digits) | contains |
| color_attribute | GQA | the colour of the named shape | exact_match |
| blur_query | VizWiz | a colour, or "unanswerable" for a ruined photo | exact_match |
| dot_count | VQAv2 | how many dots | exact_match |
| box_grounding | Grounding | [x1, y1, x2, y2] of the named shape | box_iou |

`generic_corpus` writes what LLaVA-1.5's own instruction data teaches a real base, about the same visual
world and in one generic wording no task uses: captions ("Describe the image."), short answers
("Short answer: color of circle?" -> "the circle is red"), multiple choice answered by a letter (asked first
in its conversation and instead of the fact's short answer, so that only the image answers it), RefCOCO-style
boxes ("Short answer: box of the red circle?" -> "[0.10, 0.20, 0.50, 0.60]"), and text-only records that teach every
word the tasks need. The base knows the world and these skills; each task's prompt must learn the task's
own instruction wording and answer format.

Held out: every task's test set is drawn first (`test_samples`, from its own seed), and no other split and
no corpus record may show an image with the same pixels as any task's test image (drawn again instead); a
test set never shows one image twice; no corpus question shares four words in a row with a task's
instruction (tests/test_minicoin_leaks.py checks the written files).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from modalprompt.data.validation import parse_box
from modalprompt.files import atomic_write_text
from modalprompt.scoring.scorers import score

COLORS = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 210), "yellow": (225, 200, 30),
          "purple": (130, 50, 170), "orange": (240, 130, 20)}  # fmt: skip
SHAPES = ("circle", "square", "triangle", "diamond")
WORDS = ("cat", "sun", "box", "map", "pen", "cup", "hat", "key")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIZE = 48  # image side in pixels
BOX_SIDES = (12, 28)  # box_grounding: width and height in pixels, each drawn from this range
SIGN_FONT_SIZE = 18  # sign_reading: letters about 13 px high, legible to 8-pixel patches
TASKS = ("shape_choice", "sign_reading", "digit_class", "color_attribute", "blur_query", "dot_count",
         "box_grounding")  # fmt: skip
GROUNDING = "box_grounding"  # the kind of image the corpus can hold more of (generic_corpus)
GENERIC_INSTRUCTION = "Describe the image."
FACT_PREFIX = "Short answer:"  # generic questions: "Short answer: color of circle?"
REPEAT_PREFIX = "Repeat:"  # generic text-only records: "Repeat: cat unanswerable" -> "cat unanswerable"
NUMERAL_QUESTION = "in digits"  # text-only: "Short answer: three in digits?" -> "three is 3"
LIST_QUESTION = "label of"  # text-only: "Short answer: label of cat?\nA. red\nB. cat\n..." -> "B"
LANGUAGE_EVERY = 3  # one text-only record per this many image records in the generic corpus
LANGUAGE_KINDS = ("repeat", "list", "numeral")  # text-only records cycle through these
# facts also asked as multiple choice (a letter answers), and facts whose short answer is a phrase: a
# bare word or numeral there would answer sign_reading and digit_class before their prompts are learned
# (the colour of a named shape is phrased too, "the circle is red", for color_attribute)
CHOICES = {"shape": SHAPES, "color": tuple(COLORS), "word": WORDS, "digit": tuple("0123456789"),
           "number of dots": tuple("12345")}  # fmt: skip
# a fact of CHOICES is asked as multiple choice this often, else as a short answer (never both)
CHOICE_SHARE = 0.5
PHRASED = {
    "word": lambda word: f"the word {word}",
    "digit": lambda digit: f"the digit {NUMBER_WORDS[int(digit)]}",
}
MAX_DRAWS = 100  # draws per held-out image before giving up (a generator with too few distinct images)


@dataclass
class Sample:
    image: Image.Image
    question: str  # the task's instruction wording
    answer: str
    caption: str  # a generic description of the image (for pretraining the base model)
    extra: dict
    facts: tuple[tuple[str, str], ...] = ()  # generic short questions and answers (for pretraining)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x1 + x2) // 2, y1), (x2, y2), (x1, y2)], fill=fill)
    else:
        draw.polygon(
            [((x1 + x2) // 2, y1), (x2, (y1 + y2) // 2), ((x1 + x2) // 2, y2), (x1, (y1 + y2) // 2)],
            fill=fill,
        )


def _canvas(rng: random.Random, base: tuple[int, int, int], jitter: int = 12) -> Image.Image:
    color = tuple(max(0, min(255, c + rng.randint(-jitter, jitter))) for c in base)
    return Image.new("RGB", (SIZE, SIZE), color)


def shape_choice(rng: random.Random, _: dict) -> Sample:
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    image = _canvas(rng, (250, 250, 245))
    m = rng.randint(6, 12)
    _draw_shape(ImageDraw.Draw(image), shape, (m, m, SIZE - m, SIZE - m), COLORS[color])
    options = "\n".join(f"{letter}. {s}" for letter, s in zip("ABCD", SHAPES, strict=True))
    question = (f"Which shape is in the picture?\n{options}\n"
                "Answer with the option's letter from the given choices directly.")  # fmt: skip
    return Sample(
        image,
        question,
        "ABCD"[SHAPES.index(shape)],
        f"a {color} {shape}",
        {},
        (("shape", shape), ("color", color)),
    )


def sign_reading(rng: random.Random, _: dict) -> Sample:
    word = rng.choice(WORDS)
    image = _canvas(rng, (245, 235, 170))
    draw = ImageDraw.Draw(image)
    draw.rectangle((3, 10, SIZE - 3, SIZE - 10), outline=(90, 60, 20), width=2)
    font = ImageFont.load_default(size=SIGN_FONT_SIZE)  # Pillow's bundled font: no file needed
    x = rng.randint(5, SIZE - 5 - int(draw.textlength(word, font=font)))
    draw.text((x, rng.randint(11, 14)), word, fill=(20, 20, 20), font=font)
    answers = [word] * 10
    return Sample(image, "What is written on the sign? Answer the question using a single word or phrase.", word,
                  f"a sign with the word {word}", {"answers": answers}, (("word", word),))  # fmt: skip


def digit_class(rng: random.Random, state: dict) -> Sample:
    digits = state.setdefault("digits", _load_digits())
    index = rng.randrange(len(digits["target"]))
    pixels = (255 - digits["images"][index] * 16).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "L").resize((SIZE, SIZE), Image.NEAREST).convert("RGB")
    label = int(digits["target"][index])
    return Sample(image, "What number is shown in this image? Answer with the number written in digits.",
                  str(label), f"a handwritten {NUMBER_WORDS[label]}", {},
                  (("digit", str(label)),))  # fmt: skip


def _load_digits() -> dict:
    from sklearn.datasets import load_digits  # ships in the scikit-learn wheel: no download

    data = load_digits()
    return {"images": data.images, "target": data.target}


def color_attribute(rng: random.Random, _: dict) -> Sample:
    shapes = rng.sample(SHAPES, 2)
    colors = rng.sample(list(COLORS), 2)
    image = _canvas(rng, (200, 200, 200))
    draw = ImageDraw.Draw(image)
    _draw_shape(draw, shapes[0], (3, 12, 22, 31), COLORS[colors[0]])
    _draw_shape(draw, shapes[1], (26, 12, 45, 31), COLORS[colors[1]])
    asked = rng.randrange(2)
    return Sample(image, f"What color is the {shapes[asked]}?", colors[asked],
                  f"a {colors[0]} {shapes[0]} and a {colors[1]} {shapes[1]}", {},
                  tuple((f"color of {shapes[k]}", f"the {shapes[k]} is {colors[k]}") for k in range(2)))  # fmt: skip


def blur_query(rng: random.Random, _: dict) -> Sample:
    question = "Can you tell me what color this thing is? If it cannot be answered, say unanswerable."
    if rng.random() < 0.35:
        noise = np.array([[rng.randrange(256) for _ in range(SIZE * 3)] for _ in range(SIZE)], dtype=np.uint8)
        image = Image.fromarray(noise.reshape(SIZE, SIZE, 3), "RGB").filter(ImageFilter.GaussianBlur(1))
        return Sample(
            image,
            question,
            "unanswerable",
            "a blurry photo of nothing",
            {},
            (("thing", "nothing can be seen"),),
        )
    color = rng.choice(list(COLORS))
    image = _canvas(rng, (120, 110, 100), jitter=30)
    r = rng.randint(12, 18)
    cx, cy = rng.randint(r, SIZE - r), rng.randint(r, SIZE - r)
    ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLORS[color])
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    box = _box_text((cx - r, cy - r, cx + r, cy + r))
    return Sample(image, question, color, f"a blurry photo of a {color} thing", {},
                  (("color", color), (f"box of the {color} thing", box)))  # fmt: skip


def dot_count(rng: random.Random, _: dict) -> Sample:
    n = rng.randint(1, 5)
    image = _canvas(rng, (200, 225, 245))
    draw = ImageDraw.Draw(image)
    cells = rng.sample([(x, y) for x in range(3) for y in range(3)], n)
    for x, y in cells:
        cx, cy = 8 + 16 * x + rng.randint(-2, 2), 8 + 16 * y + rng.randint(-2, 2)
        draw.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), fill=(30, 30, 30))
    noun = "dot" if n == 1 else "dots"
    return Sample(image, "How many dots are there in the image?", str(n), f"{NUMBER_WORDS[n]} black {noun}", {},
                  (("number of dots", str(n)),))  # fmt: skip


def _box_text(box: tuple[int, int, int, int]) -> str:
    """LLaVA-1.5's (RefCOCO's) box format: [x1, y1, x2, y2] as fractions of the side, two decimals."""
    return "[" + ", ".join(f"{min(max(v, 0), SIZE) / SIZE:.2f}" for v in box) + "]"


def box_grounding(rng: random.Random, _: dict) -> Sample:
    """One shape anywhere, of any width and height in BOX_SIDES: the box is continuous, not a few choices."""
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    image = _canvas(rng, (235, 235, 250))
    w, h = rng.randint(*BOX_SIDES), rng.randint(*BOX_SIDES)
    x1, y1 = rng.randint(1, SIZE - 1 - w), rng.randint(1, SIZE - 1 - h)
    box = (x1, y1, x1 + w, y1 + h)
    _draw_shape(ImageDraw.Draw(image), shape, box, COLORS[color])
    answer = _box_text(box)
    thirds = ("top", "middle", "bottom"), ("left", "middle", "right")
    row, col = (min(2, 3 * (a + b) // (2 * SIZE)) for a, b in ((y1, y1 + h), (x1, x1 + w)))
    where = "center" if row == col == 1 else f"{thirds[0][row]} {thirds[1][col]}"
    size = "small" if w * h < (sum(BOX_SIDES) / 2) ** 2 else "large"
    question = ("Please provide the bounding box coordinate of the region this sentence describes: "
                f"the {color} {shape}.")  # fmt: skip
    return Sample(image, question, answer, f"a {size} {color} {shape} in the {where}",
                  {"answer_bbox": answer, "size": [SIZE, SIZE]},
                  ((f"where is the {color} {shape}", f"in the {where}"), (f"size of the {shape}", size),
                   (f"box of the {color} {shape}", answer)))  # fmt: skip


GENERATORS: dict[str, Callable[[random.Random, dict], Sample]] = {
    "shape_choice": shape_choice, "sign_reading": sign_reading, "digit_class": digit_class,
    "color_attribute": color_attribute, "blur_query": blur_query, "dot_count": dot_count,
    "box_grounding": box_grounding,
}  # fmt: skip
SCORERS = {"shape_choice": "option_letter", "sign_reading": "vqa_soft", "digit_class": "contains",
           "color_attribute": "exact_match", "blur_query": "exact_match", "dot_count": "exact_match",
           "box_grounding": "box_iou"}  # fmt: skip


ANSWER_SPACE: dict[str, tuple[str, ...]] = {  # every bare answer each task can have (boxes: any four numbers)
    "shape_choice": tuple("ABCD"), "sign_reading": WORDS, "digit_class": tuple("0123456789"),
    "color_attribute": tuple(COLORS), "blur_query": (*COLORS, "unanswerable"),
    "dot_count": tuple("12345"), "box_grounding": (),
}  # fmt: skip


def pixel_hash(image: Image.Image) -> str:
    """Identity of an image's pixels (what a PNG of it decodes to)."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def _draw(task: str, rng: random.Random, state: dict, excluded: set[str]) -> tuple[Sample, str]:
    """The next sample of `task` whose pixels are not in `excluded`."""
    for _ in range(MAX_DRAWS):
        sample = GENERATORS[task](rng, state)
        key = pixel_hash(sample.image)
        if key not in excluded:
            return sample, key
    raise ValueError(f"mini-CoIN {task}: no new image in {MAX_DRAWS} draws; lower benchmark.test_size")


@functools.cache
def test_samples(seed: int, test_size: int) -> dict[str, list[tuple[Sample, str]]]:
    """Every task's test set, drawn first and from its own seed (independent of train and corpus sizes):
    each image differs from every earlier test image of any task. The other splits and the corpus leave
    all of these out."""
    sets, seen = {}, set()
    for task in TASKS:
        rng, state, drawn = random.Random(f"{seed}:{task}:test"), {}, []
        for _ in range(test_size):
            sample, key = _draw(task, rng, state, seen)
            seen.add(key)
            drawn.append((sample, key))
        sets[task] = drawn
    return sets


def held_out(seed: int, test_size: int) -> set[str]:
    """Pixel hashes of every task's test images."""
    return {key for drawn in test_samples(seed, test_size).values() for _, key in drawn}


def answers_in_a_task_format(answer: str, about_an_image: bool) -> list[str]:
    """The tasks whose scorer would take `answer` as one of their answers (any four numbers: a box). A
    text-only answer is no answer about an image; there `contains` (a substring rule) counts only when the
    whole answer is bare, so that phrases such as "cat 3" can teach the digits."""
    tasks = [t for t in TASKS if t == "box_grounding" and parse_box(answer) is not None]
    for task, space in ANSWER_SPACE.items():
        scorer = SCORERS[task]
        if scorer == "contains" and not about_an_image:
            scorer = "exact_match"
        if any(score(scorer, answer, [r] * 10 if scorer == "vqa_soft" else r) for r in space):
            tasks.append(task)
    return tasks


def write_task(out: Path, task: str, train_size: int, test_size: int, seed: int) -> Path:
    """One task folder in CoIN's format: train.json, test.json and images/; JSON files written atomically.
    The test set is `test_samples`' one; train images are drawn apart from every task's test images."""
    rng, state, excluded = random.Random(f"{seed}:{task}:train"), {}, held_out(seed, test_size)
    folder = Path(out) / task
    (folder / "images").mkdir(parents=True, exist_ok=True)
    train, test = [], []
    samples = [_draw(task, rng, state, excluded)[0] for _ in range(train_size)]
    samples += [sample for sample, _ in test_samples(seed, test_size)[task]]
    for i, sample in enumerate(samples):
        name = f"images/{task}_{i:05d}.png"
        sample.image.save(folder / name)
        if i < train_size:
            train.append({"id": f"{task}-{i}", "image": name, "conversations": [
                {"from": "human", "value": f"<image>\n{sample.question}"},
                {"from": "gpt", "value": sample.answer}]})  # fmt: skip
        else:
            test.append({"question_id": f"{task}-{i}", "image": name, "text": sample.question,
                         "answer": sample.answer, **sample.extra})  # fmt: skip
    atomic_write_text(folder / "test.json", json.dumps(test, indent=1))
    atomic_write_text(folder / "train.json", json.dumps(train, indent=1))
    return folder


def generic_corpus(out: Path, size: int, seed: int, test_size: int, grounding_weight: int = 1) -> Path:
    """Captions, short answers, multiple choice and boxes about the same visual world, as multi-turn CoIN
    train.json records in one generic wording no task uses (module docstring). No image is one of the
    tasks' test images (`test_size` of them per task, from `seed`). Image records cycle through the tasks'
    kinds of image, `grounding_weight` of the grounding kind (one shape anywhere: its box, position and
    size) for one of each other kind."""
    rng, state, excluded = random.Random(f"{seed}:generic"), {}, held_out(seed, test_size)
    folder = Path(out)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    kinds = [task for task in TASKS for _ in range(grounding_weight if task == GROUNDING else 1)]
    records = []
    for i in range(size):
        task = kinds[i % len(kinds)]
        sample, _ = _draw(task, rng, state, excluded)
        name = f"images/generic_{i:05d}.png"
        sample.image.save(folder / name)
        turns, choices = [(GENERIC_INSTRUCTION, sample.caption)], []
        for key, value in sample.facts:
            if key in CHOICES and rng.random() < CHOICE_SHARE:
                choices.append(_choice(rng, key, value))
            else:
                turns.append((f"{FACT_PREFIX} {key}?", PHRASED[key](value) if key in PHRASED else value))
        rng.shuffle(turns)
        turns = choices + turns  # first: no earlier turn holds the answer to copy, only the image does
        conversation = []
        for j, (question, answer) in enumerate(turns):
            conversation += [{"from": "human", "value": f"<image>\n{question}" if j == 0 else question},
                             {"from": "gpt", "value": answer}]  # fmt: skip
        records.append({"id": f"generic-{i}", "image": name, "conversations": conversation})
    records += _language_records(rng, size // LANGUAGE_EVERY)
    atomic_write_text(folder / "train.json", json.dumps(records, indent=1))
    return folder


def _choice(rng: random.Random, key: str, value: str) -> tuple[str, str]:
    """A generic multiple-choice turn (A-OKVQA-like, LLaVA-1.5's own data): four options in random order,
    answered by the letter of `value`."""
    options = [value, *rng.sample([c for c in CHOICES[key] if c != value], 3)]
    rng.shuffle(options)
    listed = "\n".join(f"{letter}. {option}" for letter, option in zip("ABCD", options, strict=True))
    return f"{FACT_PREFIX} {key}, pick one?\n{listed}", "ABCD"[options.index(value)]


def vocabulary_by_task(seed: int = 0, per_task: int = 40) -> dict[str, list[str]]:
    """Each task's words of its instructions and answers (what a pretrained LLM would know how to say)."""
    rng, words = random.Random(f"{seed}:vocabulary"), {}
    for task in TASKS:
        state: dict = {}
        said = set()
        for _ in range(per_task):
            sample = GENERATORS[task](rng, state)
            said.update(sample.question.split() + sample.answer.split())
        words[task] = sorted(said)
    return words


def task_vocabulary(seed: int = 0, per_task: int = 40) -> list[str]:
    """The words of all tasks' instructions and answers."""
    return sorted({w for words in vocabulary_by_task(seed, per_task).values() for w in words})


def _language_records(rng: random.Random, count: int) -> list[dict]:
    """Text-only records, no image, in turn (LANGUAGE_KINDS): "Repeat:" a phrase of two to four words, so
    that the base model learns to say every word of the world's vocabulary (letters, digits,
    'unanswerable', box numbers) as a pretrained LLM can; reading a labelled list of four things, in random
    order (its label, "B"); and a number word's numeral ("three is 3"). A Repeat phrase is never an answer
    that a task would score as its own (`answers_in_a_task_format`), and no record holds a task's
    instruction. Each Repeat word comes from a task drawn first, so the many box numbers do not crowd out
    the other words."""
    vocabulary, records = vocabulary_by_task(), []
    things = (*SHAPES, *COLORS, *WORDS, *NUMBER_WORDS)
    for i in range(count):
        kind = LANGUAGE_KINDS[i % len(LANGUAGE_KINDS)]
        if kind == "numeral":
            n = rng.randrange(len(NUMBER_WORDS))
            human, answer = (
                f"{FACT_PREFIX} {NUMBER_WORDS[n]} {NUMERAL_QUESTION}?",
                f"{NUMBER_WORDS[n]} is {n}",
            )
        elif kind == "list":
            listed = rng.sample(things, 4)
            asked = rng.randrange(4)
            options = "\n".join(f"{letter}. {thing}" for letter, thing in zip("ABCD", listed, strict=True))
            human = f"{FACT_PREFIX} {LIST_QUESTION} {listed[asked]}?\n{options}"
            answer = "ABCD"[asked]
        else:
            answer = ""
            while not answer or answers_in_a_task_format(answer, about_an_image=False):
                answer = " ".join(rng.choice(vocabulary[rng.choice(TASKS)]) for _ in range(rng.randint(2, 4)))
            human = f"{REPEAT_PREFIX} {answer}"
        records.append({"id": f"language-{i}", "conversations": [
            {"from": "human", "value": human}, {"from": "gpt", "value": answer}]})  # fmt: skip
    return records
