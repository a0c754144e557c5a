"""Data pipeline: the LLaVA-1.5 template, loss masks, CLIP tokens, one image preprocessing."""

import json

import pytest
import torch
from PIL import Image

from modalprompt.data.datasets import (
    IGNORE_INDEX,
    SYSTEM_PROMPT,
    ConversationEncoder,
    DataError,
    EvalDataset,
    ImagePreprocessor,
    TrainDataset,
)


@pytest.fixture
def encoder(backbone):
    return ConversationEncoder(
        backbone.tokenizer,
        backbone.clip_tokenizer,
        backbone.image_token_id,
        backbone.num_image_tokens,
        max_length=2048,
    )


def test_template_and_labels_only_on_answers(encoder, backbone):
    ids, labels = encoder.encode_conversation([("<image>\nWhat color?", "red"), ("And now?", "blue")])
    tok = backbone.tokenizer
    assert ids[0] == tok.bos_token_id
    assert ids.count(backbone.image_token_id) == backbone.num_image_tokens
    answer_ids = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(answer_ids) == " red</s> blue</s>"
    text = tok.decode([i for i in ids if i != backbone.image_token_id])
    assert (
        text == f"<s>{SYSTEM_PROMPT} USER: \nWhat color? ASSISTANT: red</s>USER: And now? ASSISTANT: blue</s>"
    )


def test_eval_prompt_is_the_training_prefix(encoder):
    ids, labels = encoder.encode_conversation([("<image>\nWhat color?", "red")])
    prompt = encoder.encode_question("<image>\nWhat color?")
    assert ids[: len(prompt)] == prompt and all(lab == IGNORE_INDEX for lab in labels[: len(prompt)])


def test_clip_tokens_are_the_instruction_without_placeholder(encoder, backbone):
    ids = encoder.clip_tokens("<image>\nWhat color is it?")
    assert ids[0] == backbone.clip_tokenizer.bos_token_id and ids[-1] == backbone.clip_tokenizer.eos_token_id
    assert backbone.clip_tokenizer.decode(ids, skip_special_tokens=True) == "what color is it?"
    long = encoder.clip_tokens("word " * 200)
    assert len(long) == 77 and long[-1] == backbone.clip_tokenizer.eos_token_id


def test_max_length_cutting_image_tokens_is_an_error(backbone):
    short = ConversationEncoder(
        backbone.tokenizer,
        backbone.clip_tokenizer,
        backbone.image_token_id,
        backbone.num_image_tokens,
        max_length=20,
    )
    with pytest.raises(DataError, match="cuts through the image tokens"):
        short.encode_conversation([("<image>\nq", "a")])


def test_one_preprocessing_for_train_and_eval(backbone, encoder, tmp_path):
    Image.new("RGB", (60, 30), (200, 10, 10)).save(tmp_path / "wide.png")
    (tmp_path / "train.json").write_text(
        json.dumps(
            [
                {
                    "id": 1,
                    "image": "wide.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nq"},
                        {"from": "gpt", "value": "a"},
                    ],
                }
            ]
        )
    )
    (tmp_path / "test.json").write_text(
        json.dumps([{"question_id": 1, "image": "wide.png", "text": "q", "answer": "a"}])
    )
    images = ImagePreprocessor(backbone.image_processor)
    train = TrainDataset(tmp_path / "train.json", tmp_path, encoder, images)[0]
    test = EvalDataset(tmp_path / "test.json", tmp_path, encoder, images)[0]
    assert torch.equal(train.pixel_values, test.pixel_values)
    square = images.pad_to_square(Image.open(tmp_path / "wide.png"))
    assert square.size == (60, 60) and square.getpixel((0, 0)) == images.fill  # padded with the mean colour
    assert square.getpixel((30, 30)) == (200, 10, 10)
    assert test.input_ids == train.input_ids[: len(test.input_ids)]


def test_text_only_and_multi_turn_records(encoder, tmp_path, backbone):
    (tmp_path / "train.json").write_text(
        json.dumps(
            [
                {
                    "id": "x",
                    "conversations": [
                        {"from": "human", "value": "Hi"},
                        {"from": "gpt", "value": "yes"},
                        {"from": "human", "value": "Again"},
                        {"from": "gpt", "value": "no"},
                    ],
                }
            ]
        )
    )
    sample = TrainDataset(
        tmp_path / "train.json", tmp_path, encoder, ImagePreprocessor(backbone.image_processor)
    )[0]
    assert sample.pixel_values is None and backbone.image_token_id not in sample.input_ids
    assert (
        sum(lab != IGNORE_INDEX for lab in sample.labels)
        == len(encoder._tokens(" yes")) + len(encoder._tokens(" no")) + 2
    )
