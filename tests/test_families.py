"""Every supported base family on tiny random models built here (save_pretrained of tiny configs, loaded by the
production code path): LLaVA-1.5 (`llava`), LLaVA-NeXT (`llava_next`: any-resolution tiles, a token count
per image) and Qwen2.5-VL (`qwen2_5_vl`: its own vision encoder, ChatML template, 3D rotary positions).

Each property is checked against the transformers class's own code: its image features, its forward on
`input_ids` and pixels, and (Qwen2.5-VL) its own `get_rope_index` numbering of a sequence with P text tokens
where the prompts go.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
import safetensors.torch
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel

from modalprompt.bases.backbone import Backbone, load_backbone
from modalprompt.bases.llava_next import llava_next_image_tokens
from modalprompt.bench.tiny import build_tiny_base
from modalprompt.config import MethodConfig, ModelConfig, TaskConfig, TrainingConfig
from modalprompt.data.datasets import Collator, EvalDataset, ImagePreprocessor, TrainDataset
from modalprompt.errors import BaseModelError, CheckpointError
from modalprompt.model.checkpoint import META_FILE, TENSORS_FILE, load_stages
from modalprompt.model.prompts import stage_seed
from modalprompt.model.wrapper import IGNORE_INDEX, ModalPromptModel
from modalprompt.run.train import train_stage

FAMILIES = ("llava", "llava_next", "qwen2_5_vl")
# (width, height): square, wide, tall, extreme and odd aspect ratios (LLaVA-NeXT cuts different paddings)
SIZES = [(48, 48), (64, 48), (48, 64), (90, 30), (30, 90), (57, 41)]


class Base(NamedTuple):
    family: str
    model_dir: Path
    clip_dir: Path
    backbone: Backbone


@pytest.fixture(scope="module", params=FAMILIES)
def base(request, tmp_path_factory) -> Base:
    folder = tmp_path_factory.mktemp(request.param)
    model_dir, clip_dir = build_tiny_base(folder / "model", folder / "clip", seed=0, family=request.param)
    backbone = load_backbone(ModelConfig(llava=str(model_dir), clip=str(clip_dir), device="cpu"))
    return Base(request.param, model_dir, clip_dir, backbone)


@pytest.fixture(scope="module")
def sized_task(tmp_path_factory) -> TaskConfig:
    """Images of every size in SIZES, one training record and one question each; a text-only record and
    question last."""
    folder = tmp_path_factory.mktemp("sized")
    train, test = [], []
    for i, (width, height) in enumerate(SIZES):
        image = Image.new("RGB", (width, height), (40 * i % 256, 90, 200 - 20 * i))
        image.paste((250, 20, 20), (width // 4, height // 4, width // 2, height // 2))
        image.save(folder / f"{i}.png")
        conversation = [{"from": "human", "value": "<image>\nWhat color is the square?"},
                        {"from": "gpt", "value": "red"}]  # fmt: skip
        train.append({"id": f"s{i}", "image": f"{i}.png", "conversations": conversation})
        test.append({"question_id": f"q{i}", "image": f"{i}.png", "text": "What color?", "answer": "red"})
    text_only = [{"from": "human", "value": "Say blue."}, {"from": "gpt", "value": "blue"}]
    train.append({"id": "text", "conversations": text_only})
    test.append({"question_id": "qtext", "text": "Say blue.", "answer": "blue"})
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "test.json").write_text(json.dumps(test))
    return TaskConfig(name="sized", train_file=str(folder / "train.json"), eval_file=str(folder / "test.json"),
                      image_root=str(folder))  # fmt: skip


def train_data(backbone: Backbone, task: TaskConfig) -> TrainDataset:
    encoder = backbone.conversation_encoder(2048)
    return TrainDataset(Path(task.train_file), Path(task.image_root), encoder, backbone.image_preprocessor())


def eval_data(backbone: Backbone, task: TaskConfig) -> EvalDataset:
    encoder = backbone.conversation_encoder(10**9)
    return EvalDataset(Path(task.eval_file), Path(task.image_root), encoder, backbone.image_preprocessor())


def collate(backbone: Backbone, samples, left: bool):
    return Collator(backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=left)(
        samples
    )


def own_image_features(family: str, backbone: Backbone, batch) -> list[torch.Tensor]:
    """Each image's LLM features as the transformers class computes them, with its own arguments."""
    model = backbone.llava.model
    if family == "llava":
        return list(model.get_image_features(batch.pixel_values).pooler_output)
    if family == "llava_next":
        return list(model.get_image_features(batch.pixel_values, batch.image_sizes).pooler_output)
    return list(model.get_image_features(batch.pixel_values, batch.image_grid_thw).pooler_output)


def own_forward(family: str, backbone: Backbone, ids, mask, batch, embeds=None) -> torch.Tensor:
    """The class's own forward on input ids and pixels (its own image features and positions); `embeds`
    replaces the token embeddings where it can (Qwen2.5-VL takes both)."""
    extra = {"image_sizes": batch.image_sizes} if family == "llava_next" else {}
    if family == "qwen2_5_vl":
        image = backbone.llava.config.image_token_id
        extra = {"image_grid_thw": batch.image_grid_thw, "mm_token_type_ids": (ids == image).int()}
        if embeds is not None:
            extra["inputs_embeds"] = embeds
    out = backbone.llava(input_ids=ids, attention_mask=mask, pixel_values=batch.pixel_values, use_cache=False,
                         **extra)  # fmt: skip
    return out.logits


def expected_lead(family: str, backbone: Backbone) -> list[int]:
    """The tokens every sequence starts with, before the prompts: BOS, or Qwen's system turn."""
    if family == "qwen2_5_vl":
        text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        return backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    return [backbone.tokenizer.bos_token_id]


def _own_positions(backbone: Backbone, ids, mask, batch) -> torch.Tensor:
    """Qwen2.5-VL's own 3D positions of `ids` (its get_rope_index)."""
    image = backbone.llava.config.image_token_id
    positions, _ = backbone.llava.model.get_rope_index(
        ids, (ids == image).int(), image_grid_thw=batch.image_grid_thw, attention_mask=mask
    )
    return positions


# --------------------------------------------------------------------------- loading and the data pipeline


def test_the_family_is_detected_and_another_configured_one_is_named(base):
    assert base.backbone.family == base.family
    other = next(f for f in FAMILIES if f != base.family)
    with pytest.raises(BaseModelError, match=f"model.family is {other} but .*model_type '{base.family}'"):
        load_backbone(
            ModelConfig(llava=str(base.model_dir), clip=str(base.clip_dir), family=other, device="cpu")
        )


def test_a_folder_the_family_cannot_use_is_named_with_the_fix(base, tmp_path):
    def copy(change_config=None) -> Path:
        folder = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(base.model_dir, folder)
        config = json.loads((folder / "config.json").read_text())
        if change_config:
            change_config(config)
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    def load(folder: Path) -> None:
        load_backbone(ModelConfig(llava=str(folder), clip=str(base.clip_dir), device="cpu"))

    with pytest.raises(
        BaseModelError, match=r"model_type 'foo', expected one of 'llava' \(llava\), 'llava_next'"
    ):
        load(copy(lambda c: c.update(model_type="foo")))
    if base.family == "llava_next":
        with pytest.raises(
            BaseModelError, match=r"a 'mistral' LLM uses its own chat template.*llava-v1\.6-vicuna"
        ):
            load(copy(lambda c: c["text_config"].update(model_type="mistral")))
        with pytest.raises(BaseModelError, match="vision_feature_select_strategy 'full'"):
            load(copy(lambda c: c.update(vision_feature_select_strategy="full")))
    if base.family == "qwen2_5_vl":
        folder = copy()
        (folder / "chat_template.jinja").unlink()
        with pytest.raises(BaseModelError, match="has no chat template"):
            load(folder)


def test_image_tokens_are_the_models_own_feature_count(base, sized_task):
    """Per image: the tokens the data pipeline writes (also from the file header alone, as lengths() counts
    them) equal the rows of the class's own image features, for every aspect ratio."""
    b = base.backbone
    data = train_data(b, sized_task)
    samples = [data[i] for i in range(len(SIZES))]
    assert data.lengths()[: len(SIZES)] == [len(s.input_ids) for s in samples]
    batch = collate(b, samples, left=False)
    with torch.no_grad():
        features = own_image_features(base.family, b, batch)
    counts = [sample.input_ids.count(b.image_token_id) for sample in samples]
    assert counts == [len(f) for f in features]
    if base.family != "llava":
        assert len(set(counts)) > 1  # the count does depend on the image's size here
    if base.family == "llava_next":
        config = b.llava.config
        assert counts == [llava_next_image_tokens(h, w, config) for w, h in SIZES]


def test_without_prompts_the_composed_forward_is_the_models_own(base, sized_task):
    """Embeddings with the adapter's image features in place, run at the adapter's positions, give the logits
    of the class's own forward on input ids and pixels (right-padded batch, text-only sample included)."""
    b = base.backbone
    data = train_data(b, sized_task)
    batch = collate(b, [data[i] for i in range(len(data))], left=False)
    model = ModalPromptModel(b, _method())
    with torch.no_grad():
        queries = model.encode(batch)
        positions = b.base.positions(batch, batch.attention_mask, model.lead, 0)
        ours = b.base.logits(queries.embeds, batch.attention_mask, positions)
        own = own_forward(base.family, b, batch.input_ids, batch.attention_mask, batch)
    attended = batch.attention_mask.bool()
    assert torch.allclose(ours[attended], own[attended], atol=1e-5)


def _method() -> MethodConfig:
    return MethodConfig(prefix_length=4)


# --------------------------------------------------------------------------- prompts in place


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_prompts_land_after_the_lead_with_mask_labels_and_positions(base, sized_task, left):
    b = base.backbone
    data = train_data(b, sized_task)
    batch = collate(b, [data[i] for i in (3, 0, len(SIZES))], left=left)  # wide, square, text-only
    model = ModalPromptModel(b, _method())
    lead = expected_lead(base.family, b)
    assert model.lead == len(lead)
    plen = 6
    with torch.no_grad():
        embeds = b.base.embed(batch.input_ids)
        prompt = torch.randn(len(embeds), plen, embeds.shape[-1])
        new_embeds, mask, labels, positions = model._insert(embeds, batch, prompt, batch.labels)
    for i in range(len(embeds)):
        first = int(batch.attention_mask[i].argmax())
        n = int(batch.attention_mask[i].sum())
        ids = batch.input_ids[i, first : first + n]
        assert ids[: len(lead)].tolist() == lead
        start = first + len(lead)  # where the prompt goes in the new sequence
        assert torch.equal(new_embeds[i, start : start + plen], prompt[i])
        real = list(range(first, start)) + list(range(start + plen, start + plen + n - len(lead)))
        assert torch.equal(new_embeds[i, real], embeds[i, first : first + n])  # the sample's tokens, in order
        assert mask[i].tolist() == [
            1 if j in real or start <= j < start + plen else 0 for j in range(len(mask[i]))
        ]
        assert labels[i, start : start + plen].eq(IGNORE_INDEX).all()
        assert torch.equal(labels[i, real], batch.labels[i, first : first + n])
        # the positions the model's own numbering gives the sample with P text tokens in the prompt's place
        filled = torch.cat(
            [ids[: len(lead)], torch.full((plen,), b.tokenizer.pad_token_id), ids[len(lead) :]]
        )
        if base.family == "qwen2_5_vl":
            sample = collate(b, [data[[3, 0, len(SIZES)][i]]], left=False)
            expected = _own_positions(b, filled[None], None, sample)[:, 0]  # (3, n + P)
            assert positions.shape == (3, *mask.shape)
            got = positions[:, i, sorted(real + list(range(start, start + plen)))]
            assert torch.equal(got, expected)
            assert positions[:, i][:, mask[i] == 0].eq(0).all()
        else:
            got = positions[i, mask[i].bool()]
            assert torch.equal(got, torch.arange(n + plen))


# --------------------------------------------------------------------------- training


def test_a_stage_trains_only_its_prompt_and_key_network(base, toy_tasks, tmp_path):
    b = base.backbone
    method = _method()
    training = TrainingConfig(epochs=1, batch_size=2, lr=1e-2, warmup_ratio=0.0, max_steps=1)
    frozen = {
        n: p.detach().clone() for n, p in [*b.llava.named_parameters(), *b.clip_text.named_parameters()]
    }
    first = train_stage(b, method, training, toy_tasks["colors"], [], tmp_path / "s1", progress=False)
    before = (first.checkpoint / TENSORS_FILE).read_bytes()
    second = train_stage(b, method, training, toy_tasks["count"], [first.checkpoint], tmp_path / "s2",
                         progress=False)  # fmt: skip
    assert (first.checkpoint / TENSORS_FILE).read_bytes() == before
    trained = safetensors.torch.load_file(second.checkpoint / TENSORS_FILE)
    assert set(trained) == {
        "prompt",
        "key_net.0.weight",
        "key_net.0.bias",
        "key_net.2.weight",
        "key_net.2.bias",
    }
    init = ModalPromptModel(b, method)
    init.prompts.add_task("prev")
    start = init.add_task("x", stage_seed(method.prompt_init_seed, 2)).state_dict()
    assert not torch.equal(trained["prompt"], start["prompt"])
    assert not torch.equal(trained["key_net.2.weight"], start["key_net.2.weight"])
    after = dict([*b.llava.named_parameters(), *b.clip_text.named_parameters()])
    assert all(torch.equal(after[n], p) for n, p in frozen.items())  # the base did not move

    # one step by hand: gradients reach the current task's tensors only, never the base or an earlier task
    model = ModalPromptModel(b, method)
    load_stages(model, [first.checkpoint])
    current = model.add_task("count", seed=1)
    data = train_data(b, toy_tasks["count"])
    model(collate(b, [data[i] for i in range(3)], left=False)).loss.backward()
    assert current.prompt.grad is not None and current.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.prompts.tasks[0].parameters())
    assert all(p.grad is None for p in b.llava.parameters())


# --------------------------------------------------------------------------- generation


def test_generation_with_prompts_equals_a_hand_composed_forward(base, sized_task):
    """Greedy tokens of the wrapper (KV cache, the adapter's positions) equal greedy decoding by hand without
    a cache: LLaVA: the class's own image features and the prompts concatenated after BOS, default positions;
    Qwen2.5-VL: the class's own forward on ids with P text tokens in the prompts' place (its own image
    features and 3D positions), their embeddings replaced by the prompt rows."""
    b = base.backbone
    model = ModalPromptModel(b, _method())
    model.add_task("a", seed=1)
    model.add_task("b", seed=2)
    data = eval_data(b, sized_task)
    new_tokens = 5
    for index in (1, 3):  # a wide and an extreme image: different token counts and grids
        batch = collate(b, [data[index]], left=True)
        with torch.no_grad():
            generated = model.generate(batch, max_new_tokens=new_tokens)
            prefix = model._prefix(generated.selected)  # (1, k * L, d): the selection is the method's
            lead, plen = model.lead, prefix.shape[1]
            ids = batch.input_ids
            filled = torch.cat(
                [ids[:, :lead], torch.full((1, plen), b.tokenizer.pad_token_id), ids[:, lead:]], 1
            )
            tokens: list[int] = []
            for _ in range(new_tokens):
                if base.family == "qwen2_5_vl":
                    embeds = b.llava.get_input_embeddings()(filled)
                    embeds[:, lead : lead + plen] = prefix
                    logits = own_forward(base.family, b, filled, torch.ones_like(filled), batch, embeds)
                else:
                    embeds = b.llava.get_input_embeddings()(ids)
                    features = torch.cat(own_image_features(base.family, b, batch))
                    embeds = embeds.masked_scatter((ids == b.image_token_id)[..., None], features)
                    embeds = torch.cat([embeds[:, :lead], prefix, embeds[:, lead:]], dim=1)
                    logits = b.llava(inputs_embeds=embeds, use_cache=False).logits
                token = int(logits[0, -1].argmax())
                tokens.append(token)
                filled = torch.cat([filled, torch.tensor([[token]])], dim=1)
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
                if token == b.tokenizer.eos_token_id:
                    break
        assert generated.token_ids[0, : len(tokens)].tolist() == tokens


def test_batched_generation_equals_one_at_a_time(base, sized_task):
    """A left-padded batch of images of different sizes (different token counts and grids), text-only
    questions among them, with per-sample prompts, gives each sample what it gets alone."""
    b = base.backbone
    model = ModalPromptModel(b, _method())
    for seed, name in enumerate(("a", "b", "c"), start=1):
        model.add_task(name, seed=seed)
    data = eval_data(b, sized_task)
    samples = [data[i] for i in range(len(data))]
    with torch.no_grad():
        batched = model.generate(collate(b, samples, left=True), max_new_tokens=5)
        single = [model.generate(collate(b, [sample], left=True), max_new_tokens=5) for sample in samples]
    for i, one in enumerate(single):
        assert batched.selected[i].tolist() == one.selected[0].tolist()
        assert torch.allclose(batched.scores[i], one.scores[0], atol=1e-5)
        tokens = one.token_ids[0].tolist()
        assert batched.token_ids[i, : len(tokens)].tolist() == tokens
    assert len({tuple(s.selected[0].tolist()) for s in single}) > 1  # samples pick different prompts


# --------------------------------------------------------------------------- the image query


def test_the_image_query_comes_from_where_the_readme_says(base, sized_task):
    """LLaVA-1.5: the tower's own pass on its pixels; LLaVA-NeXT: the tower's pass on each image's base tile
    (the whole image resized to the tower's size); Qwen2.5-VL: the separate CLIP on the CLIP folder's own
    preprocessing of the image (padded to a square). Each equals CLIPModel.get_image_features."""
    b = base.backbone
    data = eval_data(b, sized_task)
    batch = collate(b, [data[i] for i in range(len(SIZES))], left=True)
    query = ModalPromptModel(b, _method()).encode(batch).image
    clip = CLIPModel.from_pretrained(base.clip_dir).eval()
    if base.family == "llava":
        assert b.clip_vision is None
        pixels = batch.pixel_values
    elif base.family == "llava_next":
        assert b.clip_vision is None
        tiles = [
            int(v) for v in torch.tensor([len(data[i].pixel_values) for i in range(len(SIZES))]).cumsum(0)
        ]
        pixels = batch.pixel_values[[0, *tiles[:-1]]]  # each image's first tile: the base tile
    else:
        assert b.clip_vision is not None
        preprocess = ImagePreprocessor(CLIPImageProcessorPil.from_pretrained(base.clip_dir))
        root = Path(sized_task.image_root)
        pixels = torch.stack([preprocess(Image.open(root / f"{i}.png")) for i in range(len(SIZES))])
    with torch.no_grad():
        expected = clip.get_image_features(pixel_values=pixels).pooler_output
    assert torch.allclose(query, expected, atol=1e-5)


# --------------------------------------------------------------------------- stage files


def test_stage_files_record_the_family_and_refuse_another(base, toy_tasks, tmp_path):
    b, method = base.backbone, _method()
    training = TrainingConfig(epochs=1, batch_size=4, lr=1e-2, warmup_ratio=0.0, max_steps=1)
    folder = train_stage(
        b, method, training, toy_tasks["colors"], [], tmp_path / "s1", progress=False
    ).checkpoint
    meta_path = folder / META_FILE
    meta = json.loads(meta_path.read_text())
    assert meta["family"] == base.family
    load_stages(ModalPromptModel(b, method), [folder])  # its own family loads

    other = next(f for f in FAMILIES if f != base.family)
    meta_path.write_text(json.dumps({**meta, "family": other}))
    with pytest.raises(CheckpointError, match=f"trained on a {other} base model, but the loaded base model is a "
                                              f"{base.family}"):  # fmt: skip
        load_stages(ModalPromptModel(b, method), [folder])

    # a stage file written before the family was recorded is LLaVA-1.5's
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "family"}))
    if base.family == "llava":
        load_stages(ModalPromptModel(b, method), [folder])
    else:
        with pytest.raises(CheckpointError, match=f"trained on a llava base model.*a {base.family}"):
            load_stages(ModalPromptModel(b, method), [folder])


# --------------------------------------------------------------------------- Qwen2.5-VL's chat template


def test_chat_template_ids_are_the_templates_own_with_loss_on_answers(tmp_path):
    folder = tmp_path / "qwen"
    model_dir, clip_dir = build_tiny_base(folder / "model", folder / "clip", family="qwen2_5_vl")
    b = load_backbone(ModelConfig(llava=str(model_dir), clip=str(clip_dir), device="cpu"))
    encoder = b.conversation_encoder(2048)
    tokenizer = b.tokenizer
    turns = [("<image>\nWhat color?", "red"), ("And the shape?", "a circle")]
    ids, labels = encoder.encode_conversation(turns, image_tokens=3)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]},
                {"role": "assistant", "content": "red"},
                {"role": "user", "content": "And the shape?"},
                {"role": "assistant", "content": "a circle"}]  # fmt: skip
    own = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    image = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    at = own.index(image)
    assert ids == own[:at] + [image] * 3 + own[at + 1 :]  # the template's ids, the image expanded
    answers = [tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])]
    assert answers == ["red<|im_end|>a circle<|im_end|>"]  # each answer and the EOS that closes its turn
    question = encoder.encode_question("<image>\nWhat color?", image_tokens=3)
    assert ids[: len(question)] == question  # evaluation's prompt is training's prefix
    assert tokenizer.decode(question).endswith("<|im_start|>assistant\n")
    assert encoder.lead == len(expected_lead("qwen2_5_vl", b))
