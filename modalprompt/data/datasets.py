"""CoIN-format data: records, one image preprocessing, the LLaVA-1.5 conversation template, the collator.

The pipeline produces both the LLM tokens and the CLIP text tokens of the instruction, so the model never
decodes and re-tokenises. Train and eval share one image preprocessing: `ImagePreprocessor` (pad to square,
then the processor) for LLaVA-1.5, the base family's own for the others (modalprompt/bases/), each giving a
`PreparedImage`. The encoders here and in chat_template.py share one interface: `encode_conversation`,
`encode_question`, `clip_tokens` and `lead` (the tokens of every sequence that stay before the prompts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from modalprompt.data.validation import (
    ImageChecker,
    Problem,
    load_records,
    validate_eval_records,
    validate_train_records,
)
from modalprompt.errors import DataError

IMAGE_PLACEHOLDER = "<image>"
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
IGNORE_INDEX = -100


@dataclass
class PreparedImage:
    """One image as the base model reads it."""

    # rows the collator concatenates: (1, 3, H, W) for LLaVA-1.5, (tiles, 3, H, W) for LLaVA-NeXT,
    # (patches, C * T * P * P) for Qwen2.5-VL
    pixel_values: torch.Tensor
    tokens: int | None  # LLM positions the image takes; None: the encoder's fixed count
    image_size: tuple[int, int] | None = None  # (H, W) the image had: LLaVA-NeXT's image_sizes
    grid_thw: tuple[int, int, int] | None = None  # Qwen2.5-VL's image_grid_thw
    clip_pixel_values: torch.Tensor | None = None  # (1, 3, h, w) for a separate CLIP vision pass, if needed


class ImagePreprocessor:
    """LLaVA-1.5's 'pad' preprocessing: pad to a square with the processor's mean colour, then resize and
    normalise with the CLIP processor. The single code path for training and evaluation."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.fill = tuple(round(255 * m) for m in processor.image_mean)

    def pad_to_square(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if width == height:
            return image
        side = max(width, height)
        canvas = Image.new("RGB", (side, side), self.fill)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        return canvas

    def __call__(self, image: Image.Image) -> torch.Tensor:  # (3, H, W)
        square = self.pad_to_square(image.convert("RGB"))
        return self.processor(images=square, return_tensors="pt")["pixel_values"][0]

    def prepare(self, image: Image.Image) -> PreparedImage:
        return PreparedImage(self(image)[None], tokens=None)

    def tokens_for_size(self, width: int, height: int) -> int | None:
        """LLM tokens of an image of this size; None: the same for every image (the encoder knows it)."""
        return None


def image_size(root: Path, relative: str) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    with Image.open(root / relative) as image:
        return image.size


def load_image(root: Path, relative: str, where: str) -> Image.Image:
    path = root / relative
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise DataError(f"{where}: field 'image' = {relative!r}: cannot read {path} ({err})") from err


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int] | None
    clip_ids: list[int]
    pixel_values: torch.Tensor | None  # PreparedImage.pixel_values
    key: Any  # record id (train) or question_id (eval)
    image_size: tuple[int, int] | None = None  # PreparedImage's family-specific fields
    grid_thw: tuple[int, int, int] | None = None
    clip_pixel_values: torch.Tensor | None = None


def encoded(
    ids: list[int], labels: list[int] | None, clip_ids: list[int], image: PreparedImage | None, key: Any
) -> Encoded:
    if image is None:
        return Encoded(ids, labels, clip_ids, None, key)
    return Encoded(ids, labels, clip_ids, image.pixel_values, key, image.image_size, image.grid_thw,
                   image.clip_pixel_values)  # fmt: skip


def instruction_clip_tokens(clip_tokenizer, instruction: str, max_length: int) -> list[int]:
    """CLIP tokens of the instruction alone (no placeholder, no template), for the text query f_q."""
    text = instruction.replace(IMAGE_PLACEHOLDER, "").strip()
    return clip_tokenizer(text, truncation=True, max_length=max_length)["input_ids"]


class ConversationEncoder:
    """Tokenises records with the LLaVA-1.5 'vicuna_v1' template; loss only on the answers (and their EOS)."""

    def __init__(
        self, tokenizer, clip_tokenizer, image_token_id: int, num_image_tokens: int, max_length: int
    ):
        self.tokenizer = tokenizer
        self.clip_tokenizer = clip_tokenizer
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.clip_max_length = min(int(getattr(clip_tokenizer, "model_max_length", 77) or 77), 77)

    @property
    def lead(self) -> int:
        """Tokens of every sequence that stay before the prompts: the BOS, if the tokenizer has one."""
        return len(self._start())

    def _tokens(self, text: str, after_eos: bool = False, image_tokens: int | None = None) -> list[int]:
        """LLaVA's `tokenizer_image_token`: the text is split at each <image> and every chunk is tokenised as
        a text of its own (a sentencepiece tokenizer starts each chunk with its '▁', as LLaVA-1.5's slow
        LlamaTokenizer does); each <image> becomes the image's patch tokens (`image_tokens` of them, by
        default the fixed count). `after_eos`: the first chunk follows an EOS, as a later turn does in
        LLaVA's conversation string."""
        ids: list[int] = []
        for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i:
                ids += [self.image_token_id] * (
                    self.num_image_tokens if image_tokens is None else image_tokens
                )
            if not chunk:
                continue
            ids += self._chunk(chunk, after_eos and i == 0)
        return ids

    def _chunk(self, text: str, after_eos: bool) -> list[int]:
        if not after_eos:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        # tokenised behind the EOS, as in LLaVA's whole conversation string: a sentencepiece tokenizer with
        # `legacy: false` gives the text no leading '▁' there, one with `legacy: true` does
        eos = self.tokenizer.eos_token
        return self.tokenizer(eos + text, add_special_tokens=False)["input_ids"][1:]

    def _start(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [] if bos is None else [bos]

    def clip_tokens(self, instruction: str) -> list[int]:
        return instruction_clip_tokens(self.clip_tokenizer, instruction, self.clip_max_length)

    def encode_conversation(
        self, turns: list[tuple[str, str]], image_tokens: int | None = None
    ) -> tuple[list[int], list[int]]:
        """turns: (human, assistant) pairs. Returns input ids and labels (answers + EOS only).

        The ids are LLaVA-1.5's for "{system} USER: {human} ASSISTANT: {answer}</s>USER: ...": each answer is
        tokenised together with its prompt, and the labels start where the prompt's own tokens end (LLaVA's
        instruction length)."""
        ids, labels = self._start(), [IGNORE_INDEX] * len(self._start())
        for i, (human, answer) in enumerate(turns):
            lead = f"{SYSTEM_PROMPT} USER: " if i == 0 else "USER: "
            prompt = f"{lead}{human} ASSISTANT:"
            question = self._tokens(prompt, i > 0, image_tokens)
            whole = [*self._tokens(f"{prompt} {answer}", i > 0, image_tokens), self.tokenizer.eos_token_id]
            ids += whole
            labels += [IGNORE_INDEX] * len(question) + whole[len(question) :]
        if self.image_token_id in ids[self.max_length :]:
            raise DataError(
                f"max_length {self.max_length} cuts through the image tokens: raise training.max_length"
            )
        return ids[: self.max_length], labels[: self.max_length]

    def encode_question(self, question: str, image_tokens: int | None = None) -> list[int]:
        """The evaluation prompt: identical to the training prefix up to 'ASSISTANT:'."""
        return self._start() + self._tokens(
            f"{SYSTEM_PROMPT} USER: {question} ASSISTANT:", False, image_tokens
        )


def conversation_turns(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(human, assistant) pairs of a validated train record."""
    turns = record["conversations"]
    return [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns), 2)]


class _ValidatedRecords(Dataset):
    """The records of one file that passed validation; bad ones stop the job or are skipped and kept
    in `skipped` (each a Problem naming file, record, id and field)."""

    def __init__(self, path: Path, records: list, report, skip_bad: bool):
        if not skip_bad:
            report.raise_if_bad()
        bad = report.bad_indices
        self.path, self.report = path, report
        self.positions = [i for i in range(len(records)) if i not in bad]  # index in the file
        self.records = [records[i] for i in self.positions]
        self.skipped: list[Problem] = report.problems

    def __len__(self) -> int:
        return len(self.records)

    def _where(self, index: int, key: str) -> str:
        return f"{self.path} record {self.positions[index]} ({key} {self.records[index].get(key)!r})"


class TrainDataset(_ValidatedRecords):
    """CoIN train.json: LLaVA conversations, optionally with an image (text-only samples have none)."""

    def __init__(
        self,
        path: Path,
        image_root: Path,
        encoder: ConversationEncoder,
        images: ImagePreprocessor,
        skip_bad: bool = False,
        check_images: bool = True,
    ):
        records = load_records(path)
        report = validate_train_records(records, str(path), ImageChecker(image_root, check_images))
        super().__init__(path, records, report, skip_bad)
        self.image_root, self.encoder, self.images = image_root, encoder, images

    @staticmethod
    def _turns(record: dict) -> list[tuple[str, str]]:
        """The record's turns with exactly one image placeholder in front when it has an image, none when not."""
        turns = conversation_turns(record)
        if not record.get("image"):
            return [(h.replace(IMAGE_PLACEHOLDER, "").strip(), a) for h, a in turns]
        # as LLaVA's preprocess_multimodal: the placeholder moves in front of the stripped text
        first = turns[0][0]
        if IMAGE_PLACEHOLDER in first:
            first = first.replace(IMAGE_PLACEHOLDER, "").strip()
        turns[0] = (f"{IMAGE_PLACEHOLDER}\n{first}", turns[0][1])
        return turns

    def _image_tokens(self, record: dict) -> int | None:
        """The record's image tokens from the image file's header (None: the fixed count, or no image)."""
        if not record.get("image"):
            return None
        return self.images.tokens_for_size(*image_size(self.image_root, record["image"]))

    def lengths(self) -> list[int]:
        """LLM tokens of each sample (image tokens included), without decoding any image."""
        return [
            len(self.encoder.encode_conversation(self._turns(r), self._image_tokens(r))[0])
            for r in self.records
        ]

    def __getitem__(self, index: int) -> Encoded:
        record = self.records[index]
        turns = self._turns(record)
        image = None
        if record.get("image"):
            image = self.images.prepare(
                load_image(self.image_root, record["image"], self._where(index, "id"))
            )
        ids, labels = self.encoder.encode_conversation(turns, None if image is None else image.tokens)
        return encoded(ids, labels, self.encoder.clip_tokens(turns[0][0]), image, record.get("id", index))


class EvalDataset(_ValidatedRecords):
    """CoIN test.json / val.json: question_id, image, text, answer. Generation needs no reference, so
    references (answer_bbox etc.) are checked by `modalprompt validate` and at scoring."""

    def __init__(
        self,
        path: Path,
        image_root: Path,
        encoder: ConversationEncoder,
        images: ImagePreprocessor,
        max_samples: int | None = None,
        skip_bad: bool = False,
        check_images: bool = True,
    ):
        records = load_records(path)
        if isinstance(records, list):
            records = records[:max_samples]
        report = validate_eval_records(records, str(path), ImageChecker(image_root, check_images))
        super().__init__(path, records, report, skip_bad)
        self.image_root, self.encoder, self.images = image_root, encoder, images

    def __getitem__(self, index: int) -> Encoded:
        record = self.records[index]
        question, image = record["text"], None
        if record.get("image"):
            image = self.images.prepare(
                load_image(self.image_root, record["image"], self._where(index, "question_id"))
            )
            if IMAGE_PLACEHOLDER in question:
                question = question.replace(IMAGE_PLACEHOLDER, "").strip()
            question = f"{IMAGE_PLACEHOLDER}\n{question}"  # as CoIN's model_vqa.py builds it
        ids = self.encoder.encode_question(question, None if image is None else image.tokens)
        return encoded(ids, None, self.encoder.clip_tokens(record["text"]), image, record["question_id"])


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, N)
    attention_mask: torch.Tensor  # (B, N)
    labels: torch.Tensor | None  # (B, N), IGNORE_INDEX outside answers
    # the images of the samples that have one, in batch order (M images): (M, 3, H, W) for LLaVA-1.5;
    # every image's tiles (LLaVA-NeXT) or patches (Qwen2.5-VL) one after another for the others
    pixel_values: torch.Tensor | None
    has_image: torch.Tensor  # (B,) bool
    clip_input_ids: torch.Tensor  # (B, C)
    clip_attention_mask: torch.Tensor  # (B, C)
    keys: list[Any]
    image_sizes: torch.Tensor | None = None  # (M, 2) (H, W) per image, LLaVA-NeXT
    image_grid_thw: torch.Tensor | None = None  # (M, 3) per image, Qwen2.5-VL
    clip_pixel_values: torch.Tensor | None = None  # (M, 3, h, w) for a separate CLIP vision pass

    @property
    def answer_tokens(self) -> int:
        """Tokens the CE is computed on (labels after the causal shift)."""
        return 0 if self.labels is None else int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def to(self, device: torch.device) -> Batch:
        move = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**move)


def _pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(r) for r in rows)
    padded = [([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows]
    return torch.tensor(padded, dtype=torch.long)


class Collator:
    """Pads a list of Encoded samples: right padding for training, left padding for generation."""

    def __init__(self, pad_token_id: int, clip_pad_token_id: int, left_pad: bool):
        self.pad, self.clip_pad, self.left = pad_token_id, clip_pad_token_id, left_pad

    def __call__(self, samples: list[Encoded]) -> Batch:
        ids = [s.input_ids for s in samples]
        mask = [[1] * len(s.input_ids) for s in samples]
        labels = (
            None if samples[0].labels is None else _pad([s.labels for s in samples], IGNORE_INDEX, self.left)
        )
        images = [s for s in samples if s.pixel_values is not None]

        def joined(name: str) -> torch.Tensor | None:
            values = [getattr(s, name) for s in images]
            if not values or values[0] is None:
                return None
            return torch.cat(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)

        return Batch(
            input_ids=_pad(ids, self.pad, self.left),
            attention_mask=_pad(mask, 0, self.left),
            labels=labels,
            pixel_values=joined("pixel_values"),
            has_image=torch.tensor([s.pixel_values is not None for s in samples]),
            clip_input_ids=_pad([s.clip_ids for s in samples], self.clip_pad, left=False),
            clip_attention_mask=_pad([[1] * len(s.clip_ids) for s in samples], 0, left=False),
            keys=[s.key for s in samples],
            image_sizes=joined("image_size"),
            image_grid_thw=joined("grid_thw"),
            clip_pixel_values=joined("clip_pixel_values"),
        )
