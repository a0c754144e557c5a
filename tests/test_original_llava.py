"""convert-llava on the checkpoint as it ships: LLaVA-1.5's own token ids, and one message per failure."""

import json
import re
import sys
from pathlib import Path

import pytest
from original_checkpoint import SlowLlama, llava_input_ids, write_original_llava

from modalprompt.bases.backbone import load_backbone
from modalprompt.cli import main
from modalprompt.config import ModelConfig
from modalprompt.data.datasets import SYSTEM_PROMPT, ConversationEncoder

IMAGE_TOKENS = 3  # a short stand-in for the 576 patch tokens; the count does not change the text around them

# Evaluation prompts as CoIN's model_vqa.py builds them ("<image>\n" + the record's text), and a text-only
# ScienceQA question; newlines, repeated spaces, accents, CJK and emoji (byte fallback).
QUESTIONS = [
    "<image>\nWhat is written on the sign?\nAnswer the question using a single word or phrase.",
    "<image>\nTwo  spaces,   three spaces\n\nand a blank line.",
    "<image>\nCafé crème, naïve façade: 東京タワー 😀🚀?",
    "<image>\n  leading spaces and trailing ones  ",
    "Which is a solid?\nA. juice\nB. rock\nAnswer with the option's letter from the given choices directly.",
]
CONVERSATIONS = [
    [("<image>\nWhat is written on the sign?", "stop")],
    [
        ("<image>\nWhere is this?  Answer briefly.", "東京タワー 😀"),
        ("And   now?\nSay it twice.", "Café  crème"),
    ],
    [("Text only: which is a solid?", "B"), ("Why?", "It keeps its shape.")],
]


def _llava_conversation(turns):
    """LLaVA's vicuna_v1 prompt of a whole conversation: "{system} USER: {q} ASSISTANT: {a}</s>USER: ..."."""
    return SYSTEM_PROMPT + " " + "".join(f"USER: {q} ASSISTANT: {a}</s>" for q, a in turns)


@pytest.fixture(scope="module", params=[False, True], ids=["legacy-false", "legacy-true"])
def converted(request, tmp_path_factory, tiny_base):
    """(encoder with the converted tokenizer, LLaVA's slow tokenizer on the same tokenizer.model)."""
    root = tmp_path_factory.mktemp("orig")
    write_original_llava(root / "orig", legacy=request.param)
    assert main(["convert-llava", str(root / "orig"), str(root / "hf"), "--clip", str(tiny_base[1])]) == 0
    backbone = load_backbone(ModelConfig(llava=str(root / "hf"), clip=str(tiny_base[1]), device="cpu"))
    encoder = ConversationEncoder(
        backbone.tokenizer, backbone.clip_tokenizer, backbone.image_token_id, IMAGE_TOKENS, max_length=4096
    )
    return encoder, SlowLlama(root / "orig" / "tokenizer.model", legacy=request.param)


@pytest.mark.parametrize("question", QUESTIONS)
def test_evaluation_prompt_ids_equal_llavas(converted, question):
    encoder, slow = converted
    prompt = f"{SYSTEM_PROMPT} USER: {question} ASSISTANT:"
    assert encoder.encode_question(question) == llava_input_ids(
        slow, prompt, encoder.image_token_id, IMAGE_TOKENS
    )


@pytest.mark.parametrize("turns", CONVERSATIONS, ids=["one-turn", "two-turns-image", "two-turns-text"])
def test_training_ids_and_labels_equal_llavas(converted, turns):
    """The ids are LLaVA's for the whole conversation string; the labels are exactly each answer's tokens in
    that string (those after the tokens of its "... ASSISTANT:" prefix) and its </s>."""
    encoder, slow = converted
    ids, labels = encoder.encode_conversation(turns)
    image, n = encoder.image_token_id, IMAGE_TOKENS
    assert ids == llava_input_ids(slow, _llava_conversation(turns), image, n)
    expected = [-100] * len(ids)
    for k, (question, _) in enumerate(turns):
        before = _llava_conversation(turns[:k]) if k else SYSTEM_PROMPT + " "
        start = len(llava_input_ids(slow, f"{before}USER: {question} ASSISTANT:", image, n))
        end = len(llava_input_ids(slow, _llava_conversation(turns[: k + 1]), image, n))
        expected[start:end] = ids[start:end]
    assert labels == expected
    assert sum(label == encoder.tokenizer.eos_token_id for label in labels) == len(turns)


def test_converted_tokenizer_needs_no_sentencepiece(converted, tmp_path, tiny_base, monkeypatch):
    """Conversion writes tokenizer.json: training and evaluation read it without sentencepiece."""
    write_original_llava(tmp_path / "orig")
    assert (
        main(["convert-llava", str(tmp_path / "orig"), str(tmp_path / "hf"), "--clip", str(tiny_base[1])])
        == 0
    )
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    backbone = load_backbone(ModelConfig(llava=str(tmp_path / "hf"), clip=str(tiny_base[1]), device="cpu"))
    encoder = converted[0]
    assert (
        backbone.tokenizer("Café 😀", add_special_tokens=False)["input_ids"]
        == encoder.tokenizer("Café 😀", add_special_tokens=False)["input_ids"]
    )


# ------------------------------------------------------------------------------------------ failures


def _convert(src: Path, tiny_base, capsys) -> str:
    code = main(["convert-llava", str(src), str(src.parent / "hf"), "--clip", str(tiny_base[1])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (src.parent / "hf").exists()
    return err


def _break(folder: Path, case: str) -> str:
    """Damage a sentencepiece-only, .bin-sharded checkpoint; returns a pattern the message must match."""
    index = folder / "pytorch_model.bin.index.json"
    shard = folder / "pytorch_model-00002-of-00002.bin"
    if case == "no tokenizer":
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink()
        return rf"{folder} has no tokenizer .*copy the checkpoint's tokenizer\.model"
    if case == "damaged tokenizer.model":
        (folder / "tokenizer.model").write_bytes(b"not a model")
        return rf"{folder}/tokenizer\.model is not a sentencepiece model .*download it again"
    if case == "missing shard":
        shard.unlink()
        return r"weight shard\(s\) listed in pytorch_model\.bin\.index\.json are missing \(pytorch_model-00002-of-00002\.bin\): download them again"
    if case == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:1000])
        return rf"cannot read {shard} .*truncated or damaged; download it again"
    if case == "partial shard":  # a whole file, but from another download: tensors the index names are absent
        data = json.loads(index.read_text())
        data["weight_map"]["model.norm.extra"] = shard.name
        index.write_text(json.dumps(data))
        return rf"{shard} lacks 1 tensor\(s\) that pytorch_model\.bin\.index\.json places in it .*download it again"
    if case == "bad index":
        index.write_text('{"weight_map": ')
        return rf"{index} is not a valid weight index .*download it again"
    if case == "no index":
        index.unlink()
        return rf"{folder} holds weight shards .* but no pytorch_model\.bin\.index\.json: download pytorch_model\.bin\.index\.json too"
    if case == "unsupported projector":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "mm_projector_type": "linear"}))
        return rf"{folder}/config\.json: mm_projector_type 'linear' is not supported: .*mlp2x_gelu"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["no tokenizer", "damaged tokenizer.model", "missing shard", "truncated shard", "partial shard",
     "bad index", "no index", "unsupported projector"],
)  # fmt: skip
def test_each_conversion_failure_is_one_message_naming_file_and_fix(tmp_path, tiny_base, capsys, case):
    write_original_llava(tmp_path / "orig")
    pattern = _break(tmp_path / "orig", case)
    assert re.search(pattern, _convert(tmp_path / "orig", tiny_base, capsys))


def test_missing_sentencepiece_is_named_not_a_transformers_traceback(
    tmp_path, tiny_base, capsys, monkeypatch
):
    """Without sentencepiece, transformers falls back to a tiktoken reader and raises; we name the package."""
    write_original_llava(tmp_path / "orig")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    err = _convert(tmp_path / "orig", tiny_base, capsys)
    assert (
        f"reading {tmp_path / 'orig' / 'tokenizer.model'} (a sentencepiece tokenizer) needs sentencepiece==0.2.3"
        in err
    )
    assert "pip install 'sentencepiece==0.2.3'" in err and "make setup" in err
