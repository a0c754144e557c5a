"""The frozen base models, loaded from local folders only: LLaVA (llava-hf layout) and CLIP. A folder in the
original LLaVA-1.5 layout is converted once first (bases/convert.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import safetensors
import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPModel,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerBase,
)

from modalprompt.config import Attention, DType, ModelConfig
from modalprompt.errors import BaseModelError

IMAGE_TOKEN = "<image>"


@dataclass
class Backbone:
    """Everything frozen: LLaVA, CLIP's text tower and projections, tokenizers and image preprocessing."""

    llava: LlavaForConditionalGeneration
    clip_text: nn.Module  # CLIP text transformer (returns pooler_output)
    text_projection: nn.Linear
    visual_projection: nn.Linear
    # CLIP's own vision tower, only when its weights differ from LLaVA's tower; None means the image
    # query reuses the vision forward that LLaVA does anyway.
    clip_vision: nn.Module | None
    tokenizer: PreTrainedTokenizerBase
    clip_tokenizer: PreTrainedTokenizerBase
    image_processor: CLIPImageProcessorPil
    fingerprint: str
    device: torch.device
    dtype: torch.dtype

    @property
    def image_token_id(self) -> int:
        return self.llava.config.image_token_id

    @property
    def num_image_tokens(self) -> int:
        """LLM tokens per image: the patch grid, plus CLS with the 'full' feature strategy."""
        vision = self.llava.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return patches + (1 if self.llava.config.vision_feature_select_strategy == "full" else 0)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    if dtype == DType.AUTO:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {DType.FLOAT32: torch.float32, DType.BFLOAT16: torch.bfloat16, DType.FLOAT16: torch.float16}[dtype]


def resolve_attention(attention: Attention, device: torch.device) -> str:
    if attention == Attention.AUTO:
        has_flash = importlib.util.find_spec("flash_attn") is not None
        return "flash_attention_2" if has_flash and device.type == "cuda" else "sdpa"
    return str(attention)


def read_model_config(folder: Path, what: str) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise BaseModelError(
            f"{what} folder {folder} has no config.json: point model.{what} at a saved model folder"
        )
    return json.loads(path.read_text())


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def fingerprint_folder(folder: Path) -> str:
    """A cheap identity of a saved model: its config plus, per safetensors file, the size, the header
    (tensor names, dtypes, shapes, offsets) and three 64 KiB samples of the data. Hashing every byte of
    a 7B model would take a minute; this separates different models and different conversions."""
    digest = hashlib.sha256()
    digest.update(json.dumps(json.loads((folder / "config.json").read_text()), sort_keys=True).encode())
    for path in weight_files(folder):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            header_len = struct.unpack("<Q", f.read(8))[0]
            digest.update(f.read(header_len))
            data_start = 8 + header_len
            for offset in (data_start, (data_start + size) // 2, max(data_start, size - 65536)):
                f.seek(offset)
                digest.update(f.read(65536))
    return digest.hexdigest()[:16]


def base_fingerprint(llava_dir: Path, clip_dir: Path) -> str:
    both = f"{fingerprint_folder(llava_dir)}:{fingerprint_folder(clip_dir)}"
    return hashlib.sha256(both.encode()).hexdigest()[:16]


def _same_vision_weights(clip_vision: nn.Module, llava_tower: nn.Module) -> bool:
    ours, theirs = clip_vision.state_dict(), llava_tower.state_dict()
    if ours.keys() != theirs.keys():
        return False
    return all(
        ours[k].shape == theirs[k].shape and torch.equal(ours[k].float().cpu(), theirs[k].float().cpu())
        for k in ours
    )


def check_llava_folder(folder: Path) -> None:
    config = read_model_config(folder, "llava")
    if "LlavaLlamaForCausalLM" in config.get("architectures", []) or "mm_projector_type" in config:
        raise BaseModelError(
            f"{folder} is in the original LLaVA layout (LlavaLlamaForCausalLM); convert it once with "
            f"`modalprompt convert-llava {folder} CONVERTED_DIR --clip CLIP_DIR` and set model.llava to CONVERTED_DIR"
        )
    if config.get("model_type") != "llava":
        raise BaseModelError(
            f"{folder}/config.json has model_type {config.get('model_type')!r}, expected 'llava'"
        )
    if not weight_files(folder):
        raise BaseModelError(f"{folder} has no *.safetensors weights: save the model with save_pretrained")


def load_backbone(cfg: ModelConfig) -> Backbone:
    """Load LLaVA and CLIP from local folders (never a hub), frozen, on the configured device and dtype."""
    llava_dir, clip_dir = Path(cfg.llava), Path(cfg.clip)
    check_llava_folder(llava_dir)
    clip_config = read_model_config(clip_dir, "clip")
    if clip_config.get("model_type") != "clip":
        raise BaseModelError(
            f"{clip_dir}/config.json has model_type {clip_config.get('model_type')!r}, expected 'clip'"
        )
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    attention = resolve_attention(cfg.attention, device)

    if not weight_files(clip_dir):
        raise BaseModelError(
            f"{clip_dir} has no *.safetensors weights: save the CLIP model with save_pretrained"
        )
    try:
        llava = LlavaForConditionalGeneration.from_pretrained(
            llava_dir, dtype=dtype, attn_implementation=attention, local_files_only=True
        )
        clip = CLIPModel.from_pretrained(clip_dir, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError, safetensors.SafetensorError) as err:
        raise BaseModelError(
            f"cannot load the base model from {llava_dir} and {clip_dir}: {type(err).__name__}: {err} "
            "(weights missing, truncated or not matching config.json: copy or save the model again)"
        ) from err
    shared_tower = _same_vision_weights(clip.vision_model, llava.model.vision_tower)
    backbone = Backbone(
        llava=llava,
        clip_text=clip.text_model,
        text_projection=clip.text_projection,
        visual_projection=clip.visual_projection,
        clip_vision=None if shared_tower else clip.vision_model,
        tokenizer=AutoTokenizer.from_pretrained(llava_dir, local_files_only=True),
        clip_tokenizer=AutoTokenizer.from_pretrained(clip_dir, local_files_only=True),
        image_processor=CLIPImageProcessorPil.from_pretrained(llava_dir, local_files_only=True),
        fingerprint=base_fingerprint(llava_dir, clip_dir),
        device=device,
        dtype=dtype,
    )
    del clip  # keep only the parts above; the vision tower is dropped when LLaVA's is the same
    for module in (backbone.llava, backbone.clip_text, backbone.text_projection, backbone.visual_projection):
        module.requires_grad_(False).eval().to(device)
    if backbone.clip_vision is not None:
        backbone.clip_vision.requires_grad_(False).eval().to(device)
    return backbone
