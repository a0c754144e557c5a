"""lwf (Learning without Forgetting on lora_ft): the wrapper's logits it reads, its distillation term (zero
while the student is the teacher, positive once it moved, absent at stage 1), that the term keeps stage 2's
outputs on task 1 close to stage 1's, the answer-token normalisation under gradient accumulation, the frozen
base and earlier stage files, and its settings' bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from frozen_base import assert_base_unchanged, base_state

from modalprompt.config import ConfigError, MethodConfig, TrainingConfig, from_dict
from modalprompt.data.datasets import Collator, TrainDataset
from modalprompt.methods import get
from modalprompt.methods.lora_ft import LoraSettings
from modalprompt.methods.lora_ft.model import LoraLLM
from modalprompt.methods.lwf import LwfSettings
from modalprompt.methods.lwf.model import distillation_sum
from modalprompt.model.checkpoint import TENSORS_FILE
from modalprompt.model.wrapper import IGNORE_INDEX, ModalPromptModel, ModalPromptOutput
from modalprompt.run.train import train_stage

LORA = LoraSettings(
    rank=4, alpha=8.0, dropout=0.0
)  # dropout off: the student equals the teacher at the start


def _options(**lwf) -> dict:
    return {"lora": LORA, "lwf": LwfSettings(**lwf)}


def _train(backbone, training, task, previous, out, **lwf):
    return train_stage(backbone, MethodConfig(), training, task, previous, out, method_name="lwf",
                       options=_options(**lwf), progress=False)  # fmt: skip


def _batches(backbone, task, size=4):
    data = TrainDataset(Path(task.train_file), Path(task.image_root), backbone.conversation_encoder(2048),
                        backbone.image_preprocessor())  # fmt: skip
    collate = Collator(backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=False)
    return [collate([data[i] for i in range(s, min(s + size, len(data)))]) for s in range(0, len(data), size)]


def _training() -> TrainingConfig:
    return TrainingConfig(epochs=2, batch_size=4, lr=5e-3, warmup_ratio=0.0)


@pytest.fixture(scope="module")
def stage1(backbone, toy_tasks, tmp_path_factory):
    """Stage 1 on colors (no teacher), trained far enough that its outputs differ from the base's."""
    return _train(backbone, _training(), toy_tasks["colors"], [], tmp_path_factory.mktemp("lwf") / "s1")


# ----------------------------------------------------------------------------------------- the wrapper's logits


def test_prefixed_logits_give_the_cross_entropy_and_the_answer_labels(backbone, toy_tasks):
    wrapper = ModalPromptModel(backbone, MethodConfig())
    batch = _batches(backbone, toy_tasks["colors"])[0]
    queries = wrapper.encode(batch)
    logits, labels = wrapper.prefixed_logits(batch, queries, None)
    assert logits.dtype == torch.float32 and logits.shape[:2] == labels.shape == batch.labels[:, 1:].shape
    assert torch.equal(labels, batch.labels[:, 1:])  # each position's label is its next token's
    ce_sum, tokens = wrapper.prefixed_cross_entropy(batch, queries, None)
    assert tokens == batch.answer_tokens == int((labels != IGNORE_INDEX).sum())
    manual = torch.nn.functional.cross_entropy(logits[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX],
                                               reduction="sum")  # fmt: skip
    assert torch.allclose(ce_sum, manual)
    hidden = backbone.llava.config.text_config.hidden_size
    prefix = torch.zeros(len(batch.input_ids), 2, hidden)
    with_prefix, prefix_labels = wrapper.prefixed_logits(batch, queries, prefix)
    assert (
        with_prefix.shape[1] == logits.shape[1] + 2 and int((prefix_labels != IGNORE_INDEX).sum()) == tokens
    )


def test_an_answer_token_term_is_normalised_by_the_answer_tokens_of_the_whole_step():
    zero = torch.zeros(())
    empty = torch.zeros(1, 0)

    def out(ce, term, tokens):
        return ModalPromptOutput(ce_sum=torch.tensor(ce), tokens=tokens, align_image_sum=zero, images=0,
                                 align_text_sum=zero, samples=1, image_weight=0.0, text_weight=0.0,
                                 selected=empty, scores=empty, answer_term_sum=torch.tensor(term))  # fmt: skip

    a, b = out(3.0, 1.0, 2), out(6.0, 5.0, 4)
    assert torch.isclose(a.loss, torch.tensor((3.0 + 1.0) / 2))
    # two micro-batches of one step: the shares add up to (CE + term) over all 6 answer tokens
    assert torch.isclose(a.normalised_loss(6, 0, 2) + b.normalised_loss(6, 0, 2), torch.tensor(15.0 / 6))


# ----------------------------------------------------------------------------------------- the method


def test_lwf_settings_are_validated():
    assert LwfSettings() == LwfSettings(weight=1.0, temperature=2.0)  # the paper's lambda_o and T
    assert from_dict(LwfSettings, {"weight": 0.0, "temperature": 0.5}, "lwf") == LwfSettings(0.0, 0.5)
    with pytest.raises(ConfigError, match="weight"):
        from_dict(LwfSettings, {"weight": -1.0}, "lwf")
    with pytest.raises(ConfigError, match="temperature"):
        from_dict(LwfSettings, {"temperature": 0.0}, "lwf")
    method = get("lwf")
    assert method.sections == ("lora", "lwf") and method.adapts_base and not method.selects
    assert method.training_inputs(3) == [1, 2] and method.evaluation_inputs(2) == [1, 2]


def test_stage_1_has_no_teacher_and_learns_its_task(backbone, toy_tasks, stage1):
    first, last = stage1.history[0], stage1.history[-1]
    assert all(
        m.loss == pytest.approx(m.ce, rel=1e-6) for m in stage1.history
    )  # no distillation term without a teacher
    assert last.ce < 0.7 * first.ce, f"CE {first.ce:.3f} -> {last.ce:.3f}"
    model = get("lwf").build_model(backbone, MethodConfig(), _options())
    try:
        get("lwf").start_stage(model, [], "colors", seed=0)
        assert model.teacher is None
        assert model(_batches(backbone, toy_tasks["colors"])[0]).answer_term_sum is None
    finally:
        get("lwf").release(model)


def test_distillation_is_zero_while_the_student_is_the_teacher_and_positive_after(
    backbone, toy_tasks, stage1
):
    """At stage 2's start the student is stage 1's adapter: its distributions are the teacher's, the term is 0;
    after a few steps on the new task it is positive, the teacher is still stage 1's model (lora_ft's model with
    stage 1's adapter gives the same logits), and only the student's tensors get gradients."""
    before = base_state(backbone)
    batches = _batches(backbone, toy_tasks["shapes"])
    reference = LoraLLM(backbone, LORA)  # stage 1's model, as an evaluation loads it
    get("lwf").load_for_evaluation(reference, [stage1.checkpoint])
    with torch.no_grad():
        stage1_logits = [
            reference.wrapper.prefixed_logits(b, reference.wrapper.encode(b), None)[0] for b in batches
        ]
    reference.detach_adapter()
    method = get("lwf")
    model = method.build_model(backbone, MethodConfig(), _options(weight=1.0, temperature=2.0))
    try:
        adapter, _ = method.start_stage(model, [stage1.checkpoint], "shapes", seed=0)
        out = model(batches[0])
        assert out.answer_term_sum is not None and float(out.answer_term_sum.detach()) == pytest.approx(
            0.0, abs=1e-6
        )
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
        for batch in batches:
            optimizer.zero_grad()
            model(batch).loss.backward()
            optimizer.step()
        queries = model.wrapper.encode(batches[0])
        teacher = model.teacher_logits(batches[0], queries)
        assert not teacher.requires_grad
        assert torch.allclose(teacher, stage1_logits[0], atol=1e-5)  # the previous stage's model
        optimizer.zero_grad()
        out = model(batches[0])
        assert float(out.answer_term_sum.detach()) > 1e-3
        # its gradient is that of CE + weight * T^2 * KL with the teacher's logits as constants
        out.loss.backward()
        grads = [p.grad.clone() for p in adapter.parameters()]
        optimizer.zero_grad()
        logits, labels = model.wrapper.prefixed_logits(batches[0], queries, None)
        answers = labels != IGNORE_INDEX
        expected = (torch.nn.functional.cross_entropy(logits[answers], labels[answers], reduction="sum")
                    + 4.0 * distillation_sum(logits[answers], stage1_logits[0][answers], 2.0)) / int(answers.sum())  # fmt: skip
        expected.backward()
        assert all(
            torch.allclose(g, p.grad, atol=1e-6) for g, p in zip(grads, adapter.parameters(), strict=True)
        )
        assert all(not t.requires_grad and t.grad is None for t in model.teacher.values())
    finally:
        method.release(model)
    assert model.teacher is None
    assert_base_unchanged(backbone, before)


def _task1_gap(backbone, toy_tasks, stage1, stage2) -> float:
    """Mean KL(stage 1 || stage 2) of the next-token distributions on task 1's answer tokens."""
    logits = []
    for chain in ([stage1], [stage1, stage2]):
        model = LoraLLM(backbone, LORA)
        get("lwf").load_for_evaluation(model, chain)
        with torch.no_grad():
            logits.append([model.wrapper.prefixed_logits(b, model.wrapper.encode(b), None)
                           for b in _batches(backbone, toy_tasks["colors"])])  # fmt: skip
        model.detach_adapter()
    kl, tokens = 0.0, 0
    for (first, labels), (second, _) in zip(*logits, strict=True):
        answers = labels != IGNORE_INDEX
        kl += float(distillation_sum(second[answers], first[answers], 1.0))
        tokens += int(answers.sum())
    return kl / tokens


@pytest.mark.slow  # two stage-2 trainings: 15-50 s on 2 shared cores
def test_distillation_keeps_task_1_outputs_closer_to_stage_1(backbone, toy_tasks, stage1, tmp_path):
    """LwF's point: stage 2 with a large distillation weight moves task 1's outputs less than without."""
    before = base_state(backbone)
    s1_bytes = (stage1.checkpoint / TENSORS_FILE).read_bytes()
    gaps = {}
    for weight in (0.0, 10.0):
        s2 = _train(backbone, _training(), toy_tasks["shapes"], [stage1.checkpoint], tmp_path / f"w{weight}",
                    weight=weight)  # fmt: skip
        assert s2.history[-1].ce < s2.history[0].ce  # it still learns the new task
        if weight == 0:
            assert all(m.loss == pytest.approx(m.ce, rel=1e-6) for m in s2.history)  # weight 0 is lora_ft
        gaps[weight] = _task1_gap(backbone, toy_tasks, stage1.checkpoint, s2.checkpoint)
    assert gaps[10.0] < 0.5 * gaps[0.0], gaps
    assert (stage1.checkpoint / TENSORS_FILE).read_bytes() == s1_bytes  # stage 1's file untouched
    assert_base_unchanged(backbone, before)


def test_the_distillation_is_normalised_by_the_step_s_answer_tokens(backbone, toy_tasks, stage1, tmp_path):
    """Two accumulated micro-batches of 2 give the gradient of one batch of 4 (the term is a mean over the
    step's answer tokens, as the CE)."""
    method = get("lwf")
    one, two = (_batches(backbone, toy_tasks["shapes"], size)[: 4 // size] for size in (4, 2))
    grads = []
    for group in (one, two):
        model = method.build_model(backbone, MethodConfig(), _options(weight=3.0))
        try:
            adapter, _ = method.start_stage(model, [stage1.checkpoint], "shapes", seed=0)
            noise = torch.Generator().manual_seed(0)
            with torch.no_grad():  # move the student off the teacher, the same way for both
                for p in adapter.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=noise))
            tokens = sum(b.answer_tokens for b in group)
            for batch in group:
                model(batch).normalised_loss(tokens, 0, 4).backward()
            grads.append([p.grad.clone() for p in adapter.parameters()])
        finally:
            method.release(model)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads, strict=True))


def test_the_teacher_runs_without_dropout_while_the_student_has_it(backbone, toy_tasks, stage1):
    """With LoRA dropout on (0.5) the student's outputs vary from call to call; the teacher's are stage 1's
    model's as an evaluation computes them (dropout off), every time."""
    import dataclasses

    batch = _batches(backbone, toy_tasks["shapes"])[0]
    reference = LoraLLM(backbone, LORA)
    get("lwf").load_for_evaluation(reference, [stage1.checkpoint])
    with torch.no_grad():
        expected = reference.wrapper.prefixed_logits(batch, reference.wrapper.encode(batch), None)[0]
    reference.detach_adapter()
    method = get("lwf")
    noisy = {"lora": dataclasses.replace(LORA, dropout=0.5), "lwf": LwfSettings()}
    model = method.build_model(backbone, MethodConfig(), noisy)
    try:
        adapter, _ = method.start_stage(model, [stage1.checkpoint], "shapes", seed=0)
        adapter.train(True)
        queries = model.wrapper.encode(batch)
        with torch.no_grad():
            student = [model.wrapper.prefixed_logits(batch, queries, None)[0] for _ in range(2)]
            teacher = [model.teacher_logits(batch, queries) for _ in range(2)]
        assert not torch.allclose(student[0], student[1])  # the student's dropout is on
        assert all(torch.allclose(t, expected, atol=1e-5) for t in teacher)
    finally:
        method.release(model)
