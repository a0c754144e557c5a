"""Stage files: self-describing, atomic, refused when they do not belong."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers import CLIPModel

from modalprompt import files
from modalprompt.bases.backbone import load_backbone
from modalprompt.bench.tiny import build_tiny_base
from modalprompt.config import ModelConfig
from modalprompt.data.datasets import Collator, ConversationEncoder, EvalDataset, ImagePreprocessor
from modalprompt.model.checkpoint import (
    META_FILE,
    TENSORS_FILE,
    CheckpointError,
    atomic_write_text,
    load_stages,
    read_meta,
)
from modalprompt.model.wrapper import ModalPromptModel
from modalprompt.run.train import train_stage


@pytest.fixture
def stage1(backbone, method, training, toy_tasks, tmp_path):
    return train_stage(
        backbone, method, training, toy_tasks["colors"], [], tmp_path / "s1", progress=False
    ).checkpoint


def test_metadata_describes_the_stage(stage1, backbone, method):
    meta = read_meta(stage1)
    assert (meta.task, meta.stage, meta.base_fingerprint) == ("colors", 1, backbone.fingerprint)
    assert meta.method_structure == method.structure() and meta.previous == []
    assert meta.package_version and meta.torch_version and len(meta.tensors_sha256) == 64


def test_load_restores_tensors_frozen(stage1, backbone, method):
    model = ModalPromptModel(backbone, method)
    load_stages(model, [stage1])
    assert model.prompts.names == ["colors"]
    assert not any(p.requires_grad for p in model.parameters())


def test_refuses_another_base_model(stage1, method, tiny_base, tmp_path):
    other_llava, _ = build_tiny_base(tmp_path / "other" / "llava", tmp_path / "other" / "clip", seed=5)
    other = load_backbone(ModelConfig(llava=str(other_llava), clip=str(tiny_base[1]), device="cpu"))
    with pytest.raises(CheckpointError, match=r"trained on base model .* but the loaded base model is"):
        load_stages(ModalPromptModel(other, method), [stage1])


def test_refuses_incompatible_method_config(stage1, backbone, method):
    changed = dataclasses.replace(method, prefix_length=method.prefix_length + 1)
    with pytest.raises(CheckpointError, match="prefix_length"):
        load_stages(ModalPromptModel(backbone, changed), [stage1])


def _by_hand(stage_dirs, image_query, text_query, lam, k):
    """Scores and selection computed from the stage files' tensors without the package's code: key =
    mean over prompt rows of W2 silu(W1 p + b1) + b2, g = lam cos(f_v, key) + (1 - lam) cos(f_q, key),
    the top min(T, K) ordered by ascending score; and the prefix: their prompts, in that order."""
    tensors = [safetensors.torch.load_file(d / TENSORS_FILE) for d in stage_dirs]
    keys = []
    for t in tensors:
        hidden = torch.nn.functional.silu(t["prompt"] @ t["key_net.0.weight"].T + t["key_net.0.bias"])
        keys.append((hidden @ t["key_net.2.weight"].T + t["key_net.2.bias"]).mean(0))

    def cos(q, key):
        return float(q @ key / (q.norm() * key.norm()))

    scores = [
        [lam * cos(v, key) + (1 - lam) * cos(q, key) for key in keys]
        for v, q in zip(image_query, text_query, strict=True)
    ]
    selected = [
        sorted(sorted(range(len(keys)), key=lambda j: -row[j])[:k], key=lambda j: row[j]) for row in scores
    ]
    prefixes = [torch.cat([tensors[j]["prompt"] for j in row]) for row in selected]
    return torch.tensor(scores), selected, prefixes


def test_lam_and_k_changes_still_load(stage1, backbone, method, training, toy_tasks, tiny_base, tmp_path):
    """Three stages trained with lam 0.5 and K 3, loaded with other lam and K: the scores, the selected
    tasks and the prefix are what those values give by hand from the stage files and CLIP's own features."""
    stages = [stage1]
    for name in ("shapes", "count"):
        stages.append(train_stage(backbone, method, training, toy_tasks[name], stages,
                                  tmp_path / name, progress=False).checkpoint)  # fmt: skip
    encoder = ConversationEncoder(backbone.tokenizer, backbone.clip_tokenizer, backbone.image_token_id,
                                  backbone.num_image_tokens, 2048)  # fmt: skip
    rows = []
    for name in ("colors", "shapes", "count"):
        task = toy_tasks[name]
        data = EvalDataset(Path(task.eval_file), Path(task.image_root), encoder,
                           ImagePreprocessor(backbone.image_processor))  # fmt: skip
        rows += [data[i] for i in range(3)]
    batch = Collator(backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=True)(
        rows
    )
    clip = CLIPModel.from_pretrained(tiny_base[1]).eval()
    with torch.no_grad():
        image_query = clip.get_image_features(pixel_values=batch.pixel_values).pooler_output
        text_query = clip.text_model(
            input_ids=batch.clip_input_ids, attention_mask=batch.clip_attention_mask
        ).pooler_output  # text_feature 'pooled'
    seen = set()
    for lam, k in ((0.9, 1), (0.1, 2), (0.5, 3)):
        model = ModalPromptModel(backbone, dataclasses.replace(method, lam=lam, transfer_num=k))
        load_stages(model, stages)
        out = model.generate(batch, max_new_tokens=1)
        scores, selected, prefixes = _by_hand(stages, image_query, text_query, lam, k)
        assert torch.allclose(out.scores, scores, atol=1e-5), (lam, k)
        assert out.selected.tolist() == selected, (lam, k)
        with torch.no_grad():
            assert torch.allclose(model._prefix(out.selected), torch.stack(prefixes)), (lam, k)
        seen.add(json.dumps(selected))
    assert len(seen) == 3  # each setting selects differently


def test_refuses_truncated_tensors(stage1, backbone, method):
    path = stage1 / TENSORS_FILE
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated or was replaced"):
        load_stages(ModalPromptModel(backbone, method), [stage1])


def test_refuses_missing_metadata(stage1, backbone, method):
    (stage1 / META_FILE).unlink()
    with pytest.raises(CheckpointError, match="not a finished stage checkpoint"):
        load_stages(ModalPromptModel(backbone, method), [stage1])


def test_refuses_stale_chain_and_wrong_order(stage1, backbone, method, training, toy_tasks, tmp_path):
    stage2 = train_stage(
        backbone, method, training, toy_tasks["shapes"], [stage1], tmp_path / "s2", progress=False
    ).checkpoint
    with pytest.raises(CheckpointError, match="given as stage 1"):
        load_stages(ModalPromptModel(backbone, method), [stage2, stage1])
    retrained = train_stage(
        backbone,
        method,
        dataclasses.replace(training, seed=9),
        toy_tasks["colors"],
        [],
        tmp_path / "s1b",
        progress=False,
    ).checkpoint
    with pytest.raises(CheckpointError, match="trained after other versions"):
        load_stages(ModalPromptModel(backbone, method), [retrained, stage2])


@pytest.mark.parametrize("fail_in", ["write", "rename"])
def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch, fail_in):
    """A failure with the temporary file on disk, half written (`write`) or whole but not yet renamed
    (`rename`): the old file is intact and the temporary file is gone."""
    target = tmp_path / "out.json"
    atomic_write_text(target, json.dumps({"v": 1}))
    new = json.dumps({"v": 2, "pad": "x" * 100_000})
    at_failure = []  # (name, bytes) of every other file in the folder when the failure happens

    def others() -> list[tuple[str, int]]:
        return [(p.name, p.stat().st_size) for p in tmp_path.iterdir() if p != target]

    if fail_in == "write":
        real_fdopen = os.fdopen

        def half_writing_fdopen(fd, mode):
            f = real_fdopen(fd, mode)

            def write(data):
                f.raw.write(data[: len(data) // 2])  # unbuffered: half of it reaches the file
                at_failure.extend(others())
                raise OSError("killed mid-write")

            f.write = write
            return f

        monkeypatch.setattr(files.os, "fdopen", half_writing_fdopen)
    else:

        def failing_replace(src, dst):
            at_failure.extend(others())
            raise OSError("killed in the rename")

        monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="killed"):
        atomic_write_text(target, new)
    [(name, size)] = at_failure  # the temporary file existed when it failed
    assert name.startswith(".out.json.") and name.endswith(".tmp")
    assert size == (len(new) // 2 if fail_in == "write" else len(new))
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left
