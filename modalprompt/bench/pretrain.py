"""A small base model for CPU, pretrained here on the generic captions of mini-CoIN's visual world.

Two steps, both seeded: a tiny CLIP learns image-caption matching (contrastive), then a tiny LLaVA whose
vision tower is that CLIP's vision model (frozen, so the image query reuses LLaVA's vision pass) learns the
generic corpus: captions, short answers, multiple choice and boxes in one generic wording. The result knows
the world (colours, shapes, words, digits, counts, positions) and those skills, but none of the tasks'
instruction wordings, and has seen none of their test images (modalprompt.bench.minicoin): each task's
prompt must bring the skill out under the task's own instruction and answer format.
Both folders load through the production path (`load_backbone`).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPModel,
    LlavaForConditionalGeneration,
)

from modalprompt.bench import minicoin
from modalprompt.bench.shipped import PRETRAIN_THREADS
from modalprompt.bench.tiny import build_clip_tokenizer, build_llm_tokenizer, save_base, tiny_configs
from modalprompt.config import PretrainConfig, ProgressConfig, to_jsonable
from modalprompt.data.datasets import (
    SYSTEM_PROMPT,
    Collator,
    ConversationEncoder,
    ImagePreprocessor,
    TrainDataset,
)
from modalprompt.run.progress import Progress


def _corpus_texts(records: list[dict]) -> list[str]:
    texts = [turn["value"] for r in records for turn in r["conversations"]]
    # the conversation template in every sample: whole words, not a hundred byte pieces
    texts += [f"{SYSTEM_PROMPT} USER: ASSISTANT:"] * len(records)
    rng = random.Random(0)
    for task in minicoin.TASKS:  # the tasks' wordings and answers must be spellable by the tokenizers
        for _ in range(40):
            sample = minicoin.GENERATORS[task](rng, {})
            texts += [sample.question, sample.answer]
    return texts


def _caption(record: dict) -> str:
    """The answer to the generic instruction: what CLIP learns to match with the image."""
    turns = record["conversations"]
    for human, answer in zip(turns[::2], turns[1::2], strict=True):
        if human["value"].replace("<image>", "").strip() == minicoin.GENERIC_INSTRUCTION:
            return answer["value"]
    return turns[1]["value"]


def _batches(pool: list[int], batch_size: int, steps: int, seed: int):
    """`steps` batches of indices from `pool`, reshuffled each pass."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order += [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]
        yield [order.pop() for _ in range(batch_size)]


def _fit(
    name,
    params,
    loss_of,
    data,
    pool,
    collate,
    s: PretrainConfig,
    steps: int,
    seed: int,
    progress: ProgressConfig,
) -> tuple[float, float]:
    """AdamW with 50 warm-up steps then cosine decay, gradient clipping at 1; returns (last loss, seconds).
    Logs progress lines (rate and ETA) the way training jobs do."""
    bar = Progress(f"pretrain {name}", steps, "step", every_steps=progress.every_steps,
                   every_seconds=progress.every_seconds)  # fmt: skip
    optimizer = torch.optim.AdamW(params, lr=s.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / 50) * 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    start = time.perf_counter()
    for step, idx in enumerate(_batches(pool, s.batch_size, steps, seed), start=1):
        loss = loss_of(collate([data[i] for i in idx]), idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.update(1, loss=loss.item(), lr=schedule.get_last_lr()[0],
                   samples_per_s=step * s.batch_size / max(time.perf_counter() - start, 1e-9))  # fmt: skip
    bar.close()
    return loss.item(), time.perf_counter() - start


def pretrain_base(
    corpus: Path,
    llava_dir: Path,
    clip_dir: Path,
    s: PretrainConfig,
    progress: ProgressConfig = ProgressConfig(),  # noqa: B008
) -> dict:
    """Train CLIP then LLaVA on `corpus/train.json` (generic captions), on `PRETRAIN_THREADS` threads; write both
    folders atomically."""
    threads = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        return _pretrain(corpus, llava_dir, clip_dir, s, progress)
    finally:
        torch.set_num_threads(threads)


def _pretrain(
    corpus: Path, llava_dir: Path, clip_dir: Path, s: PretrainConfig, progress: ProgressConfig
) -> dict:
    torch.manual_seed(s.seed)
    records = json.loads((Path(corpus) / "train.json").read_text())
    texts = _corpus_texts(records)
    tokenizer, clip_tokenizer = build_llm_tokenizer(texts=texts), build_clip_tokenizer(texts=texts)
    llava_cfg, clip_cfg = tiny_configs(
        len(tokenizer), len(clip_tokenizer), tokenizer.convert_tokens_to_ids("<image>"), hidden=s.hidden,
        layers=s.layers, vision_hidden=s.vision_hidden, feature=s.feature, image_size=minicoin.SIZE,
        init_range=0.02, vision_feature_layer=s.vision_feature_layer,
    )  # fmt: skip
    processor = CLIPImageProcessorPil(size={"shortest_edge": minicoin.SIZE},
                                      crop_size={"height": minicoin.SIZE, "width": minicoin.SIZE})  # fmt: skip
    clip, llava = CLIPModel(clip_cfg), LlavaForConditionalGeneration(llava_cfg)
    encoder = ConversationEncoder(tokenizer, clip_tokenizer, llava_cfg.image_token_id,
                                  (minicoin.SIZE // 8) ** 2, max_length=256)  # fmt: skip
    data = TrainDataset(Path(corpus) / "train.json", Path(corpus), encoder, ImagePreprocessor(processor))
    collate = Collator(tokenizer.pad_token_id, clip_tokenizer.pad_token_id, left_pad=False)
    captions = [_caption(r) for r in data.records]
    with_image = [i for i, r in enumerate(data.records) if r.get("image")]
    report = {"records": len(data), "vocab": len(tokenizer), "threads": torch.get_num_threads()}

    # 1. CLIP: image <-> caption
    def clip_loss(batch, idx):
        tokens = clip_tokenizer([captions[i] for i in idx], padding=True, return_tensors="pt")
        return clip(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=batch.pixel_values, return_loss=True).loss  # fmt: skip

    clip.train()
    loss, seconds = _fit(
        "clip",
        list(clip.parameters()),
        clip_loss,
        data,
        with_image,
        collate,
        s,
        s.clip_steps,
        s.seed,
        progress,
    )
    report.update(clip_loss=loss, clip_seconds=seconds)

    # 2. LLaVA: caption after the generic instruction; the vision tower is CLIP's, frozen
    clip.eval()
    llava.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    llava.model.vision_tower.requires_grad_(False)

    def caption_loss(batch, idx):
        return llava(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     pixel_values=batch.pixel_values, labels=batch.labels).loss  # fmt: skip

    llava.train()
    params = [p for p in llava.parameters() if p.requires_grad]
    loss, seconds = _fit(
        "caption",
        params,
        caption_loss,
        data,
        list(range(len(data))),
        collate,
        s,
        s.caption_steps,
        s.seed + 1,
        progress,
    )
    report.update(caption_loss=loss, caption_seconds=seconds)
    llava.eval()

    notes = {"pretraining.json": json.dumps({**report, "settings": to_jsonable(s)}, indent=1)}
    save_base(llava, clip, tokenizer, clip_tokenizer, llava_dir, clip_dir, notes)
    return report
