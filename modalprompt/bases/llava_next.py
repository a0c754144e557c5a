"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): LLaVA-1.5's CLIP tower, projector and vicuna_v1 template,
with any-resolution tiling: each image is the whole image resized to the tower's size (the base tile) plus
the tiles of its best grid resolution, so its number of LLM tokens depends on its size (the tiles' patches
with the padding cut off, a newline token per row, and the base tile's patches). `image_sizes` travels with
the batch. The image query reuses the base tile's pass through the tower."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from modalprompt.bases.llava import LlavaAdapter
from modalprompt.data.datasets import Batch, ImagePreprocessor, PreparedImage
from modalprompt.errors import BaseModelError


def llava_next_image_tokens(height: int, width: int, config: Any) -> int:
    """LLM tokens of an image of this size, as LlavaNextModel packs its features ('default' strategy: no CLS)."""
    side = config.vision_config.image_size // config.vision_config.patch_size  # patches per tile side
    best_height, best_width = select_best_resolution((height, width), config.image_grid_pinpoints)
    rows = best_height // config.vision_config.image_size * side
    columns = best_width // config.vision_config.image_size * side
    if width / height > columns / rows:  # wider than the grid: padding above and below is cut off
        kept = int(round(height * (columns / width), 7))
        rows -= (rows - kept) // 2 * 2
    else:
        kept = int(round(width * (rows / height), 7))
        columns -= (columns - kept) // 2 * 2
    return side * side + rows * (columns + 1)  # base tile + the tiles' patches with a newline per row


class LlavaNextImages:
    """The model folder's LLaVA-NeXT image processor: (tiles, 3, H, W), the image's size and token count."""

    def __init__(self, processor: Any, config: Any, clip_processor: Any | None):
        self.processor, self.config = processor, config
        self.clip = None if clip_processor is None else ImagePreprocessor(clip_processor)

    def prepare(self, image: Image.Image) -> PreparedImage:
        image = image.convert("RGB")
        out = self.processor(images=image, return_tensors="pt")
        height, width = (int(v) for v in out["image_sizes"][0])
        return PreparedImage(
            out["pixel_values"][0],  # (tiles, 3, H, W): the base tile first
            tokens=llava_next_image_tokens(height, width, self.config),
            image_size=(height, width),
            clip_pixel_values=None if self.clip is None else self.clip(image)[None],
        )

    def tokens_for_size(self, width: int, height: int) -> int:
        return llava_next_image_tokens(height, width, self.config)


class LlavaNextAdapter(LlavaAdapter):
    family = "llava_next"
    model_type = "llava_next"
    model_class = LlavaNextForConditionalGeneration
    reads_clip_pixels = True  # the tiles are not one CLIP input per image

    @classmethod
    def check_folder(cls, folder: Path, config: dict[str, Any]) -> None:
        if config.get("vision_feature_select_strategy", "default") != "default":
            raise BaseModelError(
                f"{folder}/config.json: vision_feature_select_strategy "
                f"{config.get('vision_feature_select_strategy')!r}: LLaVA-NeXT's tiles are packed without CLS "
                "('default') only"
            )
        llm = config.get("text_config", {}).get("model_type", "llama")
        if llm != "llama":  # e.g. llava-v1.6-mistral: its [INST] template is not vicuna_v1
            raise BaseModelError(
                f"{folder}/config.json: a LLaVA-NeXT with a {llm!r} LLM uses its own chat template, not LLaVA-1.5's "
                "vicuna_v1 that this adapter writes: use a Vicuna-based LLaVA-NeXT (llava-v1.6-vicuna-7b/13b)"
            )
        super().check_folder(folder, config)

    @classmethod
    def load_image_processor(cls, folder: Path) -> Any:
        return LlavaNextImageProcessorPil.from_pretrained(folder, local_files_only=True)

    @property
    def fixed_image_tokens(self) -> None:
        return None  # depends on the image's size

    def image_preprocessor(self, image_processor: Any, clip_processor: Any | None) -> LlavaNextImages:
        return LlavaNextImages(image_processor, self.model.config, clip_processor)

    def image_features(self, batch: Batch, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = batch.image_sizes.to(pixels.device)  # (M, 2)
        vision = self.model.model.get_image_features(pixels, sizes, return_dict=True)
        features = torch.cat(vision.pooler_output, dim=0)  # (image tokens of the batch, d)
        config = self.model.config
        tiles = [image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
                 for size in sizes.tolist()]  # fmt: skip
        base_tiles = torch.tensor([0, *tiles[:-1]], device=pixels.device).cumsum(0)  # (M,) each image's first
        pooled = self.model.model.vision_tower.post_layernorm(vision.last_hidden_state[base_tiles, 0])
        return features, pooled
