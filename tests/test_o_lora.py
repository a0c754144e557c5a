"""o_lora on the tiny base: it learns a toy task; each stage adds its own adapter beside the earlier,
frozen ones (the base bit-identical afterwards, a stage file holding only its adapter); the orthogonality
penalty is zero for orthogonal A subspaces, positive otherwise, and training under it reduces the overlap;
an evaluation after stage 2 adds both adapters' updates; bad settings are refused."""

import dataclasses

import pytest
import safetensors.torch
import torch
from frozen_base import assert_base_unchanged, base_state

from modalprompt import methods
from modalprompt.config import ConfigError, from_dict
from modalprompt.methods.o_lora import OLoraSettings
from modalprompt.methods.o_lora.model import OLoraLLM, adapter_name
from modalprompt.model.checkpoint import META_FILE, TENSORS_FILE, read_meta
from modalprompt.run.evaluate import evaluate_stage
from modalprompt.run.train import train_stage

SMALL = OLoraSettings(rank=4, alpha=8.0, dropout=0.0)
O_LORA = methods.get("o_lora")


def _train(backbone, method, training, task, previous, out, settings=SMALL):
    return train_stage(backbone, method, training, task, previous, out, method_name="o_lora", progress=False,
                       options={"o_lora": settings})  # fmt: skip


def _tensors(folder) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / TENSORS_FILE)


def _a_matrices(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lora_A per target layer, keyed by the layer's name."""
    return {k.split(".lora_A.")[0]: v for k, v in tensors.items() if ".lora_A." in k}


def _overlap(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    a1, a2 = _a_matrices(first), _a_matrices(second)
    assert set(a1) == set(a2) and a1
    return float(sum((a1[k] @ a2[k].T).abs().sum() for k in a1))


@pytest.fixture
def quick(training):
    return dataclasses.replace(training, max_steps=2)


@pytest.fixture
def two_stages(backbone, method, quick, toy_tasks, tmp_path):
    s1 = _train(backbone, method, quick, toy_tasks["colors"], [], tmp_path / "s1")
    s2 = _train(backbone, method, quick, toy_tasks["shapes"], [s1.checkpoint], tmp_path / "s2")
    return s1.checkpoint, s2.checkpoint


@pytest.mark.slow  # 6 epochs and an evaluation: about 7-15 s on 2 shared cores
def test_o_lora_learns_a_toy_task_and_leaves_the_base_as_it_was(
    backbone, method, training, evaluation, toy_tasks, tmp_path
):
    before = base_state(backbone)
    learning = dataclasses.replace(training, epochs=6, lr=5e-3)
    result = _train(backbone, method, learning, toy_tasks["colors"], [], tmp_path / "s1")
    first, last = result.history[0].ce, sum(m.ce for m in result.history[-4:]) / 4
    assert last < 0.7 * first, f"CE {first:.3f} -> {last:.3f} over 6 epochs"
    assert_base_unchanged(backbone, before)
    assert sorted(p.name for p in result.checkpoint.iterdir()) == [META_FILE, TENSORS_FILE]
    predictions = evaluate_stage(backbone, method, evaluation, toy_tasks["colors"], [result.checkpoint],
                                 progress=False, method_name="o_lora", options={"o_lora": SMALL})  # fmt: skip
    assert len(predictions.predictions) == 6 and predictions.stage == 1
    assert_base_unchanged(backbone, before)


def test_each_stage_file_holds_only_its_own_adapter_and_leaves_the_earlier_ones(
    backbone, two_stages, toy_tasks, tmp_path
):
    s1, s2 = two_stages
    first, second = _tensors(s1), _tensors(s2)
    llm = backbone.llava.model.language_model
    linears = [m for n, m in llm.named_modules() if n.split(".")[-1] in SMALL.target_modules]
    assert len(second) == 2 * len(linears) and all(f".{adapter_name(2)}." in k for k in second)
    assert all(f".{adapter_name(1)}." in k for k in first)
    assert sum(t.numel() for t in second.values()) == sum(SMALL.rank * (m.in_features + m.out_features)
                                                          for m in linears)  # fmt: skip
    assert read_meta(s2).stage == 2 and read_meta(s2).previous[0]["task"] == "colors"
    # the new adapter starts from its own seeded A, not from stage 1's
    assert not any(torch.equal(first[k.replace(adapter_name(2), adapter_name(1))], v)
                   for k, v in second.items() if ".lora_A." in k)  # fmt: skip


def test_stage_2_trains_only_its_adapter_the_first_stays_as_its_file(
    backbone, method, training, toy_tasks, two_stages
):
    """Three optimizer steps of stage 2 by hand (CE + penalty): adapter 1 stays exactly as stage 1 wrote it,
    adapter 2 moves, and only adapter 2's tensors require grad."""
    s1, _ = two_stages
    settings = dataclasses.replace(SMALL, orthogonal_weight=1.0, l2_weight=0.1)
    model = O_LORA.build_model(backbone, method, {"o_lora": settings})
    before = base_state(backbone)
    try:
        current, metas = O_LORA.start_stage(model, [s1], "shapes", seed=0)
        assert [m.task for m in metas] == ["colors"] and [a.name for a in model.adapters] == [
            "stage1",
            "stage2",
        ]
        trainable = {id(p) for p in backbone.llava.parameters() if p.requires_grad}
        assert trainable == {id(p) for p in current.parameters()}
        assert not list(model.parameters())  # the frozen base is no submodule of the model (the engines)
        start = {k: v.clone() for k, v in current.state_dict().items()}
        optimizer = torch.optim.AdamW(current.parameters(), lr=1e-2)
        batch = _one_batch(backbone, toy_tasks["shapes"])
        for _ in range(3):
            out = model(batch)
            assert out.regulariser is not None and float(out.regulariser.detach()) > 0
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
        adapter_1 = model.adapters[0].state_dict()
        assert adapter_1.keys() == _tensors(s1).keys()
        assert all(torch.equal(v, _tensors(s1)[k]) for k, v in adapter_1.items())
        assert any(not torch.equal(v, start[k]) for k, v in current.state_dict().items())
    finally:
        O_LORA.release(model)
    assert_base_unchanged(backbone, before)


def test_the_orthogonality_penalty_is_zero_for_orthogonal_subspaces_and_its_gradient_reduces_overlap(
    backbone,
):
    model = OLoraLLM(backbone, SMALL)
    try:
        first, second, third = model.attach(1), model.attach(2), model.attach(3)
        model.train_adapter(third)
        layers = model.stack.lora_layers()
        assert layers
        names = [adapter_name(i) for i in (1, 2, 3)]
        # seeded A's overlap: the penalty is positive, the sum over layers and earlier tasks of sum |A_i A_3^T|
        expected = sum(float((layer.lora_A[old].weight @ layer.lora_A[names[2]].weight.T).abs().sum().detach())
                       for layer in layers for old in names[:2])  # fmt: skip
        penalty = model.orthogonality()
        value = float(penalty.detach())
        assert value > 0 and value == pytest.approx(expected, rel=1e-5)

        # its gradient reaches only the new adapter's A, and a small step down it reduces the overlap
        penalty.backward()
        assert all(p.grad is None for p in (*first.parameters(), *second.parameters()))
        steps = [p for p in third.parameters() if p.grad is not None]
        assert steps and all(".lora_A." in n for n, p in third.named_parameters() if p.grad is not None)
        with torch.no_grad():
            for p in steps:
                p -= 1e-3 * p.grad
        assert float(model.orthogonality().detach()) < 0.99 * value

        # three mutually orthogonal r-dimensional row spaces (scaled, not orthonormal): no penalty
        hidden, r = layers[0].in_features, SMALL.rank
        basis = torch.linalg.qr(torch.randn(hidden, hidden))[0].T  # orthonormal rows
        mixing = torch.randn(r, r)
        with torch.no_grad():
            for layer in layers:
                for i, name in enumerate(names):
                    layer.lora_A[name].weight.copy_(mixing @ basis[i * r : (i + 1) * r])
        assert float(model.orthogonality().detach()) == pytest.approx(0.0, abs=1e-4)
        with torch.no_grad():  # one shared direction is enough to make it positive
            layers[0].lora_A[names[2]].weight[0] += basis[0]
        assert float(model.orthogonality().detach()) > 0.1
    finally:
        model.detach_adapter()


def test_training_under_the_penalty_keeps_the_new_a_closer_to_orthogonal(
    backbone, method, training, toy_tasks, two_stages, tmp_path
):
    s1, _ = two_stages
    steps = dataclasses.replace(training, max_steps=4, lr=1e-2)
    free = _train(backbone, method, steps, toy_tasks["shapes"], [s1], tmp_path / "free",
                  dataclasses.replace(SMALL, orthogonal_weight=0.0))  # fmt: skip
    held = _train(backbone, method, steps, toy_tasks["shapes"], [s1], tmp_path / "held",
                  dataclasses.replace(SMALL, orthogonal_weight=1.0))  # fmt: skip
    first = _tensors(s1)
    unpenalised, penalised = (
        _overlap(first, _tensors(free.checkpoint)),
        _overlap(first, _tensors(held.checkpoint)),
    )
    assert penalised < 0.8 * unpenalised, (unpenalised, penalised)
    assert held.history[0].loss > held.history[0].ce  # the penalty is part of the loss it trains on
    assert free.history[0].loss == pytest.approx(free.history[0].ce)


def test_an_evaluation_after_stage_2_adds_both_adapters(backbone, method, two_stages, toy_tasks):
    s1, s2 = two_stages
    batch = _one_batch(backbone, toy_tasks["colors"])
    model = O_LORA.build_model(backbone, method, {"o_lora": SMALL})
    try:
        assert O_LORA.load_for_evaluation(model, [s1, s2]) == ["colors", "shapes"]
        assert not any(p.requires_grad for p in backbone.llava.parameters())
        with torch.no_grad():
            both = model(batch)
            assert both.regulariser is None  # no penalty at evaluation
            model.stack.activate([adapter_name(2)])
            second_alone = model(batch)
            model.stack.activate([adapter_name(1)])
            first_alone = model(batch)
        assert not torch.allclose(both.ce_sum, second_alone.ce_sum, atol=1e-6)
        assert not torch.allclose(both.ce_sum, first_alone.ce_sum, atol=1e-6)
    finally:
        O_LORA.release(model)
    # each layer's output is the base's plus the sum of the two updates
    model = O_LORA.build_model(backbone, method, {"o_lora": SMALL})
    try:
        O_LORA.load_for_evaluation(model, [s1, s2])
        layer = model.stack.lora_layers()[0]
        x = torch.randn(3, layer.in_features)
        with torch.no_grad():
            update = sum(layer.lora_B[n].weight @ layer.lora_A[n].weight for n in ("stage1", "stage2"))
            expected = layer.base_layer(x) + x @ update.T * (SMALL.alpha / SMALL.rank)
            assert torch.allclose(layer(x), expected, atol=1e-5)
    finally:
        O_LORA.release(model)


def test_bad_settings_are_refused_with_a_clear_message(backbone, method):
    for bad, message in (({"rank": 0}, "rank = 0 is invalid"), ({"orthogonal_weight": -1.0}, "orthogonal_weight"),
                         ({"l2_weight": -0.5}, "l2_weight"), ({"dropout": 1.0}, "dropout"),
                         ({"lamda_1": 0.5}, "unknown key")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            from_dict(OLoraSettings, bad, "o_lora")
    before = base_state(backbone)
    model = O_LORA.build_model(backbone, method, {"o_lora": OLoraSettings(target_modules=("no_such_layer",))})
    with pytest.raises(ConfigError, match="do not name linear layers"):
        O_LORA.start_stage(model, [], "colors", seed=0)
    O_LORA.release(model)
    assert_base_unchanged(backbone, before)


def test_the_defaults_are_the_authors_codes():
    s = OLoraSettings()
    assert (s.rank, s.alpha, s.dropout, s.target_modules) == (8, 32.0, 0.1, ("q_proj", "v_proj"))
    assert (s.orthogonal_weight, s.l2_weight) == (0.5, 0.0)
    assert O_LORA.sections == ("o_lora",) and O_LORA.training_inputs(3) == [1, 2]
    assert O_LORA.evaluation_inputs(3) == [1, 2, 3] and not O_LORA.selects and O_LORA.adapts_base


def _one_batch(backbone, task):
    """The task's first four training records as one batch."""
    from pathlib import Path

    from modalprompt.data.datasets import Collator, TrainDataset

    dataset = TrainDataset(Path(task.train_file), Path(task.image_root), backbone.conversation_encoder(512),
                           backbone.image_preprocessor())  # fmt: skip
    collate = Collator(backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=False)
    return collate([dataset[i] for i in range(4)]).to(backbone.device)


def test_the_penalties_count_once_per_optimizer_step_whatever_the_micro_batches():
    """ModalPromptOutput.regulariser (O-LoRA's and EWC's penalties, computed on every micro-batch) enters an
    optimizer step once: each micro-batch adds its share of the step's samples."""
    from modalprompt.model.wrapper import ModalPromptOutput

    zero, empty = torch.zeros(()), torch.zeros(1, 0)

    def out(ce, samples):
        return ModalPromptOutput(ce_sum=torch.tensor(ce), tokens=samples, align_image_sum=zero, images=0,
                                 align_text_sum=zero, samples=samples, image_weight=0.0, text_weight=0.0,
                                 selected=empty, scores=empty, regulariser=torch.tensor(7.0))  # fmt: skip

    one = out(12.0, 4).loss  # one batch of 4 samples: CE / tokens + the penalty
    split = out(5.0, 1).normalised_loss(4, 0, 4) + out(7.0, 3).normalised_loss(4, 0, 4)  # 1 + 3 samples
    assert torch.isclose(one, torch.tensor(3.0 + 7.0)) and torch.isclose(split, one)
