"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): its own vision encoder (native-resolution patches,
`image_grid_thw`, merged 2 x 2 into LLM tokens), its chat template (ChatML), and 3D rotary positions
(mrope: temporal, height, width). The prompts go after the template's system turn; their positions run on
from the system turn on all three axes, and every later position (image grid included) moves on by the
prompt's length, as the model's own `get_rope_index` numbers a sequence with those tokens in place. The
vision encoder is not CLIP's, so the image query always comes from the separate CLIP model, on the CLIP
folder's preprocessing of the image (padded to a square, as LLaVA-1.5 sees it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

from modalprompt.bases.adapter import BaseAdapter
from modalprompt.data.chat_template import ChatTemplateEncoder
from modalprompt.data.datasets import Batch, ImagePreprocessor, PreparedImage
from modalprompt.errors import BaseModelError

IMAGE_PAD = "<|image_pad|>"  # the placeholder Qwen's chat template writes for an image


class Qwen2_5_VLImages:
    """The model folder's Qwen2-VL image processor: (patches, C * T * P * P), the grid and token count; and
    the CLIP folder's pixels of the same image for the image query."""

    def __init__(self, processor: Any, clip_processor: Any | None):
        self.processor = processor
        self.merge = processor.merge_size**2  # patches per LLM token
        self.clip = None if clip_processor is None else ImagePreprocessor(clip_processor)

    def prepare(self, image: Image.Image) -> PreparedImage:
        image = image.convert("RGB")
        out = self.processor(images=image, return_tensors="pt")
        grid = tuple(int(v) for v in out["image_grid_thw"][0])
        return PreparedImage(
            out["pixel_values"],
            tokens=grid[0] * grid[1] * grid[2] // self.merge,
            grid_thw=grid,
            clip_pixel_values=None if self.clip is None else self.clip(image)[None],
        )

    def tokens_for_size(self, width: int, height: int) -> int:
        return self.processor.get_number_of_image_patches(height, width) // self.merge


def positions_with_prompt(
    positions: torch.Tensor,  # (3, B, N) 3D positions of the sequences without the prompt
    attention_mask: torch.Tensor,  # (B, N)
    lead: int,
    prompt_length: int,
) -> torch.Tensor:
    """(3, B, N + P): the prompt rows after each sequence's first `lead` attended tokens take the next
    positions on all three axes (one past the largest before them; 0 at the start), and every later position
    moves on by P. Padding keeps position 0, as in `get_rope_index`."""
    batch, length = attention_mask.shape
    first = attention_mask.long().argmax(dim=-1, keepdim=True)  # (B, 1) first attended token
    start = first + lead  # (B, 1) first prompt row
    pos = torch.arange(length + prompt_length, device=positions.device).expand(batch, -1)  # (B, N + P)
    in_prompt = (pos >= start) & (pos < start + prompt_length)
    source = torch.where(pos < start, pos, pos - prompt_length).clamp(0, length - 1)  # (B, N + P)
    moved = positions.gather(2, source[None].expand(3, -1, -1))  # (3, B, N + P)
    moved = torch.where(pos >= start + prompt_length, moved + prompt_length, moved)
    before = positions.gather(2, (start - 1).clamp(min=0)[None].expand(3, -1, -1)).amax(0)  # (B, 1)
    prompt_start = torch.where(start > first, before + 1, 0)  # (B, 1)
    out = torch.where(in_prompt, prompt_start + pos - start, moved)
    mask = torch.where(in_prompt, 1, attention_mask.gather(1, source))
    return torch.where(mask.bool(), out, 0)


class Qwen2_5_VLAdapter(BaseAdapter):
    family = "qwen2_5_vl"
    model_type = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration

    @classmethod
    def load_image_processor(cls, folder: Path) -> Any:
        return Qwen2VLImageProcessorPil.from_pretrained(folder, local_files_only=True)

    def check_tokenizer(self, tokenizer: Any, folder: Path) -> None:
        """The chat template comes with the tokenizer (chat_template.jinja or tokenizer_config.json), or from
        the processor's chat_template.json of older folders."""
        if tokenizer.chat_template is None and (folder / "chat_template.json").is_file():
            tokenizer.chat_template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
        if tokenizer.chat_template is None:
            raise BaseModelError(
                f"{folder} has no chat template (chat_template.jinja, tokenizer_config.json's chat_template or "
                "chat_template.json): copy the model folder again with its tokenizer and processor files"
            )
        if IMAGE_PAD not in tokenizer.get_vocab():
            raise BaseModelError(
                f"{folder}: the tokenizer has no {IMAGE_PAD} token: not a Qwen2.5-VL tokenizer"
            )

    def conversation_encoder(
        self, tokenizer: Any, clip_tokenizer: Any, max_length: int
    ) -> ChatTemplateEncoder:
        return ChatTemplateEncoder(tokenizer, clip_tokenizer, IMAGE_PAD, max_length)

    def image_preprocessor(self, image_processor: Any, clip_processor: Any | None) -> Qwen2_5_VLImages:
        return Qwen2_5_VLImages(image_processor, clip_processor)

    def image_features(self, batch: Batch, pixels: torch.Tensor) -> tuple[torch.Tensor, None]:
        vision = self.model.model.get_image_features(pixels, batch.image_grid_thw, return_dict=True)
        return torch.cat(vision.pooler_output, dim=0), None  # (image tokens of the batch, d); not CLIP

    def positions(
        self, batch: Batch, attention_mask: torch.Tensor, lead: int, prompt_length: int
    ) -> torch.Tensor:
        ids = batch.input_ids
        image_tokens = (ids == self.model.config.image_token_id).int()  # mm_token_type_ids: 1 = image
        grid = None if batch.image_grid_thw is None else batch.image_grid_thw.to(ids.device)
        positions, _ = self.model.model.get_rope_index(
            ids, image_tokens, image_grid_thw=grid, attention_mask=batch.attention_mask
        )
        return positions_with_prompt(positions, batch.attention_mask, lead, prompt_length)
