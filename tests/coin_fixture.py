"""A CoIN-shaped fixture: the eight tasks of CoIN's release, a few records each, in the layout CoIN's scripts
read (playground/Instructions_Original/<Task>/{train,test,val}.json, images under cl_dataset/), with the field
names and answer shapes its evaluation scripts (ETrain/Eval/LLaVA/CoIN/eval_*.py) read:

- ScienceQA: the option letter as `answer`; some questions have no image (no `image` key);
- TextVQA: one `answer` in val.json, and TextVQA's own TextVQA_0.5.1_val.json with 10 `answers` per question;
- ImageNet: a class name; GQA: a word; VizWiz: "unanswerable" among the answers; VQAv2: one `answer`;
- Grounding: `answer_bbox` as the string "[x1, y1, x2, y2]" (normalised to the padded square) and `size`;
- OCR-VQA: titles and authors with capitals and periods.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

INSTRUCTIONS = "playground/Instructions_Original"
SHORT = "Answer the question using a single word or phrase."

# name: (eval split, [(image or None, question text, answer fields of the eval record, train answer)])
TASKS = {
    "ScienceQA": ("test", [
        ("ScienceQA/test/4/image.png", "Which of these states is farthest north?\nA. West Virginia\nB. Louisiana\n"
         "C. Arizona\nD. Oklahoma\nAnswer with the option's letter from the given choices directly.",
         {"answer": "A"}, "A"),
        (None, "Which tense does the sentence use?\nMona will print her name with care.\nA. present tense\n"
         "B. future tense\nC. past tense\nAnswer with the option's letter from the given choices directly.",
         {"answer": "B"}, "B"),
    ]),
    "TextVQA": ("val", [
        ("TextVQA/train_images/0054c91397f2fe05.jpg", f"what is the brand of this camera?\n{SHORT}",
         {"answer": "dakota"}, "dakota"),
        ("TextVQA/train_images/005635e119b9f32f.jpg", f"what does the small white text spell?\n{SHORT}",
         {"answer": "copenhagen"}, "copenhagen"),
    ]),
    "ImageNet": ("test", [
        ("ImageNet/val/n01440764/ILSVRC2012_val_00000293.JPEG", f"What is the object in the image?\n{SHORT}",
         {"answer": "tench"}, "tench"),
        ("ImageNet/val/n01443537/ILSVRC2012_val_00000236.JPEG", f"What is the object in the image?\n{SHORT}",
         {"answer": "goldfish"}, "goldfish"),
    ]),
    "GQA": ("test", [
        ("GQA/images/n161313.jpg", f"Is it overcast?\n{SHORT}", {"answer": "no"}, "no"),
        ("GQA/images/n235859.jpg", f"Who is wearing the dress?\n{SHORT}", {"answer": "woman"}, "woman"),
    ]),
    "VizWiz": ("val", [
        ("VizWiz/val/VizWiz_val_00000000.jpg", "Ok. There is another picture I hope it is a better one.\nWhen the "
         f"provided information is insufficient, respond with 'Unanswerable'.\n{SHORT}",
         {"answer": "unanswerable"}, "unanswerable"),
        ("VizWiz/val/VizWiz_val_00000001.jpg", "Can you tell me what this medicine is please?\nWhen the provided "
         f"information is insufficient, respond with 'Unanswerable'.\n{SHORT}", {"answer": "night time"},
         "night time"),
    ]),
    "Grounding": ("test", [
        ("COCO2014/train2014/COCO_train2014_000000580957.jpg", "Please provide the bounding box coordinate of "
         "the region this sentence describes: man in white on the left.",
         {"answer_bbox": "[0.12, 0.34, 0.56, 0.78]", "size": [640, 427]}, "[0.12, 0.34, 0.56, 0.78]"),
        ("COCO2014/train2014/COCO_train2014_000000216096.jpg", "Please provide the bounding box coordinate of "
         "the region this sentence describes: the giraffe in the back.",
         {"answer_bbox": "[0.59, 0.03, 0.75, 0.24]", "size": [480, 640]}, "[0.59, 0.03, 0.75, 0.24]"),
    ]),
    "VQAv2": ("val", [
        ("COCO2014/val2014/COCO_val2014_000000262148.jpg", f"Where is he looking?\n{SHORT}", {"answer": "down"},
         "down"),
        ("COCO2014/val2014/COCO_val2014_000000393225.jpg", f"How many people are in the image?\n{SHORT}",
         {"answer": "2"}, "2"),
    ]),
    "OCRVQA": ("test", [
        ("OCR-VQA/images/071880542X.jpg", f"Who wrote this book?\n{SHORT}", {"answer": "Dr. Seuss"}, "Dr. Seuss"),
        ("OCR-VQA/images/1565922468.jpg", f"What is the genre of this book?\n{SHORT}",
         {"answer": "Computers & Technology"}, "Computers & Technology"),
    ]),
}  # fmt: skip


def _image(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(path, format="PNG" if path.suffix == ".png" else "JPEG")


def write_coin(root: Path) -> Path:
    """The CoIN release in miniature under `root` (what paths.data points at); returns `root`."""
    for task, (split, records) in TASKS.items():
        folder = root / INSTRUCTIONS / task
        folder.mkdir(parents=True)
        train, evaluation = [], []
        for i, (image, text, answer, train_answer) in enumerate(records):
            question = text if image is None else f"<image>\n{text}"
            sample = {"id": f"{task}-train-{i}", "conversations": [
                {"from": "human", "value": question}, {"from": "gpt", "value": train_answer}]}  # fmt: skip
            record = {"question_id": f"{i + 4}" if task == "ScienceQA" else 34602 + i, "text": text, **answer}
            if image is not None:
                _image(root / "cl_dataset" / image, tuple(answer.get("size", (64, 48))))
                sample["image"] = record["image"] = image
            train.append(sample)
            evaluation.append(record)
        (folder / "train.json").write_text(json.dumps(train, indent=1))
        (folder / f"{split}.json").write_text(json.dumps(evaluation, indent=1))
    textvqa = json.loads((root / INSTRUCTIONS / "TextVQA" / "val.json").read_text())
    annotations = {
        "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
        "data": [{"question_id": r["question_id"], "question": r["text"].split("\n")[0],
                  "answers": [r["answer"]] * 7 + ["unanswerable", "nikon", r["answer"].upper()]} for r in textvqa],
    }  # fmt: skip
    (root / "cl_dataset" / "TextVQA" / "TextVQA_0.5.1_val.json").write_text(json.dumps(annotations))
    return root
