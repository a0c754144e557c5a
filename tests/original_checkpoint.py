"""A tiny checkpoint in the layout `liuhaotian/llava-v1.5-7b` ships in, and LLaVA-1.5's own tokenisation.

The checkpoint: a sentencepiece `tokenizer.model` trained here with Llama's settings (BPE, byte fallback,
unk/bos/eos = 0/1/2, no dummy-prefix stripping, spaces kept), `tokenizer_config.json` naming the slow
`LlamaTokenizer`, `special_tokens_map.json`, no tokenizer.json; `LlavaLlamaForCausalLM` weights in
`pytorch_model-0000x-of-0000y.bin` shards with `pytorch_model.bin.index.json` (or the `.safetensors`
variant with `model.safetensors.index.json`).

`SlowLlama` and `llava_input_ids` compute, from the sentencepiece library directly, the ids that LLaVA-1.5's
code produces: transformers' slow LlamaTokenizer (its `legacy` branch as in the tokenizer's source) under
LLaVA's `tokenizer_image_token` (the prompt split at <image>, each chunk tokenised with its own BOS, which
is dropped after the first).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import safetensors.torch
import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2
from torch import nn
from transformers import LlamaForCausalLM

from modalprompt.bench.tiny import tiny_configs
from modalprompt.data.datasets import SYSTEM_PROMPT

SPIECE_UNDERLINE = "▁"
SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2}
# Text the tokenizer is trained on: the template and everyday words. CJK and emoji are left out, so they
# are encoded by byte fallback, as rare characters are in Llama's vocabulary.
CORPUS = [
    SYSTEM_PROMPT,
    "USER: ASSISTANT: What is written on the sign? Answer the question using a single word or phrase.",
    "What color is the car? Which animal is this? How many people are there? Is the light on? yes no",
    "Café crème, naïve façade, Ünïcödé. The answer is A. Select the correct option. stop 0123456789",
    "The quick brown fox jumps over the lazy dog. Please provide the bounding box coordinate.",
]


def train_llama_sentencepiece(folder: Path, vocab_size: int = 500) -> Path:
    """tokenizer.model with Llama's trainer settings, written to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
        minloglevel=2,
    )  # fmt: skip
    (folder / "tokenizer.vocab").unlink()
    return folder / "tokenizer.model"


def _added(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False}  # fmt: skip


def write_tokenizer_files(folder: Path, legacy: bool = False) -> Path:
    """The three tokenizer files of liuhaotian/llava-v1.5-7b (no tokenizer.json)."""
    model = train_llama_sentencepiece(folder)
    config = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": _added("<s>"),
        "clean_up_tokenization_spaces": False, "eos_token": _added("</s>"), "legacy": legacy,
        "model_max_length": 2048, "pad_token": None, "padding_side": "right", "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer", "unk_token": _added("<unk>"),
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return model


def write_original_llava(
    folder: Path, weights: str = "bin", shards: int = 2, legacy: bool = False
) -> tuple[LlamaForCausalLM, nn.Sequential, int]:
    """The whole checkpoint; returns the LLM and projector it holds and the vocabulary size."""
    model_file = write_tokenizer_files(folder, legacy)
    vocab = spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
    llava_cfg, _ = tiny_configs(vocab, 300, image_token_id=0)
    text_cfg = llava_cfg.text_config
    torch.manual_seed(3)
    llm = LlamaForCausalLM(text_cfg)
    mm_hidden, d = llava_cfg.vision_config.hidden_size, text_cfg.hidden_size
    projector = nn.Sequential(nn.Linear(mm_hidden, d), nn.GELU(), nn.Linear(d, d))
    state = {**llm.state_dict(), **{f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()}}
    config = {  # the keys liuhaotian/llava-v1.5-7b's config.json has, at this model's sizes
        **{k: v for k, v in text_cfg.to_dict().items() if k in _LLAMA_KEYS},
        "_name_or_path": "./checkpoints/vicuna-7b-v1-5", "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava", "freeze_mm_mlp_adapter": False, "image_aspect_ratio": "pad",
        "mm_hidden_size": mm_hidden, "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "pad_token_id": 0, "pretraining_tp": 1,
        "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right", "torch_dtype": "float32",
        "transformers_version": "4.31.0", "tune_mm_mlp_adapter": False, "use_cache": True, "use_mm_proj": True,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_shards(folder, state, weights, shards)
    return llm, projector, vocab


_LLAMA_KEYS = ("bos_token_id", "eos_token_id", "hidden_act", "hidden_size", "initializer_range",
               "intermediate_size", "max_position_embeddings", "num_attention_heads", "num_hidden_layers",
               "num_key_value_heads", "rms_norm_eps", "rope_scaling", "tie_word_embeddings", "vocab_size")  # fmt: skip


def write_shards(folder: Path, state: dict[str, torch.Tensor], weights: str, shards: int) -> None:
    """`shards` files named as save_pretrained names them, with their index (weight_map: tensor -> file)."""
    names = sorted(state)
    suffix, index = (
        ("safetensors", "model.safetensors.index.json")
        if weights == "safetensors"
        else ("bin", "pytorch_model.bin.index.json")
    )
    prefix = "model" if weights == "safetensors" else "pytorch_model"
    weight_map = {}
    for k in range(shards):
        part = {n: state[n].contiguous() for n in names[k::shards]}
        file = f"{prefix}-{k + 1:05d}-of-{shards:05d}.{suffix}"
        if weights == "safetensors":
            safetensors.torch.save_file(part, folder / file, metadata={"format": "pt"})
        else:
            torch.save(part, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


class SlowLlama:
    """transformers' slow LlamaTokenizer, computed with the sentencepiece library: `legacy` as in the
    tokenizer_config; `encode` returns input_ids with the BOS it adds."""

    def __init__(self, model_file: Path, legacy: bool):
        self.legacy = legacy
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        # legacy=False loads the model with sentencepiece's dummy prefix switched off
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(model_file.read_bytes())
        proto.normalizer_spec.add_dummy_prefix = False
        self.sp_bare = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.unk_length = len(self.sp_bare.encode("<unk>", out_type=str))

    def tokenize(self, text: str) -> list[str]:
        if not self.legacy and text:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        tokens: list[str] = []
        for piece in re.split(r"(<unk>|<s>|</s>)", text):  # special tokens are split off first
            if piece in SPECIALS:
                tokens.append(piece)
            elif piece:
                tokens += self._tokenize(piece)
        if not self.legacy and len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in SPECIALS:
            tokens = tokens[1:]
        return tokens

    def _tokenize(self, text: str) -> list[str]:
        if self.legacy:
            return self.sp.encode(text, out_type=str)
        if not text.startswith((SPIECE_UNDERLINE, " ")):
            return self.sp_bare.encode(text, out_type=str)
        return self.sp_bare.encode("<unk>" + text, out_type=str)[self.unk_length :]

    def encode(self, text: str) -> list[int]:
        return [SPECIALS["<s>"], *(SPECIALS.get(t, self.sp.piece_to_id(t)) for t in self.tokenize(text))]


def llava_input_ids(tokenizer: SlowLlama, prompt: str, image_id: int, image_tokens: int) -> list[int]:
    """LLaVA's tokenizer_image_token, with each <image> expanded to the image's tokens."""
    chunks = [tokenizer.encode(chunk) for chunk in prompt.split("<image>")]
    ids = [chunks[0][0]]
    for i, chunk in enumerate(chunks):
        ids += ([image_id] * image_tokens if i else []) + chunk[1:]
    return ids
