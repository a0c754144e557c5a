"""Reading an original LLaVA-1.5 checkpoint as it ships (`liuhaotian/llava-v1.5-7b`): its sentencepiece-only
tokenizer and its weights, whole or sharded with an index. `backbone.convert_llava` composes the llava-hf
model from what these return.

Every problem is one `BaseModelError` naming the file and the fix, never a library's traceback.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from modalprompt.data.datasets import SYSTEM_PROMPT
from modalprompt.errors import BaseModelError

# The packages transformers needs to turn a sentencepiece tokenizer.model into its own tokenizer; pinned in
# pyproject.toml.
SENTENCEPIECE_PACKAGES = {"sentencepiece": "sentencepiece==0.2.3", "google.protobuf": "protobuf==7.36.2"}

# Texts of LLaVA-1.5's conversation template on which the converted tokenizer must give sentencepiece's own
# ids: each is a chunk as LLaVA tokenises it (the prompt is split at <image>, and no chunk starts with a
# space), with newlines, repeated spaces and characters that only byte fallback can encode.
PARITY_TEXTS = (
    f"{SYSTEM_PROMPT} USER: ",
    "\nWhat is written on the sign?\nAnswer the question using a single word or phrase. ASSISTANT: stop",
    "\nTwo  spaces,   three spaces\n\nand a blank line. ASSISTANT: Café crème, naïve façade",
    "\n東京タワー 😀 Ünïcödé. ASSISTANT: 42",
)

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
SHARD_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.(safetensors|bin)$")


# ------------------------------------------------------------------------------------------ tokenizer


def load_original_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer: from tokenizer.json when present, else from the sentencepiece
    tokenizer.model (as liuhaotian/llava-v1.5-7b ships it), checked to give sentencepiece's own ids."""
    has_json, has_model = (folder / "tokenizer.json").is_file(), (folder / "tokenizer.model").is_file()
    if not (has_json or has_model):
        raise BaseModelError(
            f"{folder} has no tokenizer (neither tokenizer.model nor tokenizer.json): copy the checkpoint's "
            "tokenizer.model, tokenizer_config.json and special_tokens_map.json into it"
        )
    if not has_json:
        _require_sentencepiece(folder / "tokenizer.model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, ImportError) as err:
        raise BaseModelError(
            f"cannot read the tokenizer in {folder} ({type(err).__name__}: {err}): check tokenizer_config.json "
            "and special_tokens_map.json, or download the tokenizer files again"
        ) from err
    if not has_json:
        check_sentencepiece_parity(tokenizer, folder / "tokenizer.model")
    return tokenizer


def _require_sentencepiece(model_file: Path) -> None:
    missing = [pin for module, pin in SENTENCEPIECE_PACKAGES.items() if not _importable(module)]
    if missing:
        raise BaseModelError(
            f"reading {model_file} (a sentencepiece tokenizer) needs {' and '.join(missing)}: "
            f"pip install {' '.join(repr(p) for p in missing)} (`make setup` installs them)"
        )
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    except (OSError, RuntimeError) as err:
        raise BaseModelError(f"{model_file} is not a sentencepiece model ({err}): download it again") from err


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def check_sentencepiece_parity(tokenizer: PreTrainedTokenizerBase, model_file: Path) -> None:
    """The tokenizer transformers built from `model_file` must give the ids sentencepiece itself gives (what
    LLaVA-1.5's slow LlamaTokenizer gives) on LLaVA's template, and the same special ids."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    specials = {"bos": (tokenizer.bos_token_id, sp.bos_id()), "eos": (tokenizer.eos_token_id, sp.eos_id())}
    for name, (ours, theirs) in specials.items():
        if ours != theirs:
            raise BaseModelError(
                f"{model_file}: the tokenizer's {name} id is {ours}, sentencepiece's is {theirs}: check "
                "special_tokens_map.json and tokenizer_config.json against the original checkpoint"
            )
    for text in PARITY_TEXTS:
        ours, theirs = tokenizer(text, add_special_tokens=False)["input_ids"], sp.encode(text)
        if ours != theirs:
            raise BaseModelError(
                f"{model_file}: transformers' conversion of this tokenizer gives other ids than sentencepiece "
                f"on {text!r} ({ours[:12]}... vs {theirs[:12]}...): the converted model would not see the "
                "text LLaVA-1.5 was trained on; report this with your transformers version"
            )


# ------------------------------------------------------------------------------------------ weights


def read_original_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint: sharded with its index (model.safetensors.index.json or
    pytorch_model.bin.index.json), or one model.safetensors / pytorch_model.bin. `.bin` files are read with
    torch.load(weights_only=True): nothing is unpickled beyond tensors."""
    for name in WEIGHT_INDEXES:
        if (folder / name).is_file():
            return _read_sharded(folder, folder / name)
    shards = sorted(p.name for p in folder.iterdir() if SHARD_NAME.search(p.name))
    if shards:
        index = WEIGHT_INDEXES[0] if shards[0].endswith(".safetensors") else WEIGHT_INDEXES[1]
        raise BaseModelError(
            f"{folder} holds weight shards ({', '.join(shards)}) but no {index}: download {index} too"
        )
    for name in SINGLE_WEIGHTS:
        if (folder / name).is_file():
            return _read_file(folder / name)
    raise BaseModelError(
        f"{folder} holds no weights: expected {' or '.join(SINGLE_WEIGHTS)}, or shards with "
        f"{' or '.join(WEIGHT_INDEXES)}; download the checkpoint's weight files"
    )


def _read_sharded(folder: Path, index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError("weight_map is not a mapping of tensor names to files")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise BaseModelError(
            f"{index} is not a valid weight index ({type(err).__name__}: {err}): download it again"
        ) from err
    by_file: dict[str, set[str]] = {}
    for tensor, file in weight_map.items():
        by_file.setdefault(str(file), set()).add(tensor)
    missing = sorted(f for f in by_file if not (folder / f).is_file())
    if missing:
        raise BaseModelError(
            f"{folder}: {len(missing)} weight shard(s) listed in {index.name} are missing ({', '.join(missing)}): "
            "download them again"
        )
    tensors: dict[str, torch.Tensor] = {}
    for file, names in sorted(by_file.items()):
        shard = _read_file(folder / file)
        absent = sorted(names - shard.keys())
        if absent:
            raise BaseModelError(
                f"{folder / file} lacks {len(absent)} tensor(s) that {index.name} places in it (e.g. "
                f"{absent[:3]}): the shard is partial or from another download; download it again"
            )
        tensors.update({k: shard[k] for k in names})
    return tensors


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
        state = torch.load(path, map_location="cpu", weights_only=True)
    # any failure to read one file is that file's problem: truncated, damaged, or not weights
    except Exception as err:
        raise BaseModelError(
            f"cannot read {path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): the "
            "file is truncated or damaged; download it again"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BaseModelError(
            f"{path} is not a state dict of tensors: download the checkpoint's weights again"
        )
    return state
