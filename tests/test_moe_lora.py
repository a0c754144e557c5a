"""moe_lora (CoIN's MoELoRA baseline) on the tiny base: the mixture's gates, its output, its start as the
base, its router learning, its stages continued one from the other, its settings, and the base as it was."""

import dataclasses
from pathlib import Path

import pytest
import safetensors.torch
import torch

from modalprompt.config import ConfigError, MethodConfig, from_dict
from modalprompt.data.datasets import Collator, TrainDataset
from modalprompt.errors import CheckpointError
from modalprompt.methods import get
from modalprompt.methods.moe_lora import MoeLoraSettings
from modalprompt.methods.moe_lora.model import LoraExperts, MoeLoraLLM
from modalprompt.model.checkpoint import META_FILE, TENSORS_FILE, read_meta
from modalprompt.run.evaluate import evaluate_stage
from modalprompt.run.train import train_stage

SMALL = MoeLoraSettings(experts=4, rank=8, alpha=16.0, dropout=0.0)
OPTIONS = {"moe_lora": SMALL}


def _train(backbone, training, task, previous, out):
    return train_stage(backbone, MethodConfig(), training, task, previous, out, method_name="moe_lora",
                       options=OPTIONS, progress=False)  # fmt: skip


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / TENSORS_FILE)


def _batch(backbone, task, n=4):
    data = TrainDataset(Path(task.train_file), Path(task.image_root), backbone.conversation_encoder(2048),
                        backbone.image_preprocessor())  # fmt: skip
    collate = Collator(backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=False)
    return collate([data[i] for i in range(n)])


def _base_logits(backbone) -> torch.Tensor:
    ids = torch.arange(3, 19).reshape(2, 8)
    with torch.no_grad():
        return backbone.llava.model.language_model(input_ids=ids).last_hidden_state


def _assert_base_as_it_was(backbone, before: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
    after = backbone.llava.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(p.requires_grad for p in backbone.llava.parameters())
    assert not _mixture_hooks(backbone), "a mixture's hook was left in the base"
    assert torch.equal(_base_logits(backbone), logits)  # the base computes exactly what it did


def _mixture_hooks(backbone) -> list:
    """The mixture's forward hooks left in the base (transformers installs hooks of its own there)."""
    return [h for m in backbone.llava.modules() for h in m._forward_hooks.values()
            if h.__qualname__.startswith("_adds.")]  # fmt: skip


def _experts(settings: MoeLoraSettings, d_in=6, d_out=5, seed=0) -> LoraExperts:
    return LoraExperts(d_in, d_out, settings, torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the mixture itself


def test_dense_gates_are_a_softmax_over_every_expert_per_token():
    layer = _experts(MoeLoraSettings(experts=4, rank=8))
    x = torch.randn(3, 7, 6)
    gates = layer.gates(x)
    assert gates.shape == (3, 7, 4)
    assert torch.allclose(gates.sum(-1), torch.ones(3, 7)) and (gates > 0).all()
    assert torch.allclose(gates, torch.softmax(x @ layer.router.T, dim=-1))


def test_top_k_gates_keep_the_k_largest_logits_renormalised():
    layer = _experts(MoeLoraSettings(experts=4, rank=8, top_k=2))
    x = torch.randn(3, 7, 6)
    gates, logits = layer.gates(x), x @ layer.router.T
    assert ((gates > 0).sum(-1) == 2).all() and torch.allclose(gates.sum(-1), torch.ones(3, 7))
    kept = logits.topk(2, dim=-1).indices
    assert torch.equal(gates > 0, torch.zeros_like(gates, dtype=torch.bool).scatter(-1, kept, True))
    assert torch.allclose(gates.gather(-1, kept), torch.softmax(logits.gather(-1, kept), dim=-1))


def test_a_layer_adds_the_gate_weighted_sum_of_its_experts():
    """W x + alpha / rank * sum_e g_e(x) B_e A_e x, each expert of rank rank / experts, expert by expert."""
    settings = MoeLoraSettings(experts=4, rank=8, alpha=16.0, dropout=0.0)
    layer = _experts(settings)
    with torch.no_grad():
        layer.lora_B.normal_()
    assert (layer.lora_A.shape, layer.lora_B.shape, layer.router.shape) == ((4, 2, 6), (4, 5, 2), (4, 6))
    x = torch.randn(2, 3, 6)
    gates = torch.softmax(x @ layer.router.T, dim=-1)
    expected = sum(gates[..., e, None] * (x @ layer.lora_A[e].T @ layer.lora_B[e].T) for e in range(4)) * 2.0
    assert torch.allclose(layer(x), expected, atol=1e-6)


# ----------------------------------------------------------------------------- in the LLM


def test_the_model_starts_as_the_base_and_its_router_learns(backbone, toy_tasks):
    """B = 0: the same loss as without the mixture, and no gradient reaches the routers yet; after one step
    moved B, every router gets a gradient; tokens are routed differently; release leaves the base as it was."""
    before = {k: v.detach().clone() for k, v in backbone.llava.state_dict().items()}
    logits = _base_logits(backbone)
    batch = _batch(backbone, toy_tasks["colors"])
    model = MoeLoraLLM(backbone, SMALL)
    base_ce = model(batch).ce_sum.detach()
    adapter = model.attach(seed=3)
    try:
        linears = [n for n, m in backbone.llava.model.language_model.named_modules()
                   if n.rsplit(".", 1)[-1] in SMALL.target_modules]  # fmt: skip
        assert sorted(adapter.layers) == sorted(linears) and len(_mixture_hooks(backbone)) == len(linears) > 0
        adapter.train(True)
        ce = model(batch).ce_sum
        assert torch.equal(ce.detach(), base_ce)
        ce.backward()
        routers = [layer.router for layer in adapter.layers.values()]
        assert all(r.grad is not None and not r.grad.any() for r in routers)  # B = 0: no say yet
        torch.optim.AdamW(adapter.parameters(), lr=1e-2).step()
        for p in adapter.parameters():
            p.grad = None
        model(batch).ce_sum.backward()
        assert all(r.grad.abs().sum() > 0 for r in routers), "a router gets no gradient"

        seen = []  # the gates of the first target layer for each token of the batch
        first = adapter.layers[linears[0]]

        def record(module, args, output):
            seen.append(first.gates(args[0]))

        hook = backbone.llava.model.language_model.get_submodule(linears[0]).register_forward_hook(record)
        with torch.no_grad():
            model(batch)
        hook.remove()
        gates = seen[0].flatten(0, -2)
        assert (gates.max(0).values - gates.min(0).values).min() > 1e-4  # every expert's weight varies
        assert gates.argmax(-1).unique().numel() > 1  # and tokens differ in which expert leads
    finally:
        model.detach_adapter()
    _assert_base_as_it_was(backbone, before, logits)


def test_attached_seeded_and_fp32_on_the_base_device(backbone):
    model = MoeLoraLLM(backbone, SMALL)
    first = model.attach(seed=5).state_dict()
    first = {k: v.clone() for k, v in first.items()}
    model.detach_adapter()
    again = model.attach(seed=5)
    try:
        assert all(torch.equal(first[k], v) for k, v in again.state_dict().items())
        assert all(p.dtype == torch.float32 and p.device == backbone.device for p in again.parameters())
        assert all(k.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "router") for k in first)
        assert all(not v.any() for k, v in first.items() if k.endswith(".lora_B"))
        with pytest.raises(RuntimeError, match="already has"):
            model.attach(seed=5)
    finally:
        model.detach_adapter()
    other = model.attach(seed=6).state_dict()
    model.detach_adapter()
    assert not torch.equal(next(iter(first.values())), next(iter(other.values())))


# ----------------------------------------------------------------------------- stages


@pytest.mark.slow  # 8 epochs and an evaluation: about 15 s on 2 shared cores
def test_learns_a_toy_task_and_leaves_the_base_as_it_was(backbone, training, evaluation, toy_tasks, tmp_path):
    before = {k: v.detach().clone() for k, v in backbone.llava.state_dict().items()}
    logits = _base_logits(backbone)
    learning = dataclasses.replace(training, epochs=8, lr=5e-3)
    result = _train(backbone, learning, toy_tasks["colors"], [], tmp_path / "s1")
    first, last = result.history[0].ce, sum(m.ce for m in result.history[-4:]) / 4
    assert last < 0.5 * first, f"CE {first:.3f} -> {last:.3f} over 8 epochs"
    _assert_base_as_it_was(backbone, before, logits)
    predictions = evaluate_stage(backbone, MethodConfig(), evaluation, toy_tasks["colors"], [result.checkpoint],
                                 method_name="moe_lora", options=OPTIONS, progress=False)  # fmt: skip
    assert len(predictions.predictions) == 6 and predictions.stage == 1
    _assert_base_as_it_was(backbone, before, logits)


def test_stage_two_continues_from_stage_one_and_evaluation_uses_the_last(
    backbone, training, toy_tasks, tmp_path
):
    before = {k: v.detach().clone() for k, v in backbone.llava.state_dict().items()}
    logits = _base_logits(backbone)
    quick = dataclasses.replace(training, max_steps=3)
    s1 = _train(backbone, quick, toy_tasks["colors"], [], tmp_path / "s1")
    _assert_base_as_it_was(backbone, before, logits)
    assert sorted(p.name for p in s1.checkpoint.iterdir()) == [META_FILE, TENSORS_FILE]
    file_before = (s1.checkpoint / TENSORS_FILE).read_bytes()
    one_step = dataclasses.replace(training, max_steps=1, lr=1e-6)
    s2 = _train(backbone, one_step, toy_tasks["shapes"], [s1.checkpoint], tmp_path / "s2")
    _assert_base_as_it_was(backbone, before, logits)
    assert (s1.checkpoint / TENSORS_FILE).read_bytes() == file_before  # stage 1's file untouched
    first, second = _tensors(s1.checkpoint), _tensors(s2.checkpoint)

    llm = backbone.llava.model.language_model
    linears = {n: m for n, m in llm.named_modules() if n.rsplit(".", 1)[-1] in SMALL.target_modules}
    shapes = {f"{n}.{p}": s for n, m in linears.items()
              for p, s in (("lora_A", (4, 2, m.in_features)), ("lora_B", (4, m.out_features, 2)),
                           ("router", (4, m.in_features)))}  # fmt: skip
    assert {k: tuple(v.shape) for k, v in second.items()} == shapes  # exactly the experts and routers
    assert all(first[k].abs().sum() > 0 for k in first if k.endswith(".lora_B"))  # stage 1 moved B
    initial = MoeLoraLLM(backbone, SMALL)
    start = {k: v.clone() for k, v in initial.attach(seed=1).state_dict().items()}  # stage 1's seed
    initial.detach_adapter()
    assert any(not torch.equal(first[k], start[k]) for k in first if k.endswith(".router"))  # routers trained
    assert all(torch.allclose(first[k], second[k], atol=1e-4) for k in first)  # one tiny step from stage 1
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert read_meta(s2.checkpoint).stage == 2

    model = MoeLoraLLM(backbone, SMALL)
    method = get("moe_lora")
    try:
        assert method.load_for_evaluation(model, [s1.checkpoint, s2.checkpoint]) == ["colors", "shapes"]
        assert all(torch.equal(v, second[k]) for k, v in model.adapter.state_dict().items())
        assert not any(layer.training for layer in model.adapter.layers.values())
    finally:
        method.release(model)
    _assert_base_as_it_was(backbone, before, logits)


def test_a_stage_file_of_other_settings_is_refused(backbone, training, toy_tasks, tmp_path):
    quick = dataclasses.replace(training, max_steps=1)
    s1 = _train(backbone, quick, toy_tasks["colors"], [], tmp_path / "s1")
    other = {"moe_lora": dataclasses.replace(SMALL, experts=2)}
    with pytest.raises(CheckpointError, match="experts"):
        train_stage(backbone, MethodConfig(), training, toy_tasks["shapes"], [s1.checkpoint], tmp_path / "s2",
                    method_name="moe_lora", options=other, progress=False)  # fmt: skip
    assert not _mixture_hooks(backbone)


# ----------------------------------------------------------------------------- settings


def test_defaults_are_coins():
    s = MoeLoraSettings()
    assert (s.experts, s.rank, s.expert_rank, s.alpha, s.top_k) == (8, 128, 16, 256.0, 0)
    assert (s.dropout, s.init_std) == (0.05, 0.01)
    assert get("moe_lora").sections == ("moe_lora",)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"experts": 3, "rank": 8}, "not a multiple of moe_lora.experts"),
        ({"experts": 4, "rank": 8, "top_k": 5}, "exceeds moe_lora.experts"),
        ({"experts": 0}, "expected a number >= 1"),
        ({"alpha": 0}, "expected a number > 0"),
        ({"dropout": 1.0}, "expected a number >= 0.0 and < 1.0"),
        ({"top_k": -1}, "expected a number >= 0"),
        ({"target_modules": []}, "target_modules is empty"),
    ],
)
def test_bad_settings_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(MoeLoraSettings, values, "moe_lora")


def test_target_modules_that_name_no_layer_are_refused(backbone):
    model = MoeLoraLLM(backbone, MoeLoraSettings(experts=2, rank=2, target_modules=("nope",)))
    with pytest.raises(ConfigError, match="name no linear layer"):
        model.attach(seed=0)
    assert model.adapter is None and not _mixture_hooks(backbone)
