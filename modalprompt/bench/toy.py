"""The toy task sequence: three CoIN-format tasks with Pillow-drawn images (colours, shapes, dot counts),
written offline and deterministically. No torch: the Snakefile reads the task names from here."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
TOY_TASKS = ("colors", "shapes", "count")


def _draw(kind: str, value: str, rng: random.Random, size: int = 48) -> Image.Image:
    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (size + rng.randint(0, 16), size), background)
    draw = ImageDraw.Draw(image)
    if kind == "colors":
        draw.rectangle([6, 6, image.width - 6, size - 6], fill=COLORS[value])
    elif kind == "shapes":
        box = [10, 10, 38, 38]
        if value == "circle":
            draw.ellipse(box, fill=(20, 20, 20))
        elif value == "square":
            draw.rectangle(box, fill=(20, 20, 20))
        else:
            draw.polygon([(24, 8), (40, 40), (8, 40)], fill=(20, 20, 20))
    else:
        for _ in range(int(value)):
            x, y = rng.randint(4, image.width - 10), rng.randint(4, size - 10)
            draw.ellipse([x, y, x + 6, y + 6], fill=(0, 0, 0))
    return image


QUESTIONS = {
    "colors": ("What color is the picture? Answer with one word.", list(COLORS)),
    "shapes": ("Which shape is shown? Answer with one word.", list(SHAPES)),
    "count": ("How many dots are there? Answer with a number.", ["1", "2", "3", "4"]),
}


def write_toy_tasks(out: Path, seed: int = 0, train_size: int = 24, test_size: int = 8) -> dict[str, Path]:
    """Three CoIN-format tasks (train.json, test.json, images/); returns task name -> folder."""
    rng = random.Random(seed)
    folders = {}
    for name in TOY_TASKS:
        folder = Path(out) / name
        (folder / "images").mkdir(parents=True, exist_ok=True)
        question, answers = QUESTIONS[name]
        train, test = [], []
        for i in range(train_size + test_size):
            answer = answers[i % len(answers)]
            image_name = f"images/{name}_{i:04d}.png"
            _draw(name, answer, rng).save(folder / image_name)
            if i < train_size:
                train.append(
                    {
                        "id": f"{name}-{i}",
                        "image": image_name,
                        "conversations": [
                            {"from": "human", "value": f"<image>\n{question}"},
                            {"from": "gpt", "value": answer},
                        ],
                    }
                )
            else:
                test.append(
                    {"question_id": f"{name}-{i}", "image": image_name, "text": question, "answer": answer}
                )
        (folder / "train.json").write_text(json.dumps(train, indent=1))
        (folder / "test.json").write_text(json.dumps(test, indent=1))
        folders[name] = folder
    return folders
