"""The frozen base models, loaded from local folders only: the base model of one family (LLaVA-1.5 in the
llava-hf layout, LLaVA-NeXT or Qwen2.5-VL; one adapter each, bases/adapter.py) and CLIP. A folder in the
original LLaVA-1.5 layout is converted once first (bases/convert.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

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

from modalprompt import plugins
from modalprompt.bases.adapter import BaseAdapter
from modalprompt.bases.llava import LlavaAdapter
from modalprompt.bases.llava_next import LlavaNextAdapter
from modalprompt.bases.qwen2_5_vl import Qwen2_5_VLAdapter
from modalprompt.config import Attention, DType, ModelConfig, ModelFamily
from modalprompt.errors import BaseModelError, PluginError

IMAGE_TOKEN = "<image>"

# model.family -> its adapter: the built-in families (a module in bases/ and its line here), then the
# installed packages' (group modalprompt.bases, modalprompt/plugins.py)
ADAPTERS: dict[str, type[BaseAdapter]] = {
    a.family: a for a in (LlavaAdapter, LlavaNextAdapter, Qwen2_5_VLAdapter)
}


def _add_installed_adapters() -> None:
    """Each entry point names a BaseAdapter subclass whose `family` is the entry point's name; a family or
    model_type that another adapter has already is refused (model.family: auto finds a family by it)."""
    for entry_point in plugins.installed(plugins.BASES):
        adapter = plugins.load(entry_point)
        where = plugins.describe(entry_point)
        if not (isinstance(adapter, type) and issubclass(adapter, BaseAdapter)):
            raise PluginError(f"{where} is not a subclass of BaseAdapter (modalprompt/bases/adapter.py)")
        if adapter.family != entry_point.name:
            raise PluginError(
                f"{where}: its adapter's family is {adapter.family!r}: name the entry point after it"
            )
        for other in ADAPTERS.values():
            if other.family == adapter.family or other.model_type == adapter.model_type:
                raise PluginError(f"{where}: family {adapter.family!r} (model_type {adapter.model_type!r}) clashes "
                                  f"with {other.__module__}.{other.__name__} (family {other.family!r}, model_type "
                                  f"{other.model_type!r})")  # fmt: skip
        ADAPTERS[adapter.family] = adapter


_add_installed_adapters()


@dataclass
class Backbone:
    """Everything frozen: the base model (named `llava` for every family), CLIP's text tower and projections,
    tokenizers and image preprocessing, and the family's adapter (`base`) that the wrapper and the stage
    functions go through."""

    llava: LlavaForConditionalGeneration  # or the LlavaNext / Qwen2_5_VL model of the family
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
    base: BaseAdapter | None = None  # the family's adapter around `llava`; None: LLaVA-1.5's
    # the CLIP folder's image processor, when a separate CLIP vision pass needs pixels of its own
    clip_image_processor: Any | None = None

    def __post_init__(self):
        if self.base is None:
            self.base = LlavaAdapter(self.llava)

    @property
    def family(self) -> str:
        return self.base.family

    @property
    def image_token_id(self) -> int:
        return self.llava.config.image_token_id

    @property
    def num_image_tokens(self) -> int | None:
        """LLM tokens per image (LLaVA-1.5: the patch grid, plus CLS with the 'full' feature strategy); None for
        families where it depends on the image (the image preprocessing gives each image's count)."""
        return self.base.fixed_image_tokens

    def conversation_encoder(self, max_length: int) -> Any:
        """The family's template (encode_conversation, encode_question, clip_tokens, lead)."""
        return self.base.conversation_encoder(self.tokenizer, self.clip_tokenizer, max_length)

    def image_preprocessor(self) -> Any:
        """The family's image preprocessing: PIL image -> PreparedImage, the same in training and evaluation."""
        return self.base.image_preprocessor(self.image_processor, self.clip_image_processor)

    @cached_property
    def prompt_lead(self) -> int:
        """Tokens of every sequence that stay before the prompts: BOS, or the template's system turn."""
        return self.conversation_encoder(max_length=8).lead


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


def detect_family(folder: Path, family: ModelFamily | str = ModelFamily.AUTO) -> str:
    """The family of the model folder: from its config.json's model_type, which must agree with a configured
    family. The original LLaVA-1.5 layout (model_type 'llava', LlavaLlamaForCausalLM) is 'llava'."""
    config = read_model_config(folder, "llava")
    model_type = config.get("model_type")
    found = next((name for name, adapter in ADAPTERS.items() if adapter.model_type == model_type), None)
    if found is None and "mm_projector_type" in config:
        found = LlavaAdapter.family  # an original LLaVA layout: its check names the conversion
    if family != ModelFamily.AUTO and found != str(family):
        raise BaseModelError(
            f"model.family is {family!s} but {folder}/config.json has model_type {model_type!r}: set "
            f"model.family to {found or 'auto'}, or point model.llava at a {family!s} folder"
        )
    if found is None:
        known = ", ".join(f"{a.model_type!r} ({a.family})" for a in ADAPTERS.values())
        raise BaseModelError(
            f"{folder}/config.json has model_type {model_type!r}, expected one of {known}; "
            "docs/contributing.md ('Add a base model family') says how to add a family"
        )
    return found


def _image_processor(loader: Any, folder: Path) -> Any:
    """`loader.load_image_processor` (an adapter) or `loader.from_pretrained` (a processor class) on the folder,
    with a missing preprocessor_config.json named."""
    if not (folder / "preprocessor_config.json").is_file():
        raise BaseModelError(
            f"{folder} has no preprocessor_config.json (the image processor): copy the model folder again with "
            "its processor files"
        )
    if hasattr(loader, "load_image_processor"):
        return loader.load_image_processor(folder)
    return loader.from_pretrained(folder, local_files_only=True)


def check_llava_folder(folder: Path, family: ModelFamily | str = ModelFamily.AUTO) -> str:
    """Refuse a folder the configured family cannot load, naming the fix; returns its family."""
    found = detect_family(folder, family)
    ADAPTERS[found].check_folder(folder, read_model_config(folder, "llava"))
    return found


def load_backbone(cfg: ModelConfig) -> Backbone:
    """Load the base model and CLIP from local folders (never a hub), frozen, on the configured device and
    dtype, behind the adapter of the model's family."""
    llava_dir, clip_dir = Path(cfg.llava), Path(cfg.clip)
    adapter_class = ADAPTERS[check_llava_folder(llava_dir, cfg.family)]
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
        llava = adapter_class.model_class.from_pretrained(
            llava_dir, dtype=dtype, attn_implementation=attention, local_files_only=True
        )
        clip = CLIPModel.from_pretrained(clip_dir, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError, safetensors.SafetensorError) as err:
        raise BaseModelError(
            f"cannot load the base model from {llava_dir} and {clip_dir}: {type(err).__name__}: {err} "
            "(weights missing, truncated or not matching config.json: copy or save the model again)"
        ) from err
    adapter = adapter_class(llava)
    tower = adapter.clip_like_tower()
    shared_tower = tower is not None and _same_vision_weights(clip.vision_model, tower)
    tokenizer = AutoTokenizer.from_pretrained(llava_dir, local_files_only=True)
    adapter.check_tokenizer(tokenizer, llava_dir)
    clip_pixels = not shared_tower and adapter.reads_clip_pixels
    backbone = Backbone(
        llava=llava,
        clip_text=clip.text_model,
        text_projection=clip.text_projection,
        visual_projection=clip.visual_projection,
        clip_vision=None if shared_tower else clip.vision_model,
        tokenizer=tokenizer,
        clip_tokenizer=AutoTokenizer.from_pretrained(clip_dir, local_files_only=True),
        image_processor=_image_processor(adapter_class, llava_dir),
        fingerprint=base_fingerprint(llava_dir, clip_dir),
        device=device,
        dtype=dtype,
        base=adapter,
        clip_image_processor=_image_processor(CLIPImageProcessorPil, clip_dir) if clip_pixels else None,
    )
    del clip  # keep only the parts above; the vision tower is dropped when LLaVA's is the same
    for module in (backbone.llava, backbone.clip_text, backbone.text_projection, backbone.visual_projection):
        module.requires_grad_(False).eval().to(device)
    if backbone.clip_vision is not None:
        backbone.clip_vision.requires_grad_(False).eval().to(device)
    return backbone
