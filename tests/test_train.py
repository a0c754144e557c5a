"""train_stage: the method's defects in the reference code, each as a test; schedule; determinism."""

import dataclasses
from pathlib import Path

import pytest
import safetensors.torch
import torch

from modalprompt.config import Schedule
from modalprompt.model.checkpoint import META_FILE, TENSORS_FILE, read_meta
from modalprompt.model.prompts import stage_seed
from modalprompt.model.wrapper import ModalPromptModel
from modalprompt.run.schedule import lr_multiplier, shard_batches
from modalprompt.run.train import _require_only_current_trainable, train_stage


def _train_sequence(backbone, method, training, tasks, root: Path, names=("colors", "shapes", "count")):
    folders = []
    for name in names:
        result = train_stage(backbone, method, training, tasks[name], folders, root / name, progress=False)
        folders.append(result.checkpoint)
    return folders


def _init_tensors(backbone, method, stage):
    model = ModalPromptModel(backbone, method)
    for i in range(1, stage):
        model.prompts.add_task(f"prev{i}")
    task = model.add_task("x", stage_seed(method.prompt_init_seed, stage))
    return {k: v.detach().clone() for k, v in task.state_dict().items()}


def test_every_stage_trains_its_prompt_including_the_last(backbone, method, training, toy_tasks, tmp_path):
    folders = _train_sequence(backbone, method, training, toy_tasks, tmp_path)
    for stage, folder in enumerate(folders, start=1):
        trained = safetensors.torch.load_file(folder / TENSORS_FILE)
        init = _init_tensors(backbone, method, stage)
        assert not torch.equal(trained["prompt"], init["prompt"]), f"stage {stage} prompt did not train"
        assert not torch.equal(trained["key_net.2.weight"], init["key_net.2.weight"])


def test_earlier_tensors_bit_identical_after_later_stages(backbone, method, training, toy_tasks, tmp_path):
    first = train_stage(backbone, method, training, toy_tasks["colors"], [], tmp_path / "s1", progress=False)
    before = (first.checkpoint / TENSORS_FILE).read_bytes()
    second = train_stage(
        backbone, method, training, toy_tasks["shapes"], [first.checkpoint], tmp_path / "s2", progress=False
    )
    assert (first.checkpoint / TENSORS_FILE).read_bytes() == before
    assert set(safetensors.torch.load_file(second.checkpoint / TENSORS_FILE)) == {
        "prompt",
        "key_net.0.weight",
        "key_net.0.bias",
        "key_net.2.weight",
        "key_net.2.bias",
    }


def test_lm_head_and_vocabulary_untouched(backbone, method, training, toy_tasks, tmp_path):
    llava = backbone.llava
    embeddings = llava.get_input_embeddings().weight.clone()
    head = llava.lm_head.weight.clone()
    vocab = (llava.config.text_config.vocab_size, len(backbone.tokenizer))
    _train_sequence(backbone, method, training, toy_tasks, tmp_path, names=("colors", "shapes"))
    assert torch.equal(llava.get_input_embeddings().weight, embeddings)
    assert torch.equal(llava.lm_head.weight, head)
    assert (llava.config.text_config.vocab_size, len(backbone.tokenizer)) == vocab


def test_twelve_tasks_open_ended(backbone, method, training, toy_tasks, tmp_path):
    short = dataclasses.replace(training, max_steps=1)
    folders = []
    for i in range(12):
        task = dataclasses.replace(toy_tasks[("colors", "shapes", "count")[i % 3]], name=f"task{i:02d}")
        folders.append(
            train_stage(backbone, method, short, task, folders, tmp_path / f"s{i}", progress=False).checkpoint
        )
    assert read_meta(folders[-1]).stage == 12
    from modalprompt.config import EvaluationConfig
    from modalprompt.run.evaluate import evaluate_stage

    result = evaluate_stage(
        backbone,
        method,
        EvaluationConfig(batch_size=3, max_new_tokens=2, max_samples=3),
        toy_tasks["count"],
        folders,
        progress=False,
    )
    assert all(len(p.selected) == method.transfer_num and len(p.scores) == 12 for p in result.predictions)


def test_training_is_deterministic_on_cpu(backbone, method, training, toy_tasks, tmp_path):
    a = train_stage(backbone, method, training, toy_tasks["colors"], [], tmp_path / "a", progress=False)
    b = train_stage(backbone, method, training, toy_tasks["colors"], [], tmp_path / "b", progress=False)
    assert (a.checkpoint / TENSORS_FILE).read_bytes() == (b.checkpoint / TENSORS_FILE).read_bytes()


def test_only_current_task_may_train(backbone, method):
    model = ModalPromptModel(backbone, method)
    current = model.add_task("a", seed=0)
    assert len(_require_only_current_trainable(model, current)) == 5
    backbone.llava.lm_head.weight.requires_grad_(True)
    try:
        with pytest.raises(RuntimeError, match="only the current task"):
            _require_only_current_trainable(model, current)
    finally:
        backbone.llava.lm_head.weight.requires_grad_(False)


def test_step_metrics_callback_and_accumulation(backbone, method, training, toy_tasks, tmp_path):
    seen = []
    accumulated = dataclasses.replace(
        training, batch_size=2, grad_accum_steps=3
    )  # 16 samples: 8 micro, 3 steps
    result = train_stage(
        backbone, method, accumulated, toy_tasks["colors"], [], tmp_path, on_step=seen.append, progress=False
    )
    assert [m.step for m in seen] == [1, 2, 3] and result.steps == 3
    assert result.samples == 16
    for m in seen:
        assert m.loss == pytest.approx(m.ce + m.align_image + m.align_text, rel=1e-5)
        assert m.samples_per_s > 0 and m.peak_memory_mb > 0 and m.lr > 0


def test_schedules():
    constant = lr_multiplier(Schedule.CONSTANT, warmup_steps=2, total_steps=10)
    assert [constant(s) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    cosine = lr_multiplier(Schedule.COSINE, warmup_steps=2, total_steps=10)
    assert (
        cosine(1) == 1.0
        and cosine(2) == 1.0
        and cosine(6) == pytest.approx(0.5)
        and cosine(10) == pytest.approx(0)
    )


def test_shards_cover_the_data_once_across_ranks():
    single = [i for b in shard_batches(10, 3, seed=0, epoch=0, rank=0, world=1) for i in b]
    ranks = [[i for b in shard_batches(10, 3, seed=0, epoch=0, rank=r, world=2) for i in b] for r in range(2)]
    assert sorted(single) == list(range(10))
    assert sorted(ranks[0] + ranks[1]) == list(range(10)) and len(ranks[0]) == len(ranks[1])
    assert shard_batches(10, 3, 0, 1, 0, 1) != shard_batches(10, 3, 0, 0, 0, 1)  # reshuffled per epoch


def test_stage_file_holds_exactly_the_trained_bytes(backbone, method, training, toy_tasks, tmp_path):
    result = train_stage(backbone, method, training, toy_tasks["colors"], [], tmp_path, progress=False)
    path = result.checkpoint / TENSORS_FILE
    hidden = backbone.llava.config.text_config.hidden_size
    feature = backbone.visual_projection.out_features
    numel = method.prefix_length * hidden + (hidden * hidden + hidden) + (hidden * feature + feature)
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.stat().st_size == 8 + header + 4 * numel
    assert header < 1024  # names, shapes and offsets of 5 tensors: metadata only
    assert sorted(p.name for p in result.checkpoint.iterdir()) == [META_FILE, TENSORS_FILE]


def test_gradient_checkpointing_gives_the_same_training(backbone, method, training, toy_tasks, tmp_path):
    attention = backbone.llava.model.language_model.layers[0].self_attn
    calls = []
    hook = attention.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        plain = train_stage(
            backbone, method, training, toy_tasks["colors"], [], tmp_path / "a", progress=False
        )
        plain_calls, calls[:] = len(calls), []
        checkpointed = train_stage(backbone, method, dataclasses.replace(training, gradient_checkpointing=True),
                                   toy_tasks["colors"], [], tmp_path / "b", progress=False)  # fmt: skip
    finally:
        hook.remove()
    assert len(calls) == 2 * plain_calls  # the backward pass recomputed every layer once
    a = safetensors.torch.load_file(plain.checkpoint / TENSORS_FILE)
    b = safetensors.torch.load_file(checkpointed.checkpoint / TENSORS_FILE)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not backbone.llava.is_gradient_checkpointing and not backbone.llava.training  # restored


def test_accumulation_equals_one_large_batch(backbone, method, training, toy_tasks, tmp_path):
    """CE is normalised by the answer tokens of the whole optimizer step, so accumulation changes nothing."""
    results = {}
    for batch_size, accum in ((8, 1), (4, 2), (2, 4)):
        config = dataclasses.replace(training, batch_size=batch_size, grad_accum_steps=accum, epochs=2)
        result = train_stage(
            backbone, method, config, toy_tasks["count"], [], tmp_path / f"{batch_size}", progress=False
        )
        assert result.steps == 4
        results[batch_size] = safetensors.torch.load_file(result.checkpoint / TENSORS_FILE)
    for other in (4, 2):
        for key, value in results[8].items():
            assert torch.allclose(value, results[other][key], atol=1e-5), (other, key)


def test_length_grouped_batches_pad_less_and_stay_one_pass_for_any_world_size():
    lengths = [(i * 37) % 200 + 10 for i in range(400)]
    plain = shard_batches(400, 8, seed=0, epoch=0, rank=0, world=1)
    grouped = shard_batches(400, 8, seed=0, epoch=0, rank=0, world=1, lengths=lengths)
    assert sorted(i for b in grouped for i in b) == list(range(400))  # every sample once

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < padding(plain) / 5
    two = [shard_batches(400, 4, seed=0, epoch=0, rank=r, world=2, lengths=lengths) for r in range(2)]
    assert [sorted(a + b) for a, b in zip(*two, strict=True)] == [
        sorted(b) for b in grouped
    ]  # same global batches
    assert shard_batches(400, 8, 0, 1, 0, 1, lengths) != grouped  # reshuffled per epoch


def test_group_by_length_trains(backbone, method, training, toy_tasks, tmp_path):
    grouped = dataclasses.replace(training, group_by_length=True)
    result = train_stage(backbone, method, grouped, toy_tasks["count"], [], tmp_path / "g", progress=False)
    assert result.steps == 4 and result.history[-1].loss < result.history[0].loss
