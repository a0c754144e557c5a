"""hide_llava (HiDe-LLaVA) on the tiny base: it learns a toy task; a stage file holds its task's LoRA and
anchors, the anchors being the mean CLIP features of the task's records; the anchors pick each sample's
top-layer LoRA (no task id), and another task's one changes the output; the lower layers use the fusion of
the stages' LoRAs; earlier stages stay as they were; the base is bit-identical afterwards; bad settings are
refused."""

import dataclasses
import hashlib
from pathlib import Path

import pytest
import safetensors.torch
import torch
from frozen_base import assert_base_unchanged, base_state

from modalprompt.config import ConfigError, MethodConfig, TrainingConfig, from_dict
from modalprompt.data.datasets import Collator, TrainDataset
from modalprompt.methods.hide_llava import Fusion, HiDeLLaVAConfig
from modalprompt.methods.hide_llava.model import HiDeLLaVA, task_similarity
from modalprompt.model.checkpoint import META_FILE, TENSORS_FILE
from modalprompt.model.wrapper import ModalPromptModel
from modalprompt.run.evaluate import evaluate_stage
from modalprompt.run.train import train_stage

SETTINGS = HiDeLLaVAConfig(rank=4, alpha=8.0)


def _train(backbone, method, training, task, previous, out, settings=SETTINGS):
    return train_stage(backbone, method, training, task, previous, out, method_name="hide_llava",
                       options={"hide_llava": settings}, progress=False)  # fmt: skip


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / TENSORS_FILE)


@pytest.fixture(scope="module")
def two_stages(backbone, toy_tasks, tmp_path_factory):
    """colors then shapes, 8 optimizer steps each, the base bit-identical afterwards; and stage 1's file
    hash before stage 2 was trained."""
    out = tmp_path_factory.mktemp("hide")
    before = base_state(backbone)
    method, steps = MethodConfig(), TrainingConfig(epochs=2, batch_size=4, lr=1e-2, warmup_ratio=0.0)
    first = _train(backbone, method, steps, toy_tasks["colors"], [], out / "s1").checkpoint
    first_hash = hashlib.sha256((first / TENSORS_FILE).read_bytes()).hexdigest()
    second = _train(backbone, method, steps, toy_tasks["shapes"], [first], out / "s2").checkpoint
    assert_base_unchanged(backbone, before, hook_owner="HiDeLLaVA")
    return first, second, first_hash


@pytest.mark.slow  # 24 optimizer steps and an evaluation: 10-30 s on 2 shared cores
def test_learns_a_toy_task_and_leaves_the_base_as_it_was(
    backbone, method, training, evaluation, toy_tasks, tmp_path
):
    before = base_state(backbone)
    learning = dataclasses.replace(training, epochs=6, lr=5e-3)
    result = _train(backbone, method, learning, toy_tasks["colors"], [], tmp_path / "s1")
    first, last = result.history[0].ce, sum(m.ce for m in result.history[-4:]) / 4
    assert last < 0.7 * first, f"CE {first:.3f} -> {last:.3f}"
    assert_base_unchanged(backbone, before, hook_owner="HiDeLLaVA")
    assert sorted(p.name for p in result.checkpoint.iterdir()) == [META_FILE, TENSORS_FILE]
    tensors = _tensors(result.checkpoint)
    lora = {k for k in tensors if k.startswith("pairs.")}
    assert set(tensors) - lora == {"image_anchor", "text_anchor"}  # its LoRA and anchors, nothing else
    layers = backbone.llava.config.text_config.num_hidden_layers
    assert {k.split("/")[1] for k in lora} == {str(i) for i in range(layers)}  # every layer: lower and top
    out = evaluate_stage(backbone, method, evaluation, toy_tasks["colors"], [result.checkpoint], progress=False,
                         method_name="hide_llava", options={"hide_llava": SETTINGS})  # fmt: skip
    assert len(out.predictions) == 6 and out.stage == 1
    assert all(p.selected == ["colors"] for p in out.predictions)  # one task learned: its LoRA, weight 1
    assert_base_unchanged(backbone, before, hook_owner="HiDeLLaVA")


def test_anchors_are_the_mean_clip_features_of_the_tasks_records(backbone, two_stages, toy_tasks):
    first, _, _ = two_stages
    task = toy_tasks["colors"]
    dataset = TrainDataset(Path(task.train_file), Path(task.image_root), backbone.conversation_encoder(512),
                           backbone.image_preprocessor())  # fmt: skip
    collate = Collator(backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=False)
    wrapper = ModalPromptModel(backbone, MethodConfig())  # CLIP's pooled text output, as the method's default
    images, texts = [], []
    for i in range(len(dataset)):  # one record at a time: the mean does not depend on the batching
        q = wrapper.encode(collate([dataset[i]]).to(backbone.device))
        texts.append(q.text[0])
        if q.has_image[0]:
            images.append(q.image[0])
    saved = _tensors(first)
    assert len(images) == len(dataset) > 0
    torch.testing.assert_close(saved["image_anchor"], torch.stack(images).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(saved["text_anchor"], torch.stack(texts).mean(0), rtol=1e-5, atol=1e-6)


def test_the_anchors_pick_each_samples_own_tasks_top_layer_lora(backbone, evaluation, two_stages, toy_tasks):
    """No task id: each test sample's largest top-layer weight is its own task's (toy tasks differ in
    their images and questions), and the weights are a distribution over the learned tasks."""
    first, second, _ = two_stages
    before = base_state(backbone)
    for name in ("colors", "shapes"):
        out = evaluate_stage(backbone, MethodConfig(), evaluation, toy_tasks[name], [first, second],
                             progress=False, method_name="hide_llava", options={"hide_llava": SETTINGS})  # fmt: skip
        right = sum(p.selected == [name] for p in out.predictions)
        assert right / len(out.predictions) >= 0.9, f"{name}: {[p.selected for p in out.predictions]}"
        for p in out.predictions:
            assert set(p.scores) == {"colors", "shapes"} and abs(sum(p.scores.values()) - 1) < 1e-5
    assert_base_unchanged(backbone, before, hook_owner="HiDeLLaVA")  # after the evaluations too


def _batch(backbone, task, size=4):
    dataset = TrainDataset(Path(task.train_file), Path(task.image_root), backbone.conversation_encoder(512),
                           backbone.image_preprocessor())  # fmt: skip
    collate = Collator(backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=False)
    return collate([dataset[i] for i in range(size)]).to(backbone.device)


def test_another_tasks_top_layer_lora_changes_the_output(backbone, two_stages, toy_tasks):
    """The selection matters: the colors samples with shapes' top-layer LoRA instead of their own give
    other logits; their own weights give (nearly) their own LoRA's."""
    first, second, _ = two_stages
    model = HiDeLLaVA(backbone, SETTINGS)
    states = [_tensors(first), _tensors(second)]
    model.load_tasks(states)
    batch = _batch(backbone, toy_tasks["colors"])
    try:
        q = model.wrapper.encode(batch)
        ce = {}
        for index in (0, 1):
            with torch.no_grad(), model.mixture(torch.eye(2)[[index] * 4]):
                ce[index] = model.wrapper.prefixed_cross_entropy(batch, q, None)[0]
        assert not torch.allclose(ce[0], ce[1]), "the top-layer LoRA chosen makes no difference"
        weights = model.task_weights(q)
        assert (weights[:, 0] > 0.5).all()
        with torch.no_grad():
            selected = model(batch).ce_sum  # an evaluation-mode forward weights by the anchors
        assert abs(float(selected - ce[0])) < abs(float(selected - ce[1]))
    finally:
        model.detach()


def test_forcing_a_task_gives_it_all_the_top_layer_weight(backbone, two_stages, toy_tasks):
    first, second, _ = two_stages
    model = HiDeLLaVA(backbone, SETTINGS)
    model.load_tasks([_tensors(first), _tensors(second)])
    try:
        q = model.wrapper.encode(_batch(backbone, toy_tasks["colors"]))
        forced = model.task_weights(q, torch.tensor([1, -1, 1, 0]))
        assert torch.equal(forced[[0, 2]], torch.tensor([[0.0, 1.0]] * 2))
        assert torch.equal(forced[3], torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(forced[1], model.task_weights(q)[1])
    finally:
        model.detach()


def test_a_later_stage_leaves_earlier_tasks_loras_as_they_were(backbone, two_stages):
    """Stage 2 neither rewrites stage 1's file nor changes the top-layer LoRA it contributes: the
    evaluation's top layers use stage 1's tensors exactly as saved."""
    first, second, first_hash = two_stages
    assert hashlib.sha256((first / TENSORS_FILE).read_bytes()).hexdigest() == first_hash
    saved = [_tensors(first), _tensors(second)]
    model = HiDeLLaVA(backbone, SETTINGS)
    model.load_tasks(saved)
    try:
        r = SETTINGS.rank
        assert model.top and len(model.top) < len(model.targets)
        for path in model.top:
            a, b = model._bank[path]
            key = "pairs." + path.replace(".", "/")
            for i, state in enumerate(saved):
                assert torch.equal(a[i * r : (i + 1) * r], state[key + ".A"])
                assert torch.equal(b[:, i * r : (i + 1) * r], state[key + ".B"])
        changed = [k for k in saved[0] if not torch.equal(saved[0][k], saved[1][k])]
        assert changed, "stage 2 trained a LoRA of its own"
    finally:
        model.detach()


@pytest.mark.parametrize("fusion", list(Fusion))
def test_the_lower_layers_use_the_fusion_of_the_stages_loras(backbone, fusion):
    """With random LoRAs for three tasks: a lower layer adds scaling * B_f A_f x with A_f, B_f the sum (the
    authors' code) or the mean of the tasks' A and B; a top layer adds scaling * sum_i w_i B_i A_i x with
    the sample's weights."""
    settings = dataclasses.replace(SETTINGS, fusion=fusion)
    model = HiDeLLaVA(backbone, settings)
    generator = torch.Generator().manual_seed(1)
    template = model._new_task().state_dict()
    states = [{k: torch.randn(v.shape, generator=generator) for k, v in template.items()} for _ in range(3)]
    model.load_tasks(states)
    try:
        lower = sorted(set(model.targets) - model.top)
        top = sorted(model.top)
        assert lower and top
        weights = torch.softmax(torch.randn(2, 3, generator=generator), dim=-1)
        for path in lower + top:
            module = model.targets[path][0]
            key = "pairs." + path.replace(".", "/")
            a_s = [s[key + ".A"] for s in states]
            b_s = [s[key + ".B"] for s in states]
            x = torch.randn(2, 5, module.in_features, generator=generator)
            base = torch.nn.functional.linear(x, module.weight, module.bias)
            if path in model.top:
                expected = (
                    base + sum(weights[:, i, None, None] * (x @ a_s[i].T @ b_s[i].T) for i in range(3)) * 2.0
                )
            else:
                combine = torch.stack(a_s).sum(0) if fusion == Fusion.SUM else torch.stack(a_s).mean(0)
                combine_b = torch.stack(b_s).sum(0) if fusion == Fusion.SUM else torch.stack(b_s).mean(0)
                expected = base + (x @ combine.T @ combine_b.T) * 2.0  # scaling alpha / r = 8 / 4
            with torch.no_grad(), model.mixture(weights):
                torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-4)
    finally:
        model.detach()
    x = torch.randn(2, 5, module.in_features)
    assert torch.equal(module(x), torch.nn.functional.linear(x, module.weight, module.bias))  # hooks gone


def test_task_similarity_weights_image_and_text_and_falls_back_to_text():
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    text = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    anchors_image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    anchors_text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    has_image = torch.tensor([True, False])
    scores = task_similarity(image, text, has_image, anchors_image, anchors_text, image_weight=0.75)
    torch.testing.assert_close(scores, torch.tensor([[0.75, 0.25], [0.0, 1.0]]))


def test_bad_settings_are_refused(backbone):
    for bad, message in (({"temperature": 0}, "temperature"), ({"image_weight": 1.5}, "image_weight"),
                         ({"fusion": "max"}, "fusion"), ({"rank": 0}, "rank"), ({"top_layers": 0}, "top_layers"),
                         ({"init_std": 0.0}, "init_std")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            from_dict(HiDeLLaVAConfig, bad, "hide_llava")
    layers = backbone.llava.config.text_config.num_hidden_layers
    with pytest.raises(ConfigError, match="top_layers"):
        HiDeLLaVA(backbone, HiDeLLaVAConfig(top_layers=layers + 1))
    with pytest.raises(ConfigError, match="target_modules"):
        HiDeLLaVA(backbone, HiDeLLaVAConfig(target_modules=("no_such_proj",)))


def test_its_inference_knobs_rerun_evaluations_only():
    """temperature, image_weight and fusion are evaluation_only: the training jobs' settings (their rerun
    keys) hold them at their defaults, the evaluations' hold the configured values."""
    from modalprompt.config import job_to_json
    from modalprompt.experiment import experiment_from_dict
    from modalprompt.jobs import eval_job, train_job

    raw = {"tasks": [{"name": "a", "train_file": "a.json", "eval_file": "b.json", "image_root": "."}]}
    plain = experiment_from_dict(raw)
    tuned = experiment_from_dict(
        {**raw, "hide_llava": {"temperature": 0.5, "image_weight": 0.2, "fusion": "mean"}}
    )
    assert job_to_json(train_job(tuned, "a", "hide_llava")) == job_to_json(
        train_job(plain, "a", "hide_llava")
    )
    assert job_to_json(eval_job(tuned, "a", "hide_llava")) != job_to_json(eval_job(plain, "a", "hide_llava"))
    assert eval_job(tuned, "a", "hide_llava").options["hide_llava"]["temperature"] == 0.5
    retrained = experiment_from_dict({**raw, "hide_llava": {"rank": 4}})
    assert job_to_json(train_job(retrained, "a", "hide_llava")) != job_to_json(
        train_job(plain, "a", "hide_llava")
    )
