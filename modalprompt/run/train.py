"""`train_stage`: train task t's prompt and key network on top of the frozen base and stages 1..t-1.

Runs unchanged under torch.distributed: each rank takes its shard of a seeded permutation, and the
gradients of the (few) trainable tensors are averaged across ranks before each optimizer step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from torch.utils.data import DataLoader
from tqdm import tqdm

from modalprompt.bases.backbone import Backbone
from modalprompt.config import (
    DataConfig,
    EngineConfig,
    MethodConfig,
    Schedule,
    Strategy,
    TaskConfig,
    TrainingConfig,
    config_hash,
    to_jsonable,
)
from modalprompt.data.datasets import Batch, Collator, ConversationEncoder, ImagePreprocessor, TrainDataset
from modalprompt.data.validation import Problem, Report
from modalprompt.model.prompts import PromptStore
from modalprompt.model.wrapper import ModalPromptModel
from modalprompt.run.checkpoint import StageMeta, load_stages, save_stage
from modalprompt.run.engine import make_engine
from modalprompt.run.resume import (
    Preempted,
    ResumeState,
    clear_state,
    load_state,
    rng_states,
    save_state,
    set_rng_states,
)


@dataclass
class StepMetrics:
    step: int  # optimizer step, 1-based
    epoch: float
    loss: float
    ce: float
    align_image: float
    align_text: float
    lr: float
    samples_per_s: float  # global samples (all ranks) per second over this step
    peak_memory_mb: float  # CUDA peak allocated, or the process's peak RSS on CPU


@dataclass
class StageResult:
    task: str
    stage: int
    checkpoint: Path
    steps: int
    samples: int
    seconds: float
    history: list[StepMetrics] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)  # bad records left out (data.skip_bad_records)
    resumed_from_step: int = 0  # 0: started from scratch

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def stage_seed(base_seed: int, stage: int) -> int:
    """Initialisation seed of stage `stage`: distinct per stage, identical on every rank and rerun."""
    return base_seed * 1_000_003 + stage


def lr_multiplier(schedule: Schedule, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up over `warmup_steps`, then constant or cosine decay to zero at `total_steps`."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == Schedule.CONSTANT:
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return multiplier


def _report_skipped(report: Report, rank: int) -> None:
    if report.problems and rank == 0:
        print(f"modalprompt: skipping bad records as configured\n{report.summary()}", file=sys.stderr)


def git_commit() -> str:
    """The commit of the package's source checkout (with '-dirty' for local edits), or 'unknown'."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int,
    world: int,
    lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """This rank's batches of one epoch: a seeded permutation, padded to a multiple of the world size by
    wrapping around, split round-robin across ranks, then cut into batches. Global batch k is the block
    order[k * world * batch_size : (k + 1) * world * batch_size], whatever the world size.

    With `lengths`, samples of similar length share a global batch (less padding): the permutation is cut
    into chunks of GROUP_CHUNK global batches, each chunk sorted by length, and the global batches are then
    put in a seeded random order. Still one pass over every sample, the same for any world size."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    order += order[: (-len(order)) % world]
    if lengths is not None:
        block = world * batch_size
        chunk = block * GROUP_CHUNK
        order = [
            i
            for c in range(0, len(order), chunk)
            for i in sorted(order[c : c + chunk], key=lambda i: -lengths[i])
        ]
        blocks = [order[b : b + block] for b in range(0, len(order), block)]
        order = [i for k in torch.randperm(len(blocks), generator=generator).tolist() for i in blocks[k]]
    mine = order[rank::world]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


GROUP_CHUNK = 50  # global batches sorted together by length (training.group_by_length)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _require_only_current_trainable(model: ModalPromptModel) -> list[torch.nn.Parameter]:
    current = model.prompts.tasks[-1]
    trainable = [p for p in model.parameters() if p.requires_grad]
    expected = list(current.parameters())
    base = (
        model.backbone.llava,
        model.backbone.clip_text,
        model.backbone.text_projection,
        model.backbone.visual_projection,
        model.backbone.clip_vision,
    )
    base_trainable = [p for m in base if m is not None for p in m.parameters() if p.requires_grad]
    if {id(p) for p in trainable} != {id(p) for p in expected} or base_trainable:
        raise RuntimeError("only the current task's prompt and key network may require grad")
    return expected


def train_stage(
    backbone: Backbone,
    method: MethodConfig,
    training: TrainingConfig,
    task: TaskConfig,
    previous: Sequence[Path],
    out_dir: Path,
    *,
    data: DataConfig = DataConfig(),  # noqa: B008 (frozen dataclass)
    strategy: Strategy = Strategy.MODALPROMPT,
    on_step: Callable[[StepMetrics], None] | None = None,
    progress: bool = True,
    state_dir: Path | None = None,
    save_every_steps: int = 0,
    engine: EngineConfig = EngineConfig(),  # noqa: B008 (frozen dataclass)
) -> StageResult:
    """Train task `task` as stage len(previous) + 1 and write its checkpoint to `out_dir`.

    `seq_prompt` (the forgetting baseline) trains one shared prompt: stage t starts from stage t-1's
    tensors and uses only that prompt, with no selection and no alignment terms.

    With `state_dir`, a mid-stage state (modalprompt.run.resume) is saved every `save_every_steps` optimizer
    steps (0: never on a schedule) and when SIGUSR1 or SIGTERM arrives (then `Preempted` is raised after
    the step); a state found there is resumed. The finished stage removes it. `engine` picks plain data
    parallel or DeepSpeed ZeRO (modalprompt.run.engine); DeepSpeed stages save no mid-stage state."""
    rank, world = _rank_world()
    torch.manual_seed(training.seed)
    shared = strategy == Strategy.SEQ_PROMPT
    if shared:
        method = dataclasses.replace(method, transfer_num=1, image_loss_weight=0.0, text_loss_weight=0.0)
    elif strategy != Strategy.MODALPROMPT:
        raise ValueError(f"strategy {strategy.value!r} trains nothing: train with modalprompt or seq_prompt")
    model = ModalPromptModel(backbone, method)
    metas = load_stages(model, list(previous), only_last=shared)
    stage = len(metas) + 1
    if shared and model.prompts.tasks:  # continue from the shared prompt as stage t-1 left it
        start = {k: v.detach().clone() for k, v in model.prompts.tasks[0].state_dict().items()}
        model.prompts = PromptStore(*model.prompts.shape).to(backbone.device)
        current = model.add_task(task.name, stage_seed(method.prompt_init_seed, stage))
        current.load_state_dict(start)
    else:
        current = model.add_task(task.name, stage_seed(method.prompt_init_seed, stage))
    params = _require_only_current_trainable(model)

    encoder = ConversationEncoder(
        backbone.tokenizer,
        backbone.clip_tokenizer,
        backbone.image_token_id,
        backbone.num_image_tokens,
        training.max_length,
    )
    dataset = TrainDataset(
        Path(task.train_file),
        Path(task.image_root),
        encoder,
        ImagePreprocessor(backbone.image_processor),
        skip_bad=data.skip_bad_records,
        check_images=data.check_images,
    )  # validated up front: bad records stop here, before the first step, unless skipped
    _report_skipped(dataset.report, rank)
    collate = Collator(backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=False)
    lengths = dataset.lengths() if training.group_by_length else None
    micro_per_epoch = len(shard_batches(len(dataset), training.batch_size, training.seed, 0, rank, world))
    total_micro = math.ceil(training.epochs * micro_per_epoch)
    total_steps = math.ceil(total_micro / training.grad_accum_steps)
    if training.max_steps is not None:
        total_steps = min(total_steps, training.max_steps)
        total_micro = min(total_micro, total_steps * training.grad_accum_steps)

    accum = training.grad_accum_steps
    optimizer = torch.optim.AdamW(
        params, lr=training.lr, betas=training.adam_betas, weight_decay=training.weight_decay
    )
    warmup = math.floor(training.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(training.schedule, warmup, total_steps)
    )
    runner = make_engine(engine, model, params, optimizer, scheduler, batch_size=training.batch_size,
                         accum=accum, max_grad_norm=training.max_grad_norm, world=world)  # fmt: skip
    if state_dir is not None and not runner.can_resume:
        if rank == 0:
            print(f"modalprompt: engine.zero_stage={engine.zero_stage}: no mid-stage state is saved; "
                  "a stopped stage starts over", file=sys.stderr)  # fmt: skip
        state_dir = None

    def batches(skip: int) -> Iterator[Batch]:
        """The seeded micro-batches from position `skip` on (a resumed stage replays the same order)."""
        for epoch in range(skip // micro_per_epoch, math.ceil(training.epochs) + 1):
            plan = shard_batches(
                len(dataset), training.batch_size, training.seed, epoch, rank, world, lengths
            )
            plan = plan[skip - epoch * micro_per_epoch :] if skip > epoch * micro_per_epoch else plan
            loader = DataLoader(
                dataset,
                batch_sampler=plan,
                collate_fn=collate,
                num_workers=training.num_workers,
                pin_memory=backbone.device.type == "cuda",
            )
            yield from loader

    autocast = (
        torch.autocast("cuda", dtype=backbone.dtype)
        if backbone.device.type == "cuda" and backbone.dtype != torch.float32
        else nullcontext()
    )
    checkpointing = training.gradient_checkpointing
    if checkpointing:
        backbone.llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        backbone.llava.train()  # checkpointing is active in train mode only; the base has no dropout in use

    history: list[StepMetrics] = []
    samples = done_micro = first = 0
    identity = _state_identity(backbone, metas, strategy, method, training, data, task, world)
    saved = load_state(state_dir, identity) if state_dir is not None else None
    if saved is not None:
        current.load_state_dict(saved.trainable)
        optimizer.load_state_dict(saved.optimizer)
        scheduler.load_state_dict(saved.scheduler)
        set_rng_states(saved.rng, backbone.device)
        history = [StepMetrics(**m) for m in saved.history]
        samples, done_micro, first = saved.samples, saved.done_micro, saved.step

    def save(step: int) -> None:
        if rank == 0:
            state = ResumeState(step, done_micro, samples, [dataclasses.asdict(m) for m in history],
                                current.state_dict(), optimizer.state_dict(), scheduler.state_dict(),
                                rng_states(backbone.device))  # fmt: skip
            save_state(state_dir, identity, state)

    stop = _StopSignals() if state_dir is not None else None
    bar = tqdm(total=total_steps, initial=first, desc=f"stage {stage} {task.name}",
               disable=not progress or rank != 0)  # fmt: skip
    start = time.perf_counter()
    stream = batches(done_micro)
    try:
        for step in range(first + 1, total_steps + 1):
            step_start = time.perf_counter()
            group = [next(stream).to(backbone.device) for _ in range(min(accum, total_micro - done_micro))]
            done_micro += len(group)
            # Normalise by the counts of the whole optimizer step on all ranks: the gradients then equal
            # those of one batch of accum * world * batch_size samples.
            counts = torch.tensor(
                [[b.answer_tokens, int(b.has_image.sum()), len(b.keys)] for b in group]
            ).sum(0)
            sums = torch.zeros(4, dtype=torch.float64)  # loss, CE sum, image-gap sum, text-gap sum
            if world > 1:
                dist.all_reduce(counts)
            tokens, images, n_samples = counts.tolist()
            for i, batch in enumerate(group):
                with autocast:
                    out = runner.forward(batch)
                loss = out.normalised_loss(tokens, images, n_samples)
                runner.backward(loss, last=i == len(group) - 1)
                terms = [loss, out.ce_sum, out.align_image_sum, out.align_text_sum]
                sums += torch.stack([t.detach().double().cpu() for t in terms])
            if world > 1:
                dist.all_reduce(sums)
            lr = scheduler.get_last_lr()[0]
            runner.step()
            metrics = StepMetrics(
                step=step,
                epoch=done_micro / micro_per_epoch,
                loss=float(sums[0]),
                ce=float(sums[1]) / max(tokens, 1),
                align_image=float(sums[2]) / max(images, 1),
                align_text=float(sums[3]) / max(n_samples, 1),
                lr=lr,
                samples_per_s=n_samples / max(time.perf_counter() - step_start, 1e-9),
                peak_memory_mb=_peak_memory_mb(backbone.device),
            )
            history.append(metrics)
            samples += n_samples
            bar.update(1)
            bar.set_postfix(loss=f"{metrics.loss:.4f}", ce=f"{metrics.ce:.4f}")
            if on_step is not None and rank == 0:
                on_step(metrics)
            if stop is not None and step < total_steps:
                signum = stop.received(world)
                if signum or (save_every_steps and step % save_every_steps == 0):
                    save(step)
                if signum:
                    raise Preempted(step, Path(state_dir), signum)
    finally:
        if stop is not None:
            stop.restore()
        bar.close()
        if checkpointing:
            backbone.llava.gradient_checkpointing_disable()
            backbone.llava.eval()
    seconds = time.perf_counter() - start

    meta = StageMeta(
        task=task.name,
        stage=stage,
        base_fingerprint=backbone.fingerprint,
        method_structure=method.structure(),
        method_hash=config_hash(method),
        training_hash=config_hash(training),
        tensors_sha256="",
        previous=[{"task": m.task, "tensors_sha256": m.tensors_sha256} for m in metas],
        shapes={},
        extra={
            "steps": len(history),
            "samples": samples,
            "seconds": seconds,
            "final_loss": history[-1].loss if history else None,
            "settings": to_jsonable(
                {"strategy": strategy, "method": method, "training": training, "data": data, "task": task}
            ),
            "git_commit": git_commit(),
            "transformers_version": transformers.__version__,
        },
    )
    if rank == 0:
        save_stage(current, Path(out_dir), meta)
        if state_dir is not None:
            clear_state(state_dir)
    if world > 1:
        dist.barrier()
    return StageResult(
        task.name, stage, Path(out_dir), len(history), samples, seconds, history, dataset.skipped, first
    )


class _StopSignals:
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


def _state_identity(backbone, metas, strategy, method, training, data, task, world: int) -> str:
    """What a mid-stage state must match to be resumed: everything that decides the stage's tensors."""
    settings = to_jsonable({"strategy": strategy, "method": method, "training": training, "data": data,
                            "task": task, "world": world, "base": backbone.fingerprint,
                            "previous": [m.tensors_sha256 for m in metas]})  # fmt: skip
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
