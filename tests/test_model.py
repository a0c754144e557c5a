"""The wrapper: prompt insertion, queries from one vision pass, losses, what gets gradients."""

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel

from modalprompt.bases.backbone import load_backbone
from modalprompt.bench.tiny import build_tiny_base
from modalprompt.config import ModelConfig, TextFeature
from modalprompt.data.datasets import Collator, ConversationEncoder, ImagePreprocessor, TrainDataset
from modalprompt.model.prompts import PromptStore, TaskPrompt
from modalprompt.model.wrapper import IGNORE_INDEX, ModalPromptModel, insert_prompts


def _batch(backbone, task, n=4):
    encoder = ConversationEncoder(
        backbone.tokenizer, backbone.clip_tokenizer, backbone.image_token_id, backbone.num_image_tokens, 2048
    )
    data = TrainDataset(
        Path(task.train_file), Path(task.image_root), encoder, ImagePreprocessor(backbone.image_processor)
    )
    collate = Collator(backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=False)
    return collate([data[i] for i in range(n)])


def test_insert_prompts_right_padding():
    embeds = torch.arange(2 * 4, dtype=torch.float).reshape(2, 4, 1)  # token values 0..7
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 9, -100, -100]])
    prompt = torch.full((2, 2, 1), -1.0)
    e, m, lab, pos = insert_prompts(embeds, mask, labels, prompt)
    assert e[..., 0].tolist() == [[0, -1, -1, 1, 2, 3], [4, -1, -1, 5, 6, 7]]
    assert m.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert lab.tolist() == [[-100, -100, -100, -100, 5, 6], [-100, -100, -100, 9, -100, -100]]
    assert pos[:, :4].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_insert_prompts_left_padding_goes_after_bos():
    embeds = torch.tensor([[[0.0], [0.0], [1.0], [2.0]], [[1.0], [2.0], [3.0], [4.0]]])  # 1 = BOS
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    prompt = torch.full((2, 1, 1), -1.0)
    e, m, lab, pos = insert_prompts(embeds, mask, None, prompt)
    assert lab is None
    assert e[..., 0].tolist() == [[0, 0, 1, -1, 2], [1, -1, 2, 3, 4]]
    assert m.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert pos.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_insert_prompts_without_bos_goes_first():
    embeds = torch.ones(1, 2, 1)
    e, _, _, _ = insert_prompts(embeds, torch.ones(1, 2), None, torch.zeros(1, 1, 1), after_bos=False)
    assert e[..., 0].tolist() == [[0, 1, 1]]


def test_seeded_init_is_reproducible_and_copies_embedding_rows():
    embeddings = torch.randn(50, 8)
    a, b, c = (TaskPrompt(4, 8, 8, 6) for _ in range(3))
    a.initialise(embeddings, seed=7)
    b.initialise(embeddings, seed=7)
    c.initialise(embeddings, seed=8)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert not torch.equal(a.prompt, c.prompt)
    assert all(any(torch.equal(row, e) for e in embeddings) for row in a.prompt)


def test_key_is_mean_of_key_network_over_prompt_rows():
    """k = mean_j W2 silu(W1 P[j] + b1) + b2, worked out by hand on a 2-row prompt (the MLP of the mean
    row would give 1.5423, the mean of the raw rows something else again)."""
    task = TaskPrompt(prefix_length=2, hidden_size=2, key_hidden_size=2, feature_size=1)
    with torch.no_grad():
        task.prompt.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        task.key_net[0].weight.copy_(torch.eye(2))
        task.key_net[0].bias.zero_()
        task.key_net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
        task.key_net[2].bias.fill_(0.5)
    # silu(x) = x / (1 + e^-x): row 1 -> silu(1) + silu(0) + 0.5 = 0.7310586 + 0 + 0.5
    #                           row 2 -> silu(0) + silu(2) + 0.5 = 0 + 1.7615942 + 0.5
    assert task.key().tolist() == pytest.approx([(1.2310586 + 2.2615942) / 2], abs=1e-6)


def test_store_is_open_ended():
    store = PromptStore(2, 8, 8, 4)
    for i in range(12):
        store.add_task(f"t{i}").initialise(torch.randn(10, 8), seed=i)
    assert store.keys().shape == (12, 4) and store.prompts().shape == (12, 2, 8)
    with pytest.raises(ValueError, match="already"):
        store.add_task("t3")


def test_image_query_reuses_llava_vision_pass_and_equals_clip(backbone, tiny_base, toy_tasks, method):
    assert backbone.clip_vision is None  # the tiny LLaVA's tower is the CLIP vision model
    model = ModalPromptModel(backbone, method)
    batch = _batch(backbone, toy_tasks["colors"])
    queries = model.encode(batch)
    clip = CLIPModel.from_pretrained(tiny_base[1]).eval()
    with torch.no_grad():
        expected_image = clip.get_image_features(pixel_values=batch.pixel_values).pooler_output
        text_out = clip.text_model(input_ids=batch.clip_input_ids, attention_mask=batch.clip_attention_mask)
    assert torch.allclose(queries.image, expected_image, atol=1e-5)
    assert torch.allclose(queries.text, text_out.pooler_output, atol=1e-5)  # 'pooled': no projection


def test_projected_text_feature_uses_clip_text_projection(backbone, tiny_base, toy_tasks, method):
    model = ModalPromptModel(backbone, dataclasses.replace(method, text_feature=TextFeature.PROJECTED))
    batch = _batch(backbone, toy_tasks["colors"])
    clip = CLIPModel.from_pretrained(tiny_base[1]).eval()
    with torch.no_grad():
        expected = clip.get_text_features(
            input_ids=batch.clip_input_ids, attention_mask=batch.clip_attention_mask
        ).pooler_output
    assert torch.allclose(model.encode(batch).text, expected, atol=1e-5)


def test_different_clip_weights_get_their_own_vision_pass(tmp_path, tiny_base, toy_tasks, method):
    _, other_clip = build_tiny_base(tmp_path / "llava", tmp_path / "clip", seed=1)
    backbone = load_backbone(ModelConfig(llava=str(tiny_base[0]), clip=str(other_clip), device="cpu"))
    assert backbone.clip_vision is not None
    batch = _batch(backbone, toy_tasks["colors"])
    queries = ModalPromptModel(backbone, method).encode(batch)
    clip = CLIPModel.from_pretrained(other_clip).eval()
    with torch.no_grad():
        expected = clip.get_image_features(pixel_values=batch.pixel_values).pooler_output
    assert torch.allclose(queries.image, expected, atol=1e-5)


def test_forward_equals_llava_on_hand_built_inputs(backbone, toy_tasks, method):
    """The prompt sits right after BOS; CE is LLaVA's, on the answer tokens only."""
    model = ModalPromptModel(backbone, method)
    model.add_task("colors", seed=0)
    batch = _batch(backbone, toy_tasks["colors"], n=2)
    llava, sample = backbone.llava, _slice(batch, 0)
    with torch.no_grad():
        ids = sample.input_ids
        embeds = llava.get_input_embeddings()(ids)
        features = torch.cat(llava.model.get_image_features(sample.pixel_values).pooler_output)
        embeds = embeds.masked_scatter((ids == backbone.image_token_id)[..., None], features)
        full = torch.cat([embeds[:, :1], model.prompts.tasks[0].prompt[None], embeds[:, 1:]], dim=1)
        logits = llava(inputs_embeds=full).logits[0, :-1]
        prompt_labels = torch.full((method.prefix_length,), IGNORE_INDEX)
        labels = torch.cat([sample.labels[0, :1], prompt_labels, sample.labels[0, 1:]])[1:]
    assert (labels != IGNORE_INDEX).sum() > 0
    expected_ce = torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    assert torch.allclose(model(sample).ce, expected_ce, atol=1e-5)

    out = model(batch)  # padded batch: same selection for all, loss = CE + weighted alignment terms
    assert out.selected.tolist() == [[0], [0]]
    expected = out.ce + method.image_loss_weight * out.align_image + method.text_loss_weight * out.align_text
    assert torch.allclose(out.loss, expected)


def _slice(batch, i):
    n = int(batch.attention_mask[i].sum())
    fields = dict(
        input_ids=batch.input_ids[i : i + 1, :n],
        attention_mask=batch.attention_mask[i : i + 1, :n],
        labels=batch.labels[i : i + 1, :n],
        pixel_values=batch.pixel_values[i : i + 1],
        has_image=batch.has_image[i : i + 1],
        clip_input_ids=batch.clip_input_ids[i : i + 1],
        clip_attention_mask=batch.clip_attention_mask[i : i + 1],
        keys=batch.keys[i : i + 1],
    )
    return type(batch)(**fields)


def test_gradients_reach_only_current_task_and_key_net_only_through_alignment(backbone, toy_tasks, method):
    model = ModalPromptModel(backbone, method)
    model.add_task("a", seed=0)
    model.add_task("b", seed=1)
    batch = _batch(backbone, toy_tasks["colors"])
    model(batch).loss.backward()
    first, current = model.prompts.tasks
    assert all(p.grad is None for p in first.parameters())
    assert current.prompt.grad is not None and current.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.llava.parameters())

    current.zero_grad(set_to_none=True)
    no_alignment = ModalPromptModel(
        backbone, dataclasses.replace(method, image_loss_weight=0.0, text_loss_weight=0.0)
    )
    no_alignment.prompts = model.prompts
    no_alignment(batch).loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in current.key_net.parameters())
    assert current.prompt.grad.abs().sum() > 0  # CE still moves the prompt


def test_text_only_samples_have_no_image_term(backbone, method, tmp_path):
    import json

    (tmp_path / "train.json").write_text(
        json.dumps(
            [
                {
                    "id": "t0",
                    "conversations": [
                        {"from": "human", "value": "Say red."},
                        {"from": "gpt", "value": "red"},
                    ],
                },
                {
                    "id": "t1",
                    "conversations": [
                        {"from": "human", "value": "Say blue."},
                        {"from": "gpt", "value": "blue"},
                    ],
                },
            ]
        )
    )
    from modalprompt.config import TaskConfig

    task = TaskConfig(name="text", train_file=str(tmp_path / "train.json"), image_root=str(tmp_path))
    batch = _batch(backbone, task, n=2)
    assert batch.pixel_values is None and not batch.has_image.any()
    model = ModalPromptModel(backbone, method)
    model.add_task("text", seed=0)
    out = model(batch)
    assert out.align_image.item() == 0.0 and torch.isfinite(out.loss)


def test_clip_whose_features_do_not_fit_the_keys_is_named(backbone, method):
    feature = backbone.visual_projection.out_features
    other = dataclasses.replace(backbone, text_projection=torch.nn.Linear(feature + 16, feature))  # 80-d text
    with pytest.raises(
        ValueError, match=r"text_feature='pooled' gives \d+-d text features but the image query is"
    ):
        ModalPromptModel(other, method).add_task("a", seed=0)


def test_inference_keys_are_computed_once_and_follow_any_write(backbone, method):
    model = ModalPromptModel(backbone, method)
    model.add_task("a", 1)
    model.add_task("b", 2)
    keys, prompts = model.frozen_keys_and_prompts()
    assert model.frozen_keys_and_prompts()[0] is keys  # cached while nothing changes
    assert torch.equal(keys, model.prompts.keys()) and torch.equal(prompts, model.prompts.prompts())
    with torch.no_grad():
        model.prompts.tasks[0].prompt.add_(1.0)  # e.g. a checkpoint loaded into it
    fresh, _ = model.frozen_keys_and_prompts()
    assert fresh is not keys and torch.equal(fresh, model.prompts.keys())
    model.add_task("c", 3)
    assert len(model.frozen_keys_and_prompts()[0]) == 3
