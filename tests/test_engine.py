"""Training engines: plain data parallel and DeepSpeed ZeRO (stages 0-3) give the same tensors.

DeepSpeed runs on this CPU machine through its CPU accelerator and gloo; each DeepSpeed run is its own
`modalprompt train` process (DeepSpeed keeps process-wide state), as the pipeline runs it.
"""

import dataclasses
import sys

import pytest
import torch
from conftest import same_tensors, train_cli

from modalprompt.config import (
    ConfigError,
    DType,
    EngineConfig,
    MethodConfig,
    ModelConfig,
    Schedule,
    TrainingConfig,
)
from modalprompt.experiment import experiment_from_dict
from modalprompt.jobs import TrainJob
from modalprompt.run.engine import PlainEngine, deepspeed_config, make_engine


def test_deepspeed_config_takes_zero_and_offload_from_engine_and_the_rest_from_training():
    config = deepspeed_config(
        EngineConfig(zero_stage=3, offload=True), batch_size=4, accum=2, max_grad_norm=0.5
    )
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (4, 2)
    assert config["gradient_clipping"] == 0.5
    assert "bf16" not in config and "fp16" not in config  # DeepSpeed must not cast the fp32 trained tensors
    plain = deepspeed_config(EngineConfig(zero_stage=1), batch_size=4, accum=1, max_grad_norm=None)
    assert "offload_param" not in plain["zero_optimization"] and plain["gradient_clipping"] == 0.0


def test_no_zero_stage_is_the_plain_engine():
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([p], lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    engine = make_engine(EngineConfig(), torch.nn.Identity(), [p], optimizer, scheduler, batch_size=1,
                         accum=1, max_grad_norm=1.0, world=1)  # fmt: skip
    assert isinstance(engine, PlainEngine) and engine.can_resume
    engine.backward((p * torch.tensor([3.0, 4.0, 0.0])).sum(), last=True)
    engine.step()  # gradient (3, 4, 0) clipped to norm 1: (0.6, 0.8, 0)
    assert torch.allclose(p.detach(), torch.tensor([0.7, 0.6, 1.0])) and p.grad is None


def test_zero_stage_without_deepspeed_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` now raises ImportError
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([p], lr=0.5)
    with pytest.raises(ConfigError, match=r"engine.zero_stage is 3.*pip install 'modalprompt\[deepspeed\]'"):
        make_engine(EngineConfig(zero_stage=3), torch.nn.Identity(), [p], optimizer, None, batch_size=1, accum=1,
                    max_grad_norm=None, world=1)  # fmt: skip


def test_offload_without_zero_stage_3_names_both_keys():
    raw = {"tasks": [], "engine": {"zero_stage": 2, "offload": True}}
    with pytest.raises(ConfigError, match=r"cfg.yaml: engine.offload is true but engine.zero_stage is 2"):
        experiment_from_dict(raw, "cfg.yaml")
    with pytest.raises(ConfigError, match=r"engine.zero_stage = 4 is invalid"):
        experiment_from_dict({"tasks": [], "engine": {"zero_stage": 4}}, "cfg.yaml")


@pytest.fixture(scope="module")
def stage_job(tiny_base, toy_tasks):
    """Accumulation over 2 micro-batches, clipping, warm-up and a cosine schedule, and a last step with one
    micro-batch (16 records in micro-batches of 4: 11 in 2.75 epochs, 6 steps): what the engines must agree on."""
    model = ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[1]), device="cpu")
    training = TrainingConfig(epochs=2.75, batch_size=4, grad_accum_steps=2, lr=1e-2, warmup_ratio=0.2,
                              schedule=Schedule.COSINE, max_grad_norm=0.5)  # fmt: skip
    return TrainJob(
        model=model, method=MethodConfig(prefix_length=4), training=training, task=toy_tasks["count"]
    )


@pytest.fixture(scope="module")
def plain_stage(stage_job, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "checkpoint"
    train_cli(stage_job, out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("flags", ["0", "1", "2", "3", "3 --offload yes"])
def test_deepspeed_zero_stage_gives_the_plain_engines_tensors(flags, stage_job, plain_stage, tmp_path):
    pytest.importorskip("deepspeed")
    done = train_cli(stage_job, tmp_path / "checkpoint", "--zero-stage", *flags.split())
    same_tensors(plain_stage, tmp_path / "checkpoint", atol=1e-5)
    assert '"steps"' in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", ["2", "3"])
def test_deepspeed_on_two_processes_equals_one_plain_process(zero_stage, stage_job, plain_stage, tmp_path):
    """2 gloo processes, each with half of the global batch: ZeRO-2 partitions the trained tensors' gradients
    and optimizer state (DeepSpeed averages the gradients), ZeRO-3 shards the frozen base."""
    pytest.importorskip("deepspeed")
    half = dataclasses.replace(stage_job, training=dataclasses.replace(stage_job.training, batch_size=2))
    done = train_cli(half, tmp_path / "checkpoint", "--zero-stage", zero_stage, processes=2)
    assert len([line for line in done.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 reports
    same_tensors(plain_stage, tmp_path / "checkpoint", atol=1e-5)


@pytest.mark.slow
def test_deepspeed_stage_with_a_state_dir_says_it_saves_no_state(stage_job, tmp_path):
    pytest.importorskip("deepspeed")
    done = train_cli(stage_job, tmp_path / "checkpoint", "--zero-stage", "2", "--state-dir", str(tmp_path / "state"),
                  "--save-every", "1")  # fmt: skip
    assert "engine.zero_stage=2: no mid-stage state is saved" in done.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.slow
def test_zero3_shards_the_frozen_base_and_leaves_the_trained_tensors_whole(tiny_base, tmp_path):
    """In this process (a fresh base, since sharding changes it): every base weight becomes a ZeRO-3
    parameter whose data is released between uses; the prompt store is untouched."""
    pytest.importorskip("deepspeed")
    import torch.distributed as dist

    from modalprompt.bases.backbone import load_backbone
    from modalprompt.model.wrapper import ModalPromptModel
    from modalprompt.run.engine import ShardedBaseEngine

    backbone = load_backbone(
        ModelConfig(llava=str(tiny_base[0]), clip=str(tiny_base[1]), device="cpu", dtype=DType.BFLOAT16)
    )
    model = ModalPromptModel(backbone, MethodConfig(prefix_length=4))
    params = list(model.add_task("colors", seed=0).parameters())
    optimizer = torch.optim.AdamW(params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    try:
        engine = make_engine(EngineConfig(zero_stage=3), model, params, optimizer, scheduler, batch_size=4,
                             accum=1, max_grad_norm=None, world=1)  # fmt: skip
        assert isinstance(engine, ShardedBaseEngine) and engine.can_resume
        base = dict(backbone.llava.named_parameters())
        assert all(hasattr(p, "ds_id") for p in base.values())
        large = base["model.language_model.layers.0.mlp.up_proj.weight"]
        assert large.ds_numel == large.ds_tensor.numel() > 0 and large.data.numel() == 0  # released
        assert large.ds_tensor.dtype == torch.bfloat16  # sharded in the base's own dtype: no fp32 copy
        assert not any(hasattr(p, "ds_id") for p in model.prompts.parameters())
        assert all(p.numel() > 0 for p in model.prompts.parameters())
    finally:
        dist.destroy_process_group()
