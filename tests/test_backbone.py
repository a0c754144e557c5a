"""Loading base models from local folders, and converting the original LLaVA-1.5 layout."""

import re
import shutil
from pathlib import Path

import pytest
import torch
from original_checkpoint import write_original_llava
from transformers import CLIPModel

from modalprompt.bases.backbone import (
    BaseModelError,
    check_llava_folder,
    fingerprint_folder,
    load_backbone,
    resolve_attention,
    resolve_dtype,
)
from modalprompt.cli import main
from modalprompt.config import Attention, DType, ModelConfig


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
def test_convert_original_layout_keeps_logits(tmp_path, tiny_base, weights):
    """The checkpoint as liuhaotian/llava-v1.5-7b ships it (sentencepiece tokenizer.model only, sharded
    weights with their index) converts, and the converted model gives the original weights' logits."""
    clip_dir = tiny_base[1]
    llm, projector, old_vocab = write_original_llava(tmp_path / "orig", weights=weights, shards=2)
    assert not (tmp_path / "orig" / "tokenizer.json").exists()
    with pytest.raises(BaseModelError, match="convert-llava"):
        check_llava_folder(tmp_path / "orig")
    assert main(["convert-llava", str(tmp_path / "orig"), str(tmp_path / "hf"), "--clip", str(clip_dir)]) == 0

    backbone = load_backbone(ModelConfig(llava=str(tmp_path / "hf"), clip=str(clip_dir), device="cpu"))
    assert backbone.clip_vision is None  # the tower came from this CLIP folder
    image_id = backbone.image_token_id
    assert backbone.tokenizer.convert_ids_to_tokens(image_id) == "<image>" and image_id >= old_vocab

    n_image = backbone.num_image_tokens
    text_ids = backbone.tokenizer("What color is the picture?", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[1, *text_ids[:3], *([image_id] * n_image), *text_ids[3:]]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        converted = backbone.llava(input_ids=ids, pixel_values=pixels).logits[..., :old_vocab]
        # the reference: the original weights composed by hand, as the LLaVA fork runs them
        vision = CLIPModel.from_pretrained(clip_dir).vision_model
        features = projector(vision(pixels, output_hidden_states=True).hidden_states[-2][:, 1:])
        embeds = llm.get_input_embeddings()(ids.clamp(max=old_vocab - 1))
        embeds[ids == image_id] = features[0]
        reference = llm(inputs_embeds=embeds).logits
    assert torch.allclose(converted, reference, atol=1e-5)


def test_load_rejects_folders_that_are_not_models(tmp_path, tiny_base):
    with pytest.raises(BaseModelError, match=r"has no config\.json"):
        load_backbone(ModelConfig(llava=str(tmp_path), clip=str(tiny_base[1])))
    with pytest.raises(BaseModelError, match="expected 'clip'"):
        load_backbone(ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[0])))


def test_fingerprint_is_stable_and_separates_models(tiny_base, tmp_path):
    from modalprompt.bench.tiny import build_tiny_base

    assert fingerprint_folder(tiny_base[0]) == fingerprint_folder(tiny_base[0])
    other, _ = build_tiny_base(tmp_path / "llava", tmp_path / "clip", seed=1)
    assert fingerprint_folder(other) != fingerprint_folder(tiny_base[0])


def test_dtype_and_attention_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype(DType.AUTO, cpu) == torch.float32
    assert resolve_dtype(DType.AUTO, cuda) == torch.bfloat16
    assert resolve_dtype(DType.FLOAT16, cpu) == torch.float16
    assert resolve_attention(Attention.AUTO, cpu) == "sdpa"
    assert resolve_attention(Attention.EAGER, cuda) == "eager"


def test_frozen_base_in_configured_dtype(tiny_base):
    backbone = load_backbone(
        ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[1]), device="cpu", dtype=DType.BFLOAT16)
    )
    assert backbone.llava.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in backbone.llava.parameters())
    assert backbone.llava.config._attn_implementation == "sdpa"


def _copy_base(tiny_base, tmp_path):
    llava, clip = (shutil.copytree(folder, tmp_path / folder.name) for folder in tiny_base)
    return Path(llava), Path(clip)


def test_missing_or_truncated_weights_are_named(tiny_base, tmp_path):
    llava, clip = _copy_base(tiny_base, tmp_path)
    weights = next(llava.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a copy that stopped half way
    with pytest.raises(
        BaseModelError, match=rf"cannot load the base model from {llava}.*copy or save the model again"
    ):
        load_backbone(ModelConfig(llava=str(llava), clip=str(clip), device="cpu"))
    weights.unlink()
    with pytest.raises(BaseModelError, match=rf"{llava} has no \*.safetensors weights"):
        load_backbone(ModelConfig(llava=str(llava), clip=str(clip), device="cpu"))
    shutil.copytree(tiny_base[0], llava, dirs_exist_ok=True)
    next(clip.glob("*.safetensors")).unlink()
    with pytest.raises(BaseModelError, match=rf"{clip} has no \*.safetensors weights"):
        load_backbone(ModelConfig(llava=str(llava), clip=str(clip), device="cpu"))


def test_nothing_is_unpickled():
    """Only safetensors and JSON are read: no pickle import, every torch.load with weights_only=True."""
    for path in (Path(__file__).resolve().parents[1] / "modalprompt").rglob("*.py"):
        source = path.read_text()
        assert "import pickle" not in source and "pickle.load" not in source, path.name
        for call in re.findall(r"torch\.load\(([^)]*)\)", source):
            assert "weights_only=True" in call, f"{path.name}: torch.load({call})"
