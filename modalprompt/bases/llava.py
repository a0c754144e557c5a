"""LLaVA-1.5 (`LlavaForConditionalGeneration`, the llava-hf layout): a CLIP vision tower, a fixed number of
image tokens per image (the patch grid of the padded-square image), LLaVA-1.5's vicuna_v1 template, the
prompts right after BOS, plain 1D positions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration

from modalprompt.bases.adapter import BaseAdapter, text_positions
from modalprompt.data.datasets import Batch, ConversationEncoder, ImagePreprocessor
from modalprompt.errors import BaseModelError


class LlavaAdapter(BaseAdapter):
    family = "llava"
    model_type = "llava"
    model_class = LlavaForConditionalGeneration
    reads_clip_pixels = False  # a separate CLIP reads LLaVA's own pixels (the same CLIP preprocessing)

    @classmethod
    def check_folder(cls, folder: Path, config: dict[str, Any]) -> None:
        if "LlavaLlamaForCausalLM" in config.get("architectures", []) or "mm_projector_type" in config:
            raise BaseModelError(
                f"{folder} is in the original LLaVA layout (LlavaLlamaForCausalLM); convert it once with "
                f"`modalprompt convert-llava {folder} CONVERTED_DIR --clip CLIP_DIR` and set model.llava to CONVERTED_DIR"
            )
        super().check_folder(folder, config)

    @classmethod
    def load_image_processor(cls, folder: Path) -> Any:
        return CLIPImageProcessorPil.from_pretrained(folder, local_files_only=True)

    def clip_like_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    @property
    def fixed_image_tokens(self) -> int:
        """The patch grid, plus CLS with the 'full' feature strategy."""
        vision = self.model.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return patches + (1 if self.model.config.vision_feature_select_strategy == "full" else 0)

    def conversation_encoder(
        self, tokenizer: Any, clip_tokenizer: Any, max_length: int
    ) -> ConversationEncoder:
        return ConversationEncoder(
            tokenizer, clip_tokenizer, self.model.config.image_token_id, self.fixed_image_tokens, max_length
        )

    def image_preprocessor(self, image_processor: Any, clip_processor: Any | None) -> ImagePreprocessor:
        return ImagePreprocessor(image_processor)

    def image_features(self, batch: Batch, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vision = self.model.model.get_image_features(pixels, return_dict=True)
        features = torch.cat(vision.pooler_output, dim=0)  # (M * patches, d)
        # the CLS of the tower's last layer through its post-layernorm: CLIP's pooled image output
        pooled = self.model.model.vision_tower.post_layernorm(vision.last_hidden_state[:, 0])
        return features, pooled

    def positions(
        self, batch: Batch, attention_mask: torch.Tensor, lead: int, prompt_length: int
    ) -> torch.Tensor:
        return text_positions(attention_mask)  # (B, N + P): they run on through the prompt
