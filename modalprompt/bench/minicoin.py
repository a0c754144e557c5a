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

`generic_corpus` writes captions of the same visual world in one generic wording, for pretraining a base
model that knows the world but not the tasks' instruction formats.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from modalprompt.files import atomic_write_text

COLORS = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 210), "yellow": (225, 200, 30),
          "purple": (130, 50, 170), "orange": (240, 130, 20)}  # fmt: skip
SHAPES = ("circle", "square", "triangle", "diamond")
WORDS = ("cat", "sun", "box", "map", "pen", "cup", "hat", "key")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIZE = 48  # image side in pixels
TASKS = ("shape_choice", "sign_reading", "digit_class", "color_attribute", "blur_query", "dot_count",
         "box_grounding")  # fmt: skip
GENERIC_INSTRUCTION = "Describe the image."
FACT_PREFIX = "Short answer:"  # generic questions: "Short answer: color of circle?"
REPEAT_PREFIX = "Repeat:"  # generic text-only records: "Repeat: unanswerable" -> "unanswerable"
LANGUAGE_EVERY = 3  # one text-only record per this many image records in the generic corpus


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
        (("shape", shape), ("color", color), ("initial of the shape", shape[0].upper())),
    )


def sign_reading(rng: random.Random, _: dict) -> Sample:
    word = rng.choice(WORDS)
    image = _canvas(rng, (245, 235, 170))
    draw = ImageDraw.Draw(image)
    draw.rectangle((4, 14, SIZE - 4, SIZE - 14), outline=(90, 60, 20), width=2)
    font = ImageFont.load_default()
    x = rng.randint(10, 16)
    draw.text((x, 17), word, fill=(20, 20, 20), font=font)
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
                  str(label), f"a handwritten {NUMBER_WORDS[label]}", {}, (("digit", str(label)),))  # fmt: skip


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
                  tuple((f"color of {shapes[k]}", colors[k]) for k in range(2)))  # fmt: skip


def blur_query(rng: random.Random, _: dict) -> Sample:
    question = "Can you tell me what color this thing is? If it cannot be answered, say unanswerable."
    if rng.random() < 0.35:
        noise = np.array([[rng.randrange(256) for _ in range(SIZE * 3)] for _ in range(SIZE)], dtype=np.uint8)
        image = Image.fromarray(noise.reshape(SIZE, SIZE, 3), "RGB").filter(ImageFilter.GaussianBlur(1))
        return Sample(
            image, question, "unanswerable", "a blurry photo of nothing", {}, (("thing", "nothing"),)
        )
    color = rng.choice(list(COLORS))
    image = _canvas(rng, (120, 110, 100), jitter=30)
    r = rng.randint(12, 18)
    cx, cy = rng.randint(r, SIZE - r), rng.randint(r, SIZE - r)
    ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLORS[color])
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    return Sample(image, question, color, f"a blurry photo of a {color} thing", {}, (("color", color),))


def dot_count(rng: random.Random, _: dict) -> Sample:
    n = rng.randint(1, 5)
    image = _canvas(rng, (200, 225, 245))
    draw = ImageDraw.Draw(image)
    cells = rng.sample([(x, y) for x in range(3) for y in range(3)], n)
    for x, y in cells:
        cx, cy = 8 + 16 * x + rng.randint(-2, 2), 8 + 16 * y + rng.randint(-2, 2)
        draw.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), fill=(30, 30, 30))
    noun = "dot" if n == 1 else "dots"
    return Sample(
        image, "How many dots are there in the image?", str(n), f"{NUMBER_WORDS[n]} black {noun}", {}
    )


def box_grounding(rng: random.Random, _: dict) -> Sample:
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    image = _canvas(rng, (235, 235, 250))
    col, row = rng.randrange(2), rng.randrange(2)
    half = SIZE // 2
    box = (col * half + 2, row * half + 2, col * half + half - 2, row * half + half - 2)
    _draw_shape(ImageDraw.Draw(image), shape, box, COLORS[color])
    norm = [round(v / SIZE, 2) for v in box]
    where = f"{'top' if row == 0 else 'bottom'} {'left' if col == 0 else 'right'}"
    answer = "[" + ", ".join(f"{v:.2f}" for v in norm) + "]"
    question = ("Please provide the bounding box coordinate of the region this sentence describes: "
                f"the {color} {shape}.")  # fmt: skip
    return Sample(image, question, answer, f"a {color} {shape} in the {where}",
                  {"answer_bbox": answer, "size": [SIZE, SIZE]}, ((f"box of {color} {shape}", answer),))  # fmt: skip


GENERATORS: dict[str, Callable[[random.Random, dict], Sample]] = {
    "shape_choice": shape_choice, "sign_reading": sign_reading, "digit_class": digit_class,
    "color_attribute": color_attribute, "blur_query": blur_query, "dot_count": dot_count,
    "box_grounding": box_grounding,
}  # fmt: skip
SCORERS = {"shape_choice": "option_letter", "sign_reading": "vqa_soft", "digit_class": "contains",
           "color_attribute": "exact_match", "blur_query": "exact_match", "dot_count": "exact_match",
           "box_grounding": "box_iou"}  # fmt: skip


def write_task(out: Path, task: str, train_size: int, test_size: int, seed: int) -> Path:
    """One task folder in CoIN's format: train.json, test.json and images/; JSON files written atomically."""
    rng, state = random.Random(f"{seed}:{task}"), {}
    folder = Path(out) / task
    (folder / "images").mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for i in range(train_size + test_size):
        sample = GENERATORS[task](rng, state)
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


def generic_corpus(out: Path, size: int, seed: int) -> Path:
    """Captions and generic short questions about the same visual world, as multi-turn CoIN train.json
    records: the base model learns the world and to answer briefly, in wordings no task uses."""
    rng, state = random.Random(f"{seed}:generic"), {}
    folder = Path(out)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(size):
        task = TASKS[i % len(TASKS)]
        sample = GENERATORS[task](rng, state)
        name = f"images/generic_{i:05d}.png"
        sample.image.save(folder / name)
        turns = [(GENERIC_INSTRUCTION, sample.caption)] + [
            (f"{FACT_PREFIX} {key}?", value) for key, value in sample.facts
        ]
        rng.shuffle(turns)
        conversation = []
        for j, (question, answer) in enumerate(turns):
            conversation += [{"from": "human", "value": f"<image>\n{question}" if j == 0 else question},
                             {"from": "gpt", "value": answer}]  # fmt: skip
        records.append({"id": f"generic-{i}", "image": name, "conversations": conversation})
    records += _language_records(rng, size // LANGUAGE_EVERY)
    atomic_write_text(folder / "train.json", json.dumps(records, indent=1))
    return folder


def task_vocabulary(seed: int = 0, per_task: int = 40) -> list[str]:
    """The words of the tasks' instructions and answers (what a pretrained LLM would know how to say)."""
    rng, words = random.Random(f"{seed}:vocabulary"), set()
    for task in TASKS:
        state: dict = {}
        for _ in range(per_task):
            sample = GENERATORS[task](rng, state)
            words.update(sample.question.split() + sample.answer.split())
    return sorted(words)


def _language_records(rng: random.Random, count: int) -> list[dict]:
    """Text-only records that ask to repeat a few words: the base model learns to read and to say every
    word of the world's vocabulary (letters, digits, 'unanswerable', box numbers), as a pretrained LLM can.
    No task's instruction is used, so zero-shot answers stay in the generic format."""
    vocabulary, records = task_vocabulary(), []
    for i in range(count):
        phrase = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 3)))
        records.append({"id": f"language-{i}", "conversations": [
            {"from": "human", "value": f"{REPEAT_PREFIX} {phrase}"}, {"from": "gpt", "value": phrase}]})  # fmt: skip
    return records
