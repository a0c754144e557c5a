"""Mid-stage state of a training stage, so that a preempted, timed-out or killed job continues where it stopped.

One safetensors file, written atomically: the trainable tensors, the optimizer's moment tensors, the RNG
states, and in its header (JSON) the step, the data position, the scheduler, the optimizer's scalars and the
history so far. Nothing is pickled. The file carries a hash of everything that decides the stage's result
(settings, base model, earlier stages, world size): a state from other settings is refused, not resumed.
Training replays the same seeded data order from the saved position, so a resumed stage ends with the same
tensors as an uninterrupted one.
"""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
import torch.distributed as dist

from modalprompt.files import atomic_write_bytes

STATE_FILE = "state.safetensors"
FORMAT = "modalprompt-resume-2"  # 2: RNG states of every rank


class Preempted(Exception):
    """Training stopped on a signal (Slurm's --signal, SIGTERM) after saving its state at `step`."""

    def __init__(self, step: int, state_dir: Path, signum: int):
        super().__init__(f"stopped by signal {signum} after step {step}; state saved in {state_dir}")
        self.step, self.state_dir, self.signum = step, state_dir, signum


@dataclass
class ResumeState:
    step: int  # optimizer steps done
    done_micro: int  # micro-batches consumed (the data position)
    samples: int
    history: list[dict[str, Any]]
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch optimizer state_dict
    scheduler: dict[str, Any]
    rng: dict[str, torch.Tensor]
    seconds: float = 0.0  # the stage's wall time up to this save, earlier attempts included (its cost)

    @staticmethod
    def read_step(state_dir: Path) -> int:
        """The step a state in `state_dir` was saved at; 0 when there is none (reads only the header)."""
        path = Path(state_dir) / STATE_FILE
        if not path.is_file():
            return 0
        with safetensors.safe_open(str(path), framework="pt") as f:
            return int(json.loads(f.metadata()["state"])["step"])


def save_state(state_dir: Path, identity: str, state: ResumeState) -> Path:
    tensors = {f"trainable.{k}": v.detach().float().cpu().contiguous() for k, v in state.trainable.items()}
    tensors.update({f"rng.{k}": v.cpu().contiguous() for k, v in state.rng.items()})
    moments: dict[str, dict[str, Any]] = {}
    for index, values in state.optimizer["state"].items():
        moments[str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:  # AdamW's step count
                moments[str(index)][key] = float(value)
    header = {
        "step": state.step,
        "done_micro": state.done_micro,
        "samples": state.samples,
        "seconds": state.seconds,
        "history": state.history,
        "optimizer_scalars": moments,
        "param_groups": state.optimizer["param_groups"],
        "scheduler": state.scheduler,  # LambdaLR keeps None for a plain function: nothing to pickle
    }
    data = safetensors.torch.save(tensors, metadata={"format": FORMAT, "identity": identity,
                                                     "state": json.dumps(header)})  # fmt: skip
    path = Path(state_dir) / STATE_FILE
    atomic_write_bytes(path, data)
    return path


def load_state(state_dir: Path, identity: str) -> ResumeState | None:
    """The saved state, or None when there is none; ValueError when it belongs to other settings."""
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return None
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a mid-stage state this version of modalprompt reads (format {meta.get('format')!r}, "
            f"expected {FORMAT!r}): delete it to start this stage over"
        )
    if meta.get("identity") != identity:
        raise ValueError(
            f"{path} was saved by other settings, another base model, other earlier stages or another "
            "number of processes: delete it to start this stage over"
        )
    header = json.loads(meta["state"])
    optimizer_state: dict[int, dict[str, Any]] = {}
    for index, scalars in header["optimizer_scalars"].items():
        optimizer_state[int(index)] = {k: torch.tensor(v) for k, v in scalars.items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    return ResumeState(
        step=header["step"],
        done_micro=header["done_micro"],
        samples=header["samples"],
        history=header["history"],
        trainable={k.removeprefix("trainable."): v for k, v in tensors.items() if k.startswith("trainable.")},
        optimizer={"state": optimizer_state, "param_groups": header["param_groups"]},
        scheduler=header["scheduler"],
        rng={k.removeprefix("rng."): v for k, v in tensors.items() if k.startswith("rng.")},
        seconds=header["seconds"],
    )


def clear_state(state_dir: Path) -> None:
    """Remove the state once the stage is finished (its checkpoint is the result now)."""
    folder = Path(state_dir)
    (folder / STATE_FILE).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def rng_states(device: torch.device, world: int) -> dict[str, torch.Tensor]:
    """Every rank's RNG states, keyed `rank<r>.cpu` / `rank<r>.cuda`. A collective when world > 1: each
    rank has drawn its own numbers (dropout on its own batches), so each resumes from its own state."""
    own = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(device)
    every: list[dict[str, torch.Tensor] | None] = [own]
    if world > 1:
        every = [None] * world
        dist.all_gather_object(every, own)
    return {
        f"rank{rank}.{kind}": state for rank, states in enumerate(every) for kind, state in states.items()
    }


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device, rank: int) -> None:
    torch.set_rng_state(states[f"rank{rank}.cpu"])
    if device.type == "cuda" and f"rank{rank}.cuda" in states:
        torch.cuda.set_rng_state(states[f"rank{rank}.cuda"], device)


class StopSignals:
    """Records SIGUSR1 / SIGTERM (Slurm's warning before a time limit or preemption, and the kill that
    follows) so that training stops after the current step, with its state saved. Main thread only."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._record) for s in self.SIGNALS}

    def _record(self, signum, _frame) -> None:
        self.signum = signum

    def received(self, world: int) -> int:
        """The signal any rank received (all ranks stop at the same step), or 0."""
        if world == 1:
            return self.signum
        flag = torch.tensor([self.signum])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
