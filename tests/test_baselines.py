"""The baselines on the tiny base: lora_ft, replay, multitask (LoRA of the LLM, peft) and the prompt-pool
methods l2p, dualprompt, coda_prompt. For each: it learns a toy task, what must stay frozen stays frozen, and
a stage file holds only what the stage trained."""

import dataclasses
from pathlib import Path

import pytest
import safetensors.torch
import torch

from modalprompt.data.mixture import kept_records
from modalprompt.methods.coda_prompt import CodaPromptConfig
from modalprompt.methods.dualprompt import DualPromptConfig
from modalprompt.methods.l2p import L2PConfig
from modalprompt.methods.lora_ft import LoraSettings
from modalprompt.methods.replay import ReplayConfig
from modalprompt.model.checkpoint import META_FILE, TENSORS_FILE, read_meta
from modalprompt.run.evaluate import evaluate_stage
from modalprompt.run.train import train_stage

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"max_steps": 2}  # what a test of files and frozen tensors needs
LORA = LoraSettings(rank=4, alpha=8.0, dropout=0.0)
OPTIONS = {
    "lora_ft": {"lora": LORA},
    "replay": {"lora": LORA, "replay": ReplayConfig(buffer_size=6)},
    "multitask": {"lora": LORA},
    "l2p": {"l2p": L2PConfig(pool_size=4, prompt_length=2, top_k=2)},
    "dualprompt": {"dualprompt": DualPromptConfig(g_length=2, e_length=2)},
    "coda_prompt": {"coda_prompt": CodaPromptConfig(components_per_task=3, prompt_length=2)},
}
POOLS = ("l2p", "dualprompt", "coda_prompt")


@pytest.fixture
def quick(training):
    return dataclasses.replace(training, **QUICK)


def _train(backbone, method, training, task, previous, out, name, earlier=()):
    return train_stage(backbone, method, training, task, previous, out, method_name=name, progress=False,
                       options=OPTIONS[name], earlier_tasks=list(earlier))  # fmt: skip


def _evaluate(backbone, method, evaluation, task, checkpoints, name):
    return evaluate_stage(backbone, method, evaluation, task, checkpoints, progress=False, method_name=name,
                          options=OPTIONS[name])  # fmt: skip


def _base_state(backbone) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backbone.llava.state_dict().items()}


def _assert_base_unchanged(backbone, before: dict[str, torch.Tensor]) -> None:
    after = backbone.llava.state_dict()
    assert set(after) == set(before), "the base's modules changed (LoRA layers left behind?)"
    assert all(torch.equal(after[k], v) for k, v in before.items()), "a frozen base weight changed"
    assert not any(p.requires_grad for p in backbone.llava.parameters())


def _tensors(folder) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / TENSORS_FILE)


@pytest.mark.slow  # 8 epochs and an evaluation per method: 5-15 s each on 2 shared cores
@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_baseline_learns_a_toy_task_and_leaves_the_base_as_it_was(
    name, backbone, method, training, evaluation, toy_tasks, tmp_path
):
    before = _base_state(backbone)
    learning = dataclasses.replace(training, epochs=8, lr=3e-2 if name in POOLS else 5e-3)
    result = _train(backbone, method, learning, toy_tasks["colors"], [], tmp_path / "s1", name)
    first, last = result.history[0].ce, sum(m.ce for m in result.history[-4:]) / 4
    assert last < 0.7 * first, f"{name}: CE {first:.3f} -> {last:.3f} over 8 epochs"
    _assert_base_unchanged(backbone, before)
    assert sorted(p.name for p in result.checkpoint.iterdir()) == [META_FILE, TENSORS_FILE]
    predictions = _evaluate(backbone, method, evaluation, toy_tasks["colors"], [result.checkpoint], name)
    assert len(predictions.predictions) == 6 and predictions.stage == 1
    _assert_base_unchanged(backbone, before)


def test_lora_stage_file_holds_only_the_adapter(backbone, method, training, quick, toy_tasks, tmp_path):
    before = _base_state(backbone)
    result = _train(backbone, method, quick, toy_tasks["colors"], [], tmp_path / "s1", "lora_ft")
    _assert_base_unchanged(backbone, before)  # peft's layers are out of the LLM again
    tensors = _tensors(result.checkpoint)
    llm = backbone.llava.model.language_model
    linears = [m for n, m in llm.named_modules() if n.split(".")[-1] in LORA.target_modules]
    expected = sum(LORA.rank * (m.in_features + m.out_features) for m in linears)
    assert all(".lora_A." in k or ".lora_B." in k for k in tensors) and len(tensors) == 2 * len(linears)
    assert sum(t.numel() for t in tensors.values()) == expected
    meta = read_meta(result.checkpoint)
    assert meta.extra["trained_values"] == expected  # the budget the all-methods table reports
    path = result.checkpoint / TENSORS_FILE
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.stat().st_size == 8 + header + 4 * expected


def test_lora_ft_continues_from_the_previous_stage(
    backbone, method, training, quick, evaluation, toy_tasks, tmp_path
):
    """Stage 2 starts from stage 1's adapter (not from zero), and stage 1's file is not touched."""
    s1 = _train(backbone, method, quick, toy_tasks["colors"], [], tmp_path / "s1", "lora_ft")
    before = (s1.checkpoint / TENSORS_FILE).read_bytes()
    one_step = dataclasses.replace(training, max_steps=1, lr=1e-6)
    s2 = _train(backbone, method, one_step, toy_tasks["shapes"], [s1.checkpoint], tmp_path / "s2", "lora_ft")
    assert (s1.checkpoint / TENSORS_FILE).read_bytes() == before
    first, second = _tensors(s1.checkpoint), _tensors(s2.checkpoint)
    lora_b = [k for k in first if ".lora_B." in k]
    assert any(first[k].abs().sum() > 0 for k in lora_b)  # stage 1 moved B away from its zero start
    assert all(torch.allclose(first[k], second[k], atol=1e-4) for k in first)  # one tiny step from there
    assert read_meta(s2.checkpoint).stage == 2
    env = read_meta(s2.checkpoint).extra["environment"]  # the fingerprint every stage records
    assert env["device"] == "cpu" and env["gpu"] is None and env["gpu_count"] == 0 and env["world_size"] == 1
    assert env["dtype"] == "float32" and env["attention"] == "sdpa"
    assert env["versions"]["peft"] == "0.21.2" and env["versions"]["torch"] == torch.__version__
    assert {"cuda", "driver", "python", "platform"} <= set(env) and "flash-attn" in env["versions"]


def test_replay_adds_a_seeded_share_of_each_earlier_task(
    backbone, method, training, quick, toy_tasks, tmp_path
):
    s1 = _train(backbone, method, quick, toy_tasks["colors"], [], tmp_path / "s1", "replay")
    s2 = _train(backbone, method, quick, toy_tasks["shapes"], [s1.checkpoint], tmp_path / "s2", "replay",
                earlier=[toy_tasks["colors"]])  # fmt: skip
    s3 = _train(backbone, method, quick, toy_tasks["count"], [s1.checkpoint, s2.checkpoint], tmp_path / "s3",
                "replay", earlier=[toy_tasks["colors"], toy_tasks["shapes"]])  # fmt: skip
    assert "records_per_task" not in read_meta(s1.checkpoint).extra
    assert read_meta(s2.checkpoint).extra["records_per_task"] == {"shapes": 16, "colors": 6}
    assert read_meta(s3.checkpoint).extra["records_per_task"] == {"count": 16, "colors": 3, "shapes": 3}
    assert s3.steps == 2 and s3.samples == 8  # batches of the 22 mixed records
    # a smaller share is a prefix of the larger one: a record kept at stage 3 was kept at stage 2
    assert set(kept_records(16, 3, 0, 1)) <= set(kept_records(16, 6, 0, 1))
    assert kept_records(16, 6, 0, 1) != kept_records(16, 6, 1, 1)  # seeded


def test_multitask_trains_each_stage_from_the_base_on_all_tasks_so_far(
    backbone, method, training, quick, evaluation, toy_tasks, tmp_path
):
    s2 = _train(backbone, method, quick, toy_tasks["shapes"], [], tmp_path / "s2", "multitask",
                earlier=[toy_tasks["colors"]])  # fmt: skip
    meta = read_meta(s2.checkpoint)
    assert meta.stage == 2 and meta.extra["trained_on"] == ["colors", "shapes"]
    assert meta.extra["records_per_task"] == {"shapes": 16, "colors": 16}
    with pytest.raises(ValueError, match="from the base"):
        _train(backbone, method, quick, toy_tasks["shapes"], [s2.checkpoint], tmp_path / "x", "multitask")
    result = _evaluate(backbone, method, evaluation, toy_tasks["colors"], [s2.checkpoint], "multitask")
    assert len(result.predictions) == 6


@pytest.mark.parametrize("name", ["dualprompt", "coda_prompt"])
def test_pool_methods_keep_earlier_tasks_tensors_frozen(
    name, backbone, method, training, quick, toy_tasks, tmp_path
):
    s1 = _train(backbone, method, quick, toy_tasks["colors"], [], tmp_path / "s1", name)
    before = (s1.checkpoint / TENSORS_FILE).read_bytes()
    s2 = _train(backbone, method, quick, toy_tasks["shapes"], [s1.checkpoint], tmp_path / "s2", name)
    assert (s1.checkpoint / TENSORS_FILE).read_bytes() == before
    first, second = _tensors(s1.checkpoint), _tensors(s2.checkpoint)
    if name == "dualprompt":  # task 2's own E-prompt and key, and the shared G-prompt
        assert set(second) == {"g_prompt", "e_prompt", "e_key"}
        assert second["e_prompt"].shape == (2, backbone.llava.config.text_config.hidden_size)
        assert not torch.equal(first["g_prompt"], second["g_prompt"])
    else:  # only task 2's components
        assert set(second) == {"prompts", "keys", "attention"} and second["prompts"].shape[0] == 3
        flat = torch.cat([first["prompts"].flatten(1), second["prompts"].flatten(1)])
        gram = torch.nn.functional.normalize(flat, dim=-1) @ torch.nn.functional.normalize(flat, dim=-1).T
        assert gram[:3, 3:].abs().max() < 0.5  # task 2's components started orthogonal to task 1's


def test_l2p_trains_one_shared_pool_in_every_stage(backbone, method, training, quick, toy_tasks, tmp_path):
    s1 = _train(backbone, method, quick, toy_tasks["colors"], [], tmp_path / "s1", "l2p")
    s2 = _train(backbone, method, quick, toy_tasks["shapes"], [s1.checkpoint], tmp_path / "s2", "l2p")
    first, second = _tensors(s1.checkpoint), _tensors(s2.checkpoint)
    assert set(second) == {"prompts", "keys"} and second["prompts"].shape[:2] == (4, 2)
    assert not torch.equal(first["prompts"], second["prompts"])  # stage 2 moved the pool on


def test_dualprompt_selects_the_task_whose_key_matches(
    backbone, method, training, quick, evaluation, toy_tasks, tmp_path
):
    s1 = _train(backbone, method, quick, toy_tasks["colors"], [], tmp_path / "s1", "dualprompt")
    s2 = _train(backbone, method, quick, toy_tasks["shapes"], [s1.checkpoint], tmp_path / "s2", "dualprompt")
    result = _evaluate(backbone, method, evaluation, toy_tasks["colors"], [s1.checkpoint, s2.checkpoint],
                       "dualprompt")  # fmt: skip
    assert all(len(p.selected) == 1 and p.selected[0] in ("colors", "shapes") for p in result.predictions)
    assert all(set(p.scores) == {"colors", "shapes"} for p in result.predictions)


@pytest.mark.slow  # 12 stages and 26 evaluations in one process
def test_run_in_one_process_over_seeds_with_the_baselines(tiny_base, tmp_path):
    """`modalprompt run` (run_experiment) with pipeline.seeds: each seed's run in seed-<s>/, row 0 once, and
    each method over the seeds."""
    import json

    import yaml

    from modalprompt.bench.toy import write_toy_tasks
    from modalprompt.experiment import load_experiment
    from modalprompt.run.experiment import run_experiment

    llava, clip = tiny_base
    write_toy_tasks(tmp_path / "data" / "toy", seed=0, train_size=8, test_size=2)
    raw = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
    raw["paths"] = {"models": "/", "data": "data", "results": "results"}
    raw["model"].update(source="hf", llava=str(llava), clip=str(clip), device="cpu")
    raw["tasks"] = raw["tasks"][:2]
    raw["training"].update(max_steps=1, batch_size=4)
    raw["lora"] = {"rank": 2, "alpha": 4.0}
    raw["pipeline"].update(methods=["lora_ft", "multitask", "dualprompt", "zero_shot"], seeds=[1, 2],
                           generate_data="none")  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    summaries = run_experiment(load_experiment(tmp_path / "config.yaml"), progress=False)
    results = tmp_path / "results" / "tiny-demo"
    assert set(summaries) == {"lora_ft", "multitask", "dualprompt", "zero_shot"}
    assert all(summaries[m]["seeds"] == [1, 2] and "std" in summaries[m] for m in summaries)
    for seed in (1, 2):
        meta = read_meta(results / f"seed-{seed}" / "multitask" / "stage-2" / "checkpoint")
        assert meta.extra["settings"]["training"]["seed"] == seed and meta.extra["trained_on"] == [
            "colors",
            "shapes",
        ]
    assert (results / "seed-1" / "zero_shot" / "stage-0" / "eval" / "colors.jsonl").is_file()
    assert not (results / "seed-2" / "zero_shot" / "stage-0").exists()
    assert json.loads((results / "dualprompt" / "metrics.json").read_text())["seeds"] == [1, 2]
    assert "avg_std" in (results / "comparison" / "metrics.csv").read_text().splitlines()[0]
