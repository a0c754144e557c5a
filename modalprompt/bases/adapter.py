"""The base-model interface: what the wrapper and the stage functions ask of a model family.

One adapter per transformers class (bases/llava.py, llava_next.py, qwen2_5_vl.py) answers, for its family:
how its folder loads and is checked; how an image becomes pixels and a number of LLM tokens, and a
conversation becomes ids (its template); how many tokens of every sequence stay before the prompts (after
BOS, or after the template's system turn); and, on the loaded model, how text is embedded, how image
features are computed, which position ids a sequence with the prompts in place has, and how the model runs
(logits, greedy generation) on embeddings with the prompts in place. Nothing outside these modules names a
family's classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from modalprompt.errors import BaseModelError

if TYPE_CHECKING:
    from modalprompt.data.datasets import Batch


class BaseAdapter(ABC):
    """A loaded base model of one family. Subclasses set the class attributes and implement the methods."""

    family: ClassVar[str]  # the value of model.family
    model_type: ClassVar[str]  # the model_type in the folder's config.json
    model_class: ClassVar[type[nn.Module]]  # the transformers class that loads the folder
    # whether a separate CLIP vision pass (when the base's own tower is not the CLIP folder's) needs pixels
    # of its own from the CLIP folder's image processor (the base's pixels are not CLIP's input)
    reads_clip_pixels: ClassVar[bool] = True

    def __init__(self, model: nn.Module):
        self.model = model

    # ------------------------------------------------------------------ the folder

    @classmethod
    def check_folder(cls, folder: Path, config: dict[str, Any]) -> None:
        """Refuse a folder this family cannot load, naming the fix (before any weight is read)."""
        if not sorted(folder.glob("*.safetensors")):
            raise BaseModelError(
                f"{folder} has no *.safetensors weights: save the model with save_pretrained"
            )

    @classmethod
    @abstractmethod
    def load_image_processor(cls, folder: Path) -> Any:
        """The image processor saved in the model folder."""

    def check_tokenizer(self, tokenizer: Any, folder: Path) -> None:  # noqa: B027 (optional hook)
        """Refuse a tokenizer the family's template cannot use (e.g. no chat template); nothing by default."""

    def clip_like_tower(self) -> nn.Module | None:
        """The base's vision tower when it is a CLIP vision model (then, if its weights are the CLIP folder's,
        the image query reuses its pass); None when the base has a vision encoder of its own kind."""
        return None

    # ------------------------------------------------------------------ the data pipeline

    @property
    def fixed_image_tokens(self) -> int | None:
        """LLM tokens per image when every image takes the same number; None when it varies per image."""
        return None

    @abstractmethod
    def conversation_encoder(self, tokenizer: Any, clip_tokenizer: Any, max_length: int) -> Any:
        """The family's template: an encoder with encode_conversation, encode_question, clip_tokens, lead."""

    @abstractmethod
    def image_preprocessor(self, image_processor: Any, clip_processor: Any | None) -> Any:
        """PIL image -> PreparedImage (pixels, token count, family fields); `clip_processor` is given when a
        separate CLIP vision pass needs pixels of its own."""

    # ------------------------------------------------------------------ the model

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, N, d)
        return self.model.get_input_embeddings()(input_ids)

    @abstractmethod
    def image_features(self, batch: Batch, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features (image tokens of the batch, d) in sequence order, pooled (M, h) or None): `pooled` is the
        CLIP-like tower's pooled output of each image's whole view (post-layernorm CLS), for the image query."""

    @abstractmethod
    def positions(
        self, batch: Batch, attention_mask: torch.Tensor, lead: int, prompt_length: int
    ) -> torch.Tensor:
        """Position ids of the batch's sequences with `prompt_length` prompt rows inserted after each
        sequence's first `lead` attended tokens; `attention_mask` (B, N + P) is the mask with them in place."""

    def logits(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """(B, S, V) logits of the model on embeddings with the prompts in place."""
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions).logits

    def generate(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        max_new_tokens: int,
        pad_token_id: int,
        eos_token_id: int,
    ) -> torch.Tensor:
        """(B, new) greedy tokens with a KV cache, from left-padded embeddings with the prompts in place;
        the positions run on by one per new token."""
        return self.model.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
        )


def text_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) positions that count the attended tokens (0 on left padding): those of a text-only LLM."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
