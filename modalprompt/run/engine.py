"""How a training step's gradients become an optimizer step: plain data parallel, or DeepSpeed ZeRO.

Only the current task's prompt and key network train (about 20M values on a 7B base), so plain data
parallel needs no wrapper: after the backward passes of an optimizer step, each trained tensor's gradient
is summed over the processes with one all-reduce (DDP's result for these tensors; bucketing and overlap
buy nothing at this size), then clipped, then AdamW steps. That is `PlainEngine`, the default.

`engine.zero_stage` asks for DeepSpeed:
- 3 (`ShardedBaseEngine`), the one that matters for big bases: ZeRO-3 shards the *frozen base* over the
  processes (with `engine.offload` the shards stay in CPU memory), for bases that do not fit one GPU. The
  trained tensors stay whole on every process and train as in the plain engine (so mid-stage states still
  resume): sharding 20M values would save little and would hide them from the model's own forward.
- 0-2 (`DeepSpeedEngine`): DeepSpeed owns the trained tensors (1 and 2 partition their optimizer state and
  gradients); the base is whole on every process.
The frozen base keeps its dtype (bf16 on GPU) and the trained tensors fp32: DeepSpeed's own bf16/fp16
modes, which would cast the trained tensors, stay off; autocast does the mixed precision, as in plain runs.

Every engine gives the tensors of one process with the whole global batch (tests compare them).

DeepSpeed compiles some of its ops on first use (on CPU, `deepspeed_shm_comm`) through torch's extension
builder, into a per-op folder under the extensions cache guarded by a `lock` file; a process that finds the
lock waits until it is deleted. A build killed halfway leaves the lock behind and every later job would wait
forever, so before DeepSpeed starts `check_build_locks` turns such a lock into an error that names it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn

from modalprompt.config import ConfigError, EngineConfig

LOCK_FILE = "lock"  # the name torch's extension builder gives its lock in each op's build folder


class StaleBuildLock(ConfigError):
    """A torch extension build's lock that no process holds: DeepSpeed would wait for it forever."""


def extensions_root() -> Path:
    """Where torch builds JIT extensions, DeepSpeed's ops among them: $TORCH_EXTENSIONS_DIR, else torch's
    per-user cache folder for this Python and accelerator (torch.utils.cpp_extension's rule, without
    creating anything). Each op builds in a folder of its own name below it."""
    if (root := os.environ.get("TORCH_EXTENSIONS_DIR")) is not None:
        return Path(root)
    from torch.utils import cpp_extension

    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(cpp_extension.get_default_build_root()) / f"{python}_{accelerator}"


def _held(identity: tuple[int, int]) -> bool:
    """Whether a process on this machine has the file with this (device, inode) open: the builder keeps its
    lock's descriptor open from taking the lock until it deletes it."""
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                try:
                    opened = fd.stat()
                except OSError:
                    continue
                if (opened.st_dev, opened.st_ino) == identity:
                    return True
        except OSError:  # a process that ended, or another user's
            continue
    return False


def _unheld(lock: Path) -> bool:
    """The lock exists, is this user's (another user's processes cannot be seen), and no process on this
    machine holds it."""
    try:
        stat = lock.stat()
    except FileNotFoundError:
        return False
    return stat.st_uid == os.getuid() and not _held((stat.st_dev, stat.st_ino))


def _orphaned(lock: Path) -> bool:
    """An unheld lock that stays unheld: torch closes the descriptor just before it deletes the file, so a
    build finishing right now is given torch's own polling interval to delete it."""
    from torch.utils.file_baton import FileBaton

    if not _unheld(lock):
        return False
    time.sleep(FileBaton(str(lock)).wait_seconds)
    return _unheld(lock)


def check_build_locks(root: Path | None = None) -> None:
    """Raise StaleBuildLock for an extension build lock under `root` (default: `extensions_root()`) that no
    process on this machine holds. Only this machine's processes can be seen: a folder shared with other
    machines (a network home) whose op another machine is building right now reads as stale too, and the
    message says so. Without /proc nothing can be told and nothing is checked."""
    if not Path("/proc/self/fd").is_dir():
        return
    root = extensions_root() if root is None else Path(root)
    for lock in sorted(root.glob(f"*/{LOCK_FILE}")):
        if _orphaned(lock):
            raise StaleBuildLock(
                f"{lock} is the lock of a torch extension build (DeepSpeed compiles its {lock.parent.name} op "
                "there) and no process on this machine holds it: a build was stopped before it finished, and "
                f"DeepSpeed would wait for the lock forever. Delete it (rm {lock}) and run again. If other "
                "machines share that folder and one of them is building the op right now, wait for it to finish "
                "instead (TORCH_EXTENSIONS_DIR set to a folder of this machine keeps builds apart)."
            )


class Engine(Protocol):
    """What `train_stage` asks of an engine, per optimizer step: forward and backward each micro-batch
    (`last` marks the step's last one), then `step`."""

    can_resume: bool  # whether the mid-stage state (optimizer and scheduler) can be saved and restored

    def forward(self, batch): ...

    def backward(self, loss: torch.Tensor, last: bool) -> None: ...

    def step(self) -> None: ...


class PlainEngine:
    can_resume = True

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter], optimizer, scheduler,
                 max_grad_norm: float | None, world: int):  # fmt: skip
        self.model, self.params, self.optimizer, self.scheduler = model, list(params), optimizer, scheduler
        self.max_grad_norm, self.world = max_grad_norm, world

    def forward(self, batch):
        return self.model(batch)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def step(self) -> None:
        if self.world > 1:  # the loss is normalised by the global counts: the sum is the global gradient
            for p in self.params:
                dist.all_reduce(p.grad)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def _join_alone(device: torch.device) -> None:
    """DeepSpeed wants a process group and LOCAL_RANK even for one process."""
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1
        )
        os.environ.setdefault("LOCAL_RANK", "0")


def deepspeed_config(engine: EngineConfig, batch_size: int, accum: int, max_grad_norm: float | None) -> dict:
    """The DeepSpeed config of a stage: ZeRO stage and offload from `engine`, the rest from `training`."""
    zero: dict = {"stage": engine.zero_stage}
    if engine.offload:  # the base's ZeRO-3 shards live in (pinned, on GPU machines) CPU memory
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": max_grad_norm or 0.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # our AdamW on the fp32 trained tensors
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**62,  # DeepSpeed's own progress lines: never (the stage logs its history)
        "wall_clock_breakdown": False,
    }


class DeepSpeedEngine:
    """ZeRO stages 0-2: DeepSpeed owns the trained tensors (stages 1 and 2 partition their optimizer state
    and gradients over the processes)."""

    can_resume = (
        False  # the optimizer state is DeepSpeed's, partitioned per process: a stopped stage starts over
    )

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter], optimizer, scheduler,
                 config: dict, world: int):  # fmt: skip
        import deepspeed

        _join_alone(model.backbone.device)
        self.world = world
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,  # the frozen base is not a submodule: DeepSpeed sees only the trained tensors
            model_parameters=list(params),
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=config,
            dist_init_required=False,
        )

    def forward(self, batch):
        return self.engine(batch)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        # DeepSpeed averages gradients over processes; our loss is normalised by the global counts, so the
        # wanted gradient is the sum: scale by the world size. Accumulation is ours (the last micro-batch of
        # a step may come early at the end of a stage), so DeepSpeed is told where each step ends.
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss * self.world, scale_wrt_gas=False)

    def step(self) -> None:
        self.engine.step()  # clip, optimizer and scheduler step, zero the gradients


class _FrozenBase(nn.Module):
    """What ZeRO-3 shards: the frozen base's modules, registered here (the model holds them in a plain
    dataclass). The model itself is kept out of sight (in a tuple), so its trained tensors stay whole.
    forward(batch) runs the model, which calls the base's modules; ZeRO-3 gathers each one's weights
    as it runs and frees them after."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._model = (model,)
        backbone = model.backbone
        base = {
            "llava": backbone.llava,
            "clip_text": backbone.clip_text,
            "text_projection": backbone.text_projection,
            "visual_projection": backbone.visual_projection,
        }
        if backbone.clip_vision is not None:
            base["clip_vision"] = backbone.clip_vision
        self.base = nn.ModuleDict(base)

    def forward(self, batch):
        return self._model[0](batch)


class ShardedBaseEngine(PlainEngine):
    """ZeRO stage 3: the frozen base is sharded over the processes by DeepSpeed (each holds 1/N of every
    weight, gathered layer by layer as the forward and backward passes reach it; with offload the shards
    stay in CPU memory). The trained tensors, about 20M values, are whole on every process and train as
    in the plain engine, which also keeps mid-stage states resumable."""

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter], optimizer, scheduler,
                 max_grad_norm: float | None, world: int, config: dict):  # fmt: skip
        import deepspeed

        super().__init__(model, params, optimizer, scheduler, max_grad_norm, world)
        _join_alone(model.backbone.device)
        # no optimizer: DeepSpeed only partitions the base and installs the gather hooks
        self.engine, _, _, _ = deepspeed.initialize(
            model=_FrozenBase(model), config=config, dist_init_required=False
        )

    def forward(self, batch):
        return self.engine(batch)


def make_engine(engine: EngineConfig, model: nn.Module, params: Sequence[nn.Parameter], optimizer, scheduler,
                *, batch_size: int, accum: int, max_grad_norm: float | None, world: int) -> Engine:  # fmt: skip
    if engine.zero_stage is None:
        return PlainEngine(model, params, optimizer, scheduler, max_grad_norm, world)
    try:
        import deepspeed  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"engine.zero_stage is {engine.zero_stage}, which runs training under DeepSpeed, but DeepSpeed "
            f"does not import ({error}): install the extra (pip install 'modalprompt[deepspeed]'), or set "
            "engine.zero_stage: null for plain data parallel"
        ) from error
    check_build_locks()  # before DeepSpeed builds or loads its ops, which would wait on a stale lock
    config = deepspeed_config(engine, batch_size, accum, max_grad_norm)
    if engine.zero_stage == 3:
        return ShardedBaseEngine(model, params, optimizer, scheduler, max_grad_norm, world, config)
    return DeepSpeedEngine(model, params, optimizer, scheduler, config, world)
