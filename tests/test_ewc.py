"""ewc on the tiny base: lora_ft plus a Fisher-weighted pull of the LoRA tensors towards stage t-1's. It
learns a toy task and leaves the base as it was; its penalty is zero at the anchor and weighs each tensor
entry by its Fisher; the Fisher is per-sample, computed after training (train.py calls finish_stage) and
accumulated across stages; a large weight keeps stage 2 near stage 1 where the Fisher is large."""

import dataclasses
from pathlib import Path

import pytest
import safetensors.torch
import torch
from frozen_base import assert_base_unchanged, base_state

from modalprompt.config import ConfigError, from_dict
from modalprompt.data.datasets import Collator, TrainDataset
from modalprompt.methods.ewc import EwcSettings
from modalprompt.methods.ewc.model import FISHER_PREFIX, EwcLLM, task_fisher
from modalprompt.methods.lora_ft import LoraSettings
from modalprompt.model.checkpoint import TENSORS_FILE
from modalprompt.run.evaluate import evaluate_stage
from modalprompt.run.train import train_stage

LORA = LoraSettings(rank=4, alpha=8.0, dropout=0.0)


def _options(**ewc) -> dict:
    return {"lora": LORA, "ewc": EwcSettings(**ewc)}


def _train(backbone, method, training, task, previous, out, **ewc):
    return train_stage(backbone, method, training, task, previous, out, method_name="ewc", progress=False,
                       options=_options(**ewc))  # fmt: skip


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / TENSORS_FILE)


def _split(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(LoRA tensors, Fisher by the LoRA tensor's name) of a stage file."""
    lora = {k: v for k, v in tensors.items() if not k.startswith(FISHER_PREFIX)}
    fisher = {k[len(FISHER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(FISHER_PREFIX)}
    return lora, fisher


def _value(penalty: torch.Tensor) -> float:
    return float(penalty.detach())


def _batches(backbone, task, training, size: int):
    """The task's training records in file order, `size` at a time, as train.py collates them."""
    dataset = TrainDataset(Path(task.train_file), Path(task.image_root),
                           backbone.conversation_encoder(training.max_length), backbone.image_preprocessor())  # fmt: skip
    collate = Collator(backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=False)
    return [
        collate([dataset[j] for j in range(i, min(i + size, len(dataset)))])
        for i in range(0, len(dataset), size)
    ]


@pytest.fixture
def model(backbone):
    """An EwcLLM with an adapter attached (seed 0); its LoRA layers are taken out of the base afterwards."""
    before = base_state(backbone)
    m = EwcLLM(backbone, LORA, EwcSettings(weight=2.0))
    m.attach(seed=0)
    yield m
    m.detach_adapter()
    assert_base_unchanged(backbone, before)


@pytest.mark.slow  # 6 epochs, a second stage and an evaluation: 30 s on 2 shared cores
def test_ewc_learns_a_toy_task_and_leaves_the_base_as_it_was(
    backbone, method, training, evaluation, toy_tasks, tmp_path
):
    before = base_state(backbone)
    learning = dataclasses.replace(training, epochs=6, lr=5e-3)
    s1 = _train(backbone, method, learning, toy_tasks["colors"], [], tmp_path / "s1")
    first, last = s1.history[0].ce, sum(m.ce for m in s1.history[-4:]) / 4
    assert last < 0.7 * first, f"CE {first:.3f} -> {last:.3f} over 6 epochs"
    assert_base_unchanged(backbone, before)
    stage1 = (s1.checkpoint / TENSORS_FILE).read_bytes()
    s2 = _train(backbone, method, dataclasses.replace(training, max_steps=3), toy_tasks["shapes"], [s1.checkpoint],
                tmp_path / "s2")  # fmt: skip
    assert (s1.checkpoint / TENSORS_FILE).read_bytes() == stage1  # a later stage leaves earlier files alone
    assert_base_unchanged(backbone, before)
    result = evaluate_stage(backbone, method, evaluation, toy_tasks["colors"], [s1.checkpoint, s2.checkpoint],
                            progress=False, method_name="ewc", options=_options())  # fmt: skip
    assert len(result.predictions) == 6 and result.stage == 2
    assert_base_unchanged(backbone, before)


def test_penalty_is_zero_at_the_anchor_and_weighs_each_entry_by_its_fisher(model):
    adapter = model.adapter
    names = [n for n, _ in adapter.named_parameters()]
    assert adapter.penalty(2.0) is None  # stage 1: no earlier task, no penalty
    weighted, free = names[0], names[1]
    adapter.fisher[weighted].fill_(3.0)  # every other tensor has zero Fisher
    adapter.set_anchor()
    assert _value(adapter.penalty(2.0)) == 0.0
    params = dict(adapter.named_parameters())
    with torch.no_grad():
        params[free].add_(5.0)  # zero Fisher: free to move
    assert _value(adapter.penalty(2.0)) == 0.0
    with torch.no_grad():
        params[weighted].add_(0.5)
    expected = 2.0 / 2 * 3.0 * 0.25 * params[weighted].numel()
    assert _value(adapter.penalty(2.0)) == pytest.approx(expected, rel=1e-6)
    assert _value(adapter.penalty(0.0)) == 0.0
    # the trained tensors are the only parameters; the Fisher and the anchor take no gradient
    assert all(p.requires_grad for p in adapter.parameters()) and len(adapter.parameters()) == len(names)
    assert not any(f.requires_grad for f in adapter.fisher.values())
    assert not any(a.requires_grad for a in adapter.anchor.values())


def test_penalty_reaches_the_training_loss(backbone, model, training, toy_tasks):
    batch = _batches(backbone, toy_tasks["colors"], training, 4)[0]
    adapter = model.adapter
    assert model(batch).regulariser is None
    adapter.fisher[next(iter(adapter.fisher))].fill_(1.0)
    adapter.set_anchor()
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.1)
    out = model(batch)
    assert _value(out.regulariser) > 0
    assert _value(out.loss) == pytest.approx(_value(out.ce + out.regulariser), rel=1e-6)


def test_the_fisher_is_the_mean_of_per_sample_squared_gradients(backbone, model, training, toy_tasks):
    """task_fisher's one backward per batch gives each sample's gradient: the same Fisher as one sample at a
    time, and not the square of a batch's mean gradient."""
    task = toy_tasks["colors"]
    with torch.no_grad():  # lora_B starts at zero: move it so that lora_A has gradients too
        for name, p in model.adapter.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, 0.05)
    fisher = task_fisher(model, _batches(backbone, task, training, 4))
    params = dict(model.adapter.named_parameters())
    one_by_one = {n: torch.zeros_like(p) for n, p in params.items()}
    per_batch = {n: torch.zeros_like(p) for n, p in params.items()}
    singles = _batches(backbone, task, training, 1)
    for batch in singles:
        ce_sum, tokens = model.wrapper.prefixed_cross_entropy(batch, model.wrapper.encode(batch), None)
        grads = torch.autograd.grad(ce_sum / tokens, list(params.values()))
        for name, g in zip(params, grads, strict=True):
            one_by_one[name] += g.square() / len(singles)
    for batch in _batches(backbone, task, training, 4):
        ce_sum, tokens = model.wrapper.prefixed_cross_entropy(batch, model.wrapper.encode(batch), None)
        grads = torch.autograd.grad(ce_sum / tokens, list(params.values()))
        for name, g in zip(params, grads, strict=True):
            per_batch[name] += g.square() / 4
    total = sum(float(f.sum()) for f in fisher.values())
    assert total > 0
    for name in params:
        assert torch.allclose(fisher[name], one_by_one[name], rtol=1e-4, atol=1e-10), name
    assert sum(float(f.sum()) for f in per_batch.values()) < 0.8 * total  # what a per-batch Fisher would be


def test_train_stage_stores_the_tasks_fisher_beside_the_adapter(
    backbone, method, training, toy_tasks, tmp_path
):
    """train.py calls finish_stage: stage 1's file holds the Fisher of the trained adapter on the task's own
    records (zero if the hook were not called)."""
    quick = dataclasses.replace(training, max_steps=2)
    s1 = _train(backbone, method, quick, toy_tasks["colors"], [], tmp_path / "s1")
    lora, fisher = _split(_tensors(s1.checkpoint))
    assert set(fisher) == set(lora) and all(fisher[k].shape == lora[k].shape for k in lora)
    assert sum(float(f.sum()) for f in fisher.values()) > 0, "no Fisher: finish_stage was not called"
    m = EwcLLM(backbone, LORA, EwcSettings())
    try:
        m.attach(seed=0).load_state_dict(
            {**lora, **{FISHER_PREFIX + k: torch.zeros_like(v) for k, v in lora.items()}}
        )
        expected = task_fisher(m, _batches(backbone, toy_tasks["colors"], training, training.batch_size))
    finally:
        m.detach_adapter()
    for name in lora:
        assert torch.allclose(fisher[name], expected[name], rtol=1e-4, atol=1e-12), name


def test_the_fisher_is_accumulated_across_stages(backbone, method, training, toy_tasks, tmp_path):
    """Stage 2's file holds gamma * F_1 + F_2: with gamma 1 the sum, with 0 F_2 alone, with 0.5 in between."""
    quick = dataclasses.replace(training, max_steps=2)
    s1 = _train(backbone, method, quick, toy_tasks["colors"], [], tmp_path / "s1")
    _, f1 = _split(_tensors(s1.checkpoint))
    stage2 = {}
    for g in (1.0, 0.5, 0.0):
        out = _train(
            backbone, method, quick, toy_tasks["shapes"], [s1.checkpoint], tmp_path / f"s2-{g}", gamma=g
        )
        stage2[g] = _split(_tensors(out.checkpoint))
    for g in (0.5, 0.0):  # gamma acts after training only: the adapters are the same
        assert all(torch.equal(stage2[g][0][k], stage2[1.0][0][k]) for k in f1)
    f2 = stage2[0.0][1]
    assert sum(float(f.sum()) for f in f2.values()) > 0
    for name in f1:
        assert torch.allclose(stage2[1.0][1][name], f1[name] + f2[name], rtol=1e-5, atol=1e-12), name
        assert torch.allclose(stage2[0.5][1][name], 0.5 * f1[name] + f2[name], rtol=1e-5, atol=1e-12), name


@pytest.mark.slow  # three stages of 8-12 steps: about a minute on 2 shared cores
def test_a_large_weight_keeps_stage_2_near_stage_1_where_the_fisher_is_large(
    backbone, method, training, toy_tasks, tmp_path
):
    s1 = _train(backbone, method, dataclasses.replace(training, epochs=2, lr=1e-2), toy_tasks["colors"], [],
                tmp_path / "s1")  # fmt: skip
    theta1, f1 = _split(_tensors(s1.checkpoint))
    flat_f = torch.cat([f1[k].flatten() for k in sorted(f1)])
    important = flat_f > flat_f.quantile(0.9)  # the entries stage 1's task cares most about

    def drift(weight: float) -> torch.Tensor:
        longer = dataclasses.replace(training, epochs=3, lr=1e-2)
        s2 = _train(backbone, method, longer, toy_tasks["shapes"], [s1.checkpoint], tmp_path / f"s2-{weight}",
                    weight=weight)  # fmt: skip
        theta2, _ = _split(_tensors(s2.checkpoint))
        return torch.cat([(theta2[k] - theta1[k]).abs().flatten() for k in sorted(f1)])

    free, held = drift(0.0), drift(1e7)
    assert float(free[important].mean()) > 0
    assert float(held[important].mean()) < 0.3 * float(free[important].mean()), (
        f"mean |theta2 - theta1| where F is large: {float(held[important].mean()):.2e} with the penalty, "
        f"{float(free[important].mean()):.2e} without"
    )


@pytest.mark.parametrize(("key", "value"), [("weight", -1.0), ("gamma", 1.5), ("gamma", -0.1)])
def test_bad_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"ewc.{key}"):
        from_dict(EwcSettings, {key: value}, "ewc")


def test_the_fisher_is_computed_without_dropout(backbone, training, toy_tasks):
    """task_fisher turns LoRA's dropout off: an adapter in training mode with dropout 0.5 gets the Fisher of
    the same tensors without dropout."""
    import dataclasses

    batches = _batches(backbone, toy_tasks["colors"], training, 4)
    fishers = []
    for dropout in (0.5, 0.0):
        model = EwcLLM(backbone, dataclasses.replace(LORA, dropout=dropout), EwcSettings())
        adapter = model.attach(seed=0)
        try:
            with torch.no_grad():
                for name, p in adapter.named_parameters():
                    if ".lora_B." in name:  # the same moved B in both, so that lora_A has gradients too
                        p.copy_(
                            torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05
                        )
            adapter.train(True)
            fishers.append(task_fisher(model, batches))
        finally:
            model.detach_adapter()
    assert fishers[0].keys() == fishers[1].keys()
    assert all(torch.allclose(fishers[0][n], fishers[1][n], rtol=1e-5, atol=1e-12) for n in fishers[0])
