"""Tiny local base models, built offline and deterministically: `build_tiny_base` writes a llava-hf folder
and a CLIP folder (random weights, tokenizers trained here, the same vision tower in both) that load through
the production code path; with `family`, a tiny LLaVA-NeXT (the same CLIP tower, any-resolution tiles) or
Qwen2.5-VL (its own vision encoder, a ChatML chat template) instead. Tests, the toy config and the benchmarks
use them (with the toy tasks of toy.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from modalprompt.bench.toy import COLORS, QUESTIONS, SHAPES
from modalprompt.data.datasets import SYSTEM_PROMPT

INIT_RANGE = 0.3  # wide enough that a frozen random LM can express confident answers


def _corpus() -> list[str]:
    words = [SYSTEM_PROMPT, "USER: ASSISTANT: <image>", *COLORS, *SHAPES, *"0123456789"]
    words += [question for question, _ in QUESTIONS.values()]
    return words * 4


def _train_tokenizer(
    specials: list[str], vocab_size: int, lowercase: bool, texts: list[str] | None = None
) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=specials[1] if lowercase else specials[0]))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts or _corpus(), trainer=trainer)
    return tokenizer


def build_llm_tokenizer(llava_hf: bool = True, texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    """Llama-style: <unk>, <s> (BOS, added in front), </s>; the llava-hf layout adds <pad> and <image>
    (the original LLaVA layout has neither: its code splices images in by a negative token index)."""
    extra = ["<pad>", "<image>"] if llava_hf else []
    tok = _train_tokenizer(
        ["<unk>", "<s>", "</s>", *extra], vocab_size=600 if texts else 400, lowercase=False, texts=texts
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    specials = {"pad_token": "<pad>", "extra_special_tokens": ["<image>"]} if llava_hf else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=4096,
        **specials,
    )


def build_clip_tokenizer(texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    """CLIP-style: lower case, wrapped in <|startoftext|> ... <|endoftext|> (the pooler reads EOS)."""
    specials = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    tok = _train_tokenizer(specials, vocab_size=500 if texts else 300, lowercase=True, texts=texts)
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 2), ("<|endoftext|>", 3)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=77,
    )


def tiny_configs(
    vocab_size: int,
    clip_vocab_size: int,
    image_token_id: int,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    vision_hidden: int = 32,
    feature: int = 32,
    image_size: int = 32,
    init_range: float = INIT_RANGE,
    vision_feature_layer: int = -2,
) -> tuple[LlavaConfig, CLIPConfig]:
    """Small LLaVA and CLIP configs: a Llama LLM, a 2-layer CLIP (8-pixel patches) whose text hidden size is the
    feature size, so the `pooled` text feature fits the keys. The tokenizers' special ids are fixed above."""
    vision = {
        "hidden_size": vision_hidden,
        "intermediate_size": 2 * vision_hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": 8,
        "projection_dim": feature,
    }
    clip = CLIPConfig(
        text_config={"vocab_size": clip_vocab_size, "hidden_size": feature, "intermediate_size": 2 * feature,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77,
                     "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3},
        vision_config=vision, projection_dim=feature,
    )  # fmt: skip
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                       max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                       tie_word_embeddings=False, initializer_range=init_range)  # fmt: skip
    llava = LlavaConfig(vision_config=clip.vision_config, text_config=text, image_token_id=image_token_id,
                        vision_feature_layer=vision_feature_layer, vision_feature_select_strategy="default",
                        pad_token_id=3)  # fmt: skip
    return llava, clip


def save_base(
    llava,
    clip,
    tokenizer,
    clip_tokenizer,
    llava_dir: Path,
    clip_dir: Path,
    notes: dict | None = None,
    model_processor=None,
):
    """Write the llava-hf folder and the CLIP folder (with the shared image processor, or `model_processor` in
    the model folder), each under a temporary name renamed at the end, so a killed job leaves no half-written
    model."""
    size = clip.config.vision_config.image_size
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    folders = ((Path(llava_dir), llava, tokenizer, model_processor or processor),
               (Path(clip_dir), clip, clip_tokenizer, processor))  # fmt: skip
    for folder, model, tok, folder_processor in folders:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        folder_processor.save_pretrained(tmp)
        for name, text in (notes or {}).items():
            (tmp / name).write_text(text)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return Path(llava_dir), Path(clip_dir)


def _llava_layout(hidden: int, shape: dict):
    """The tiny LLaVA-layout tokenizers and configs that LLaVA-1.5 and LLaVA-NeXT share."""
    tokenizer, clip_tokenizer = build_llm_tokenizer(), build_clip_tokenizer()
    llava_cfg, clip_cfg = tiny_configs(
        len(tokenizer),
        len(clip_tokenizer),
        tokenizer.convert_tokens_to_ids("<image>"),
        hidden=hidden,
        **shape,
    )
    return tokenizer, clip_tokenizer, llava_cfg, clip_cfg


def build_tiny_base(
    llava_dir: Path, clip_dir: Path, seed: int = 0, hidden: int = 64, family: str = "llava", **shape
) -> tuple[Path, Path]:
    """A random tiny LLaVA and CLIP; LLaVA's vision tower is CLIP's vision model. `shape`: more
    `tiny_configs` sizes (layers, image_size, ...), e.g. for benchmarks at a less tiny size. `family`
    (model.family): llava, llava_next or qwen2_5_vl."""
    if family != "llava":
        return TINY_FAMILIES[family](Path(llava_dir), Path(clip_dir), seed=seed, hidden=hidden, **shape)
    tokenizer, clip_tokenizer, llava_cfg, clip_cfg = _llava_layout(hidden, shape)
    torch.manual_seed(seed)
    clip = CLIPModel(clip_cfg).eval()
    llava = LlavaForConditionalGeneration(llava_cfg).eval()
    llava.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    return save_base(llava, clip, tokenizer, clip_tokenizer, llava_dir, clip_dir)


def build_tiny_llava_next(
    llava_dir: Path, clip_dir: Path, seed: int = 0, hidden: int = 64, **shape
) -> tuple[Path, Path]:
    """A random tiny LLaVA-NeXT and CLIP: LLaVA-1.5's tiny shape, its tower CLIP's vision model, with tiles of
    the tower's size on grids of 1 x 2, 2 x 1 and 2 x 2 tiles (the toy images pick 2 x 2: 5 tiles)."""
    tokenizer, clip_tokenizer, llava_cfg, clip_cfg = _llava_layout(hidden, shape)
    size = llava_cfg.vision_config.image_size
    grids = [[size, 2 * size], [2 * size, size], [2 * size, 2 * size]]
    next_cfg = LlavaNextConfig(vision_config=llava_cfg.vision_config, text_config=llava_cfg.text_config,
                               image_token_id=llava_cfg.image_token_id, image_grid_pinpoints=grids,
                               vision_feature_layer=llava_cfg.vision_feature_layer,
                               vision_feature_select_strategy="default", pad_token_id=3)  # fmt: skip
    torch.manual_seed(seed)
    clip = CLIPModel(clip_cfg).eval()
    model = LlavaNextForConditionalGeneration(next_cfg).eval()
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    processor = LlavaNextImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                           image_grid_pinpoints=grids)  # fmt: skip
    return save_base(model, clip, tokenizer, clip_tokenizer, llava_dir, clip_dir, model_processor=processor)


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]  # fmt: skip

# ChatML as Qwen2.5-VL's template writes it: a default system turn, an image as
# <|vision_start|><|image_pad|><|vision_end|> before the text, each turn closed by <|im_end|> and a newline
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def build_chatml_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen-style: byte-level BPE, no BOS, <|im_end|> ends a turn (EOS), <|endoftext|> pads; the chat template
    above."""
    words = ["You are a helpful assistant.", "system user assistant", *_corpus()]
    tok = _train_tokenizer(QWEN_SPECIALS, vocab_size=420, lowercase=False, texts=words)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        model_max_length=4096)  # fmt: skip
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_qwen2_5_vl(
    llava_dir: Path, clip_dir: Path, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4, **shape
) -> tuple[Path, Path]:
    """A random tiny Qwen2.5-VL (a 2-block vision encoder of 4-pixel patches merged 2 x 2, images resized to at
    most 32 x 32 pixels) and the tiny CLIP, whose vision model is the image query's (not the base's)."""
    tokenizer, clip_tokenizer = build_chatml_tokenizer(), build_clip_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIALS}
    _, clip_cfg = tiny_configs(
        len(tokenizer), len(clip_tokenizer), ids["<|image_pad|>"], hidden=hidden, **shape
    )
    half_head = hidden // heads // 2  # rotary frequencies per head, split over temporal, height, width
    sections = [half_head - 2 * (half_head * 3 // 8), half_head * 3 // 8, half_head * 3 // 8]
    text = {"vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2),
            "max_position_embeddings": 1024, "bos_token_id": None, "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"], "initializer_range": INIT_RANGE,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections}}  # fmt: skip
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "patch_size": 4,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 16, "out_hidden_size": hidden,
              "fullatt_block_indexes": [1]}  # fmt: skip
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(seed)
    clip = CLIPModel(clip_cfg).eval()
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                         size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32})  # fmt: skip
    return save_base(model, clip, tokenizer, clip_tokenizer, llava_dir, clip_dir, model_processor=processor)


TINY_FAMILIES = {"llava_next": build_tiny_llava_next, "qwen2_5_vl": build_tiny_qwen2_5_vl}
