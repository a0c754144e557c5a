"""Tiny local base models, built offline and deterministically: `build_tiny_base` writes a llava-hf folder
and a CLIP folder (random weights, tokenizers trained here, the same vision tower in both) that load through
the production code path. Tests, the toy config and the benchmarks use them (with the toy tasks of toy.py).
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
    PreTrainedTokenizerFast,
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
    llava, clip, tokenizer, clip_tokenizer, llava_dir: Path, clip_dir: Path, notes: dict | None = None
):
    """Write the llava-hf folder and the CLIP folder (with the shared image processor), each under a temporary
    name renamed at the end, so a killed job leaves no half-written model."""
    size = clip.config.vision_config.image_size
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    for folder, model, tok in ((Path(llava_dir), llava, tokenizer), (Path(clip_dir), clip, clip_tokenizer)):
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for name, text in (notes or {}).items():
            (tmp / name).write_text(text)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return Path(llava_dir), Path(clip_dir)


def build_tiny_base(
    llava_dir: Path, clip_dir: Path, seed: int = 0, hidden: int = 64, **shape
) -> tuple[Path, Path]:
    """A random tiny LLaVA and CLIP; LLaVA's vision tower is CLIP's vision model. `shape`: more
    `tiny_configs` sizes (layers, image_size, ...), e.g. for benchmarks at a less tiny size."""
    tokenizer, clip_tokenizer = build_llm_tokenizer(), build_clip_tokenizer()
    llava_cfg, clip_cfg = tiny_configs(
        len(tokenizer),
        len(clip_tokenizer),
        tokenizer.convert_tokens_to_ids("<image>"),
        hidden=hidden,
        **shape,
    )
    torch.manual_seed(seed)
    clip = CLIPModel(clip_cfg).eval()
    llava = LlavaForConditionalGeneration(llava_cfg).eval()
    llava.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    return save_base(llava, clip, tokenizer, clip_tokenizer, llava_dir, clip_dir)
