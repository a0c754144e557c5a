"""The one-time conversion of the original LLaVA-1.5 layout (`LlavaLlamaForCausalLM`, as in
`liuhaotian/llava-v1.5-7b`, read by bases/original.py) to the llava-hf layout that
`LlavaForConditionalGeneration` loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from modalprompt.bases.backbone import IMAGE_TOKEN, read_model_config, weight_files
from modalprompt.bases.original import load_original_tokenizer, read_original_weights
from modalprompt.errors import BaseModelError

_SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}
_PROJECTOR = {"mlp2x_gelu": "gelu"}


def convert_llava(src: Path, dst: Path, clip_dir: Path) -> Path:
    """Convert an original LLaVA-1.5 checkpoint to the llava-hf layout in `dst` (written atomically).

    The vision tower comes from `clip_dir` (the user's local CLIP), never from the path recorded in the
    checkpoint's config. `<image>` (and `<pad>` if missing) are added to the vocabulary; their new rows are
    the mean of the existing rows, so logits over the original vocabulary are unchanged.
    """
    config = read_model_config(src, "llava")
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
    if not weight_files(clip_dir):
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
    if read_model_config(clip_dir, "clip").get("model_type") != "clip":
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
