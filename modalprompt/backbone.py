"""The frozen base models, loaded from local folders only: LLaVA (llava-hf layout) and CLIP.

Also the one-time conversion of the original LLaVA-1.5 layout (`LlavaLlamaForCausalLM`, as in
`liuhaotian/llava-v1.5-7b`) to the llava-hf layout that `LlavaForConditionalGeneration` loads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import safetensors
import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerBase,
)

from modalprompt.config import Attention, DType, ModelConfig
from modalprompt.errors import BaseModelError
from modalprompt.original_llava import load_original_tokenizer, read_original_weights

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


def _read_config(folder: Path, what: str) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise BaseModelError(
            f"{what} folder {folder} has no config.json: point model.{what} at a saved model folder"
        )
    return json.loads(path.read_text())


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def fingerprint_folder(folder: Path) -> str:
    """A cheap identity of a saved model: its config plus, per safetensors file, the size, the header
    (tensor names, dtypes, shapes, offsets) and three 64 KiB samples of the data. Hashing every byte of
    a 7B model would take a minute; this separates different models and different conversions."""
    digest = hashlib.sha256()
    digest.update(json.dumps(json.loads((folder / "config.json").read_text()), sort_keys=True).encode())
    for path in _weight_files(folder):
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
    config = _read_config(folder, "llava")
    if "LlavaLlamaForCausalLM" in config.get("architectures", []) or "mm_projector_type" in config:
        raise BaseModelError(
            f"{folder} is in the original LLaVA layout (LlavaLlamaForCausalLM); convert it once with "
            f"`modalprompt convert-llava {folder} CONVERTED_DIR --clip CLIP_DIR` and set model.llava to CONVERTED_DIR"
        )
    if config.get("model_type") != "llava":
        raise BaseModelError(
            f"{folder}/config.json has model_type {config.get('model_type')!r}, expected 'llava'"
        )
    if not _weight_files(folder):
        raise BaseModelError(f"{folder} has no *.safetensors weights: save the model with save_pretrained")


def load_backbone(cfg: ModelConfig) -> Backbone:
    """Load LLaVA and CLIP from local folders (never a hub), frozen, on the configured device and dtype."""
    llava_dir, clip_dir = Path(cfg.llava), Path(cfg.clip)
    check_llava_folder(llava_dir)
    clip_config = _read_config(clip_dir, "clip")
    if clip_config.get("model_type") != "clip":
        raise BaseModelError(
            f"{clip_dir}/config.json has model_type {clip_config.get('model_type')!r}, expected 'clip'"
        )
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    attention = resolve_attention(cfg.attention, device)

    if not _weight_files(clip_dir):
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


# ---------------------------------------------------------------- conversion of the original layout

_SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}
_PROJECTOR = {"mlp2x_gelu": "gelu"}


def convert_llava(src: Path, dst: Path, clip_dir: Path) -> Path:
    """Convert an original LLaVA-1.5 checkpoint to the llava-hf layout in `dst` (written atomically).

    The vision tower comes from `clip_dir` (the user's local CLIP), never from the path recorded in the
    checkpoint's config. `<image>` (and `<pad>` if missing) are added to the vocabulary; their new rows are
    the mean of the existing rows, so logits over the original vocabulary are unchanged.
    """
    config = _read_config(src, "llava")
    if "mm_projector_type" not in config:
        raise BaseModelError(f"{src}/config.json has no mm_projector_type: not an original LLaVA checkpoint")
    projector = config["mm_projector_type"]
    if projector not in _PROJECTOR:
        raise BaseModelError(
            f"{src}/config.json: mm_projector_type {projector!r} is not supported: convert-llava converts "
            f"LLaVA-1.5's projector ({', '.join(_PROJECTOR)}), as in liuhaotian/llava-v1.5-7b"
        )
    strategy = config.get("mm_vision_select_feature", "patch")
    if strategy not in _SELECT_STRATEGY:
        raise BaseModelError(
            f"{src}/config.json: mm_vision_select_feature {strategy!r} is not supported (supported: "
            f"{', '.join(_SELECT_STRATEGY)})"
        )
    clip_config = _read_clip_config(clip_dir)
    tower_width = clip_config.vision_config.hidden_size
    if config.get("mm_hidden_size", tower_width) != tower_width:
        raise BaseModelError(
            f"{src}/config.json: mm_hidden_size {config['mm_hidden_size']} does not fit the CLIP in {clip_dir} "
            f"(vision width {tower_width}): give --clip the CLIP the checkpoint was trained with "
            f"({config.get('mm_vision_tower', 'see mm_vision_tower')})"
        )

    tokenizer = load_original_tokenizer(src)
    added = {"additional_special_tokens": [IMAGE_TOKEN]} if IMAGE_TOKEN not in tokenizer.get_vocab() else {}
    if tokenizer.pad_token is None:
        added["pad_token"] = "<pad>"
    tokenizer.add_special_tokens(added)

    text_keys = {k: v for k, v in config.items() if not k.startswith("mm_") and k not in _ORIGINAL_ONLY_KEYS}
    text_config = LlamaConfig(**{**text_keys, "architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    old_vocab = text_config.vocab_size
    text_config.vocab_size = max(old_vocab, len(tokenizer))
    llava_config = LlavaConfig(
        vision_config=clip_config.vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act=_PROJECTOR[projector],
        vision_feature_layer=config.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=_SELECT_STRATEGY[strategy],
        pad_token_id=tokenizer.pad_token_id,
    )
    weights = read_original_weights(src)
    state = _map_original_keys(weights, old_vocab, text_config.vocab_size)
    if not _weight_files(clip_dir):
        raise BaseModelError(f"{clip_dir} has no *.safetensors weights: download the CLIP model's weights")
    clip_vision = CLIPModel.from_pretrained(clip_dir, local_files_only=True).vision_model
    if not any(k.startswith("model.vision_tower.") for k in state):
        state.update({f"model.vision_tower.{k}": v for k, v in clip_vision.state_dict().items()})

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [
        k for k in missing if k != "lm_head.weight" or "model.language_model.embed_tokens.weight" not in state
    ]
    if missing or unexpected:
        raise BaseModelError(
            f"{src}: weights do not fit LLaVA: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    processor = CLIPImageProcessorPil.from_pretrained(clip_dir, local_files_only=True)
    processor.save_pretrained(tmp)
    (tmp / "conversion.json").write_text(
        json.dumps(
            {"source": str(src.resolve()), "clip": str(clip_dir.resolve()), "source_vocab_size": old_vocab}
        )
    )
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst


def _read_clip_config(clip_dir: Path) -> CLIPConfig:
    if _read_config(clip_dir, "clip").get("model_type") != "clip":
        raise BaseModelError(
            f"{clip_dir}/config.json is not a CLIP model: give --clip the folder of openai/clip-vit-large-patch14-336"
        )
    return CLIPConfig.from_pretrained(clip_dir, local_files_only=True)


# Keys of the original config that describe LLaVA-fork training, not the Llama text model.
_ORIGINAL_ONLY_KEYS = {
    "architectures",
    "model_type",
    "image_aspect_ratio",
    "freeze_mm_mlp_adapter",
    "tune_mm_mlp_adapter",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "use_mm_proj",
    "transformers_version",
    "_name_or_path",
}


def _map_original_keys(
    weights: dict[str, torch.Tensor], old_vocab: int, new_vocab: int
) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in weights.items():
        if key.startswith("model.mm_projector."):
            index = key.split(".")[2]
            layer = {"0": "linear_1", "2": "linear_2"}[index]
            state[f"model.multi_modal_projector.{layer}.{key.split('.')[-1]}"] = tensor
        elif key.startswith("model.vision_tower.vision_tower.vision_model."):
            state[
                "model.vision_tower." + key.removeprefix("model.vision_tower.vision_tower.vision_model.")
            ] = tensor
        elif key.startswith("model."):
            state["model.language_model." + key.removeprefix("model.")] = tensor
        elif key == "lm_head.weight":
            state[key] = tensor
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key in state and new_vocab > old_vocab:
            rows = state[key]
            mean = rows.float().mean(dim=0, keepdim=True).to(rows.dtype)
            state[key] = torch.cat([rows, mean.expand(new_vocab - old_vocab, -1)], dim=0)
    return state
