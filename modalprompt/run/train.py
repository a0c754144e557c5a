"""`train_stage`: train stage t of a method (ModalPrompt: task t's prompt and key network; other methods
what they say: a LoRA adapter, a prompt pool, prompt components) on top of the frozen base and stages
1..t-1.

Three parts, each readable alone: `_set_up` (the method's model, the data, the schedule, the engine),
`_train` (the loop over optimizer steps, with mid-stage saves) and `_record` (the stage's files). Runs
unchanged under torch.distributed: each rank takes its shard of a seeded permutation, and the gradients of
the (few) trainable tensors are combined across ranks by the engine before each optimizer step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import transformers
from torch.utils.data import DataLoader

from modalprompt import methods
from modalprompt.bases.backbone import Backbone
from modalprompt.config import (
    ConfigError,
    DataConfig,
    EngineConfig,
    MethodConfig,
    ProgressConfig,
    TaskConfig,
    TrainingConfig,
    config_hash,
    to_jsonable,
)
from modalprompt.cost import JobCost, measure, peak_memory_mb, reset_peak_memory
from modalprompt.data.datasets import Batch, Collator, TrainDataset
from modalprompt.data.mixture import MixedTrainDataset, kept_records
from modalprompt.data.validation import Problem
from modalprompt.model.checkpoint import StageMeta, save_stage
from modalprompt.run.engine import Engine, make_engine
from modalprompt.run.environment import backbone_environment, git_state
from modalprompt.run.progress import Progress
from modalprompt.run.resume import (
    Preempted,
    ResumeState,
    StopSignals,
    clear_state,
    load_state,
    rng_states,
    save_state,
    set_rng_states,
)
from modalprompt.run.schedule import lr_multiplier, shard_batches


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


@dataclass(frozen=True)
class StageStart:
    """What a stage is about to train, for `on_start` (e.g. the CLI opens the stage's live MLflow run)."""

    method_name: str
    stage: int
    task: str
    identity: str  # the stage version: settings, base, earlier stages (stage.json's run_identity)
    total_steps: int
    resumed_from: int  # steps done by an earlier attempt (0: from scratch)


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
    cost: JobCost | None = None  # what the job cost (rank 0 records it; None on the other ranks)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def train_stage(
    backbone: Backbone,
    method: MethodConfig,
    training: TrainingConfig,
    task: TaskConfig,
    previous: Sequence[Path],
    out_dir: Path,
    *,
    data: DataConfig = DataConfig(),  # noqa: B008 (frozen dataclass)
    method_name: str = "modalprompt",
    on_step: Callable[[StepMetrics], None] | None = None,
    on_start: Callable[[StageStart], None] | None = None,
    progress: bool = True,
    progress_every: ProgressConfig = ProgressConfig(),  # noqa: B008 (frozen dataclass)
    state_dir: Path | None = None,
    save_every_steps: int = 0,
    engine: EngineConfig = EngineConfig(),  # noqa: B008 (frozen dataclass)
    options: dict[str, Any] | None = None,
    earlier_tasks: Sequence[TaskConfig] = (),
    started: float | None = None,
) -> StageResult:
    """Train `task` as stage len(previous) + 1 of method `method_name` and write its checkpoint to `out_dir`.

    The method decides what trains and which of the `method` settings it uses (methods/); `options` are its
    own sections as typed settings (jobs.parse_options), `earlier_tasks` tasks 1..t-1 for a method that
    trains on their records too (replay, multitask). `on_start` and
    `on_step` (rank 0 only) see the stage begin and each optimizer step's metrics; `progress` writes a
    progress line every `progress_every` (a bar on a terminal). With
    `state_dir`, a mid-stage state (run/resume.py) is saved every `save_every_steps` optimizer steps (0:
    never on a schedule) and when SIGUSR1 or SIGTERM arrives (then `Preempted` is raised after the step); a
    state found there is resumed, and the finished stage removes it. `engine` picks plain data parallel or
    DeepSpeed ZeRO (run/engine.py); DeepSpeed's own stages 0-2 save no mid-stage state. `started`: when the
    job began, on time.perf_counter's clock (cost.job_started; default: now), for the cost stage.json records."""
    started = time.perf_counter() if started is None else started
    reset_peak_memory(backbone.device)
    rank, world = _rank_world()
    torch.manual_seed(training.seed)
    method_impl = methods.get(method_name)
    stage = _set_up(backbone, method_impl, method, training, task, previous, data, engine, world, options or {},
                    list(earlier_tasks))  # fmt: skip
    try:
        if state_dir is not None and not stage.runner.can_resume:
            if rank == 0:
                print(f"modalprompt: engine.zero_stage={engine.zero_stage}: no mid-stage state is saved; "
                      "a stopped stage starts over", file=sys.stderr)  # fmt: skip
            state_dir = None
        bar = Progress(f"train stage {stage.number} {task.name}", stage.total_steps, "step",
                       enabled=progress and rank == 0, every_steps=progress_every.every_steps,
                       every_seconds=progress_every.every_seconds)  # fmt: skip
        done = _train(stage, state_dir, save_every_steps, on_start, on_step, bar, started)
        method_impl.finish_stage(stage.model, stage.current, stage.own_batches())
        cost = _record(stage, done, Path(out_dir)) if rank == 0 else None
        if rank == 0 and state_dir is not None:
            clear_state(state_dir)
    finally:
        method_impl.release(stage.model)  # e.g. LoRA's layers out of the base again
    if world > 1:
        dist.barrier()
    return StageResult(task.name, stage.number, Path(out_dir), len(done.history), done.samples, done.seconds,
                       done.history, stage.dataset.skipped, done.resumed_from, cost)  # fmt: skip


# ----------------------------------------------------------------------------------------- set-up


@dataclass
class _Stage:
    """A stage ready to train: what the loop reads and what the record writes."""

    number: int
    method_name: str
    method: MethodConfig  # the settings the method trains with
    options: dict[str, Any]  # its own sections (typed)
    structure: dict[str, Any]  # what defines its stage file's tensors
    training: TrainingConfig
    data: DataConfig
    task: TaskConfig
    earlier_tasks: list[TaskConfig]  # whose records it also trains on
    world: int
    model: Any  # the method's model (methods.Method.build_model)
    current: Any  # the trainable tensors: parameters(), state_dict(), load_state_dict()
    earlier: list[StageMeta]  # stages 1..t-1
    dataset: TrainDataset | MixedTrainDataset
    batches: Callable[[int], Iterator[Batch]]  # the seeded micro-batches from a position on
    own_batches: Callable[[], Iterator[Batch]]  # the task's own records in file order (Method.finish_stage)
    micro_per_epoch: int
    total_micro: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    runner: Engine

    @property
    def device(self) -> torch.device:
        return self.model.backbone.device

    def identity(self) -> str:
        """What a mid-stage state must match to be resumed: everything that decides the stage's tensors."""
        settings = to_jsonable({"method_name": self.method_name, "method": self.method, "training": self.training,
                                "data": self.data, "task": self.task, "world": self.world,
                                "base": self.model.backbone.fingerprint,
                                "previous": [m.tensors_sha256 for m in self.earlier]})  # fmt: skip
        if self.options or self.earlier_tasks:  # the other methods' own settings and data
            settings["options"] = to_jsonable(self.options)
            settings["earlier_tasks"] = to_jsonable(self.earlier_tasks)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _set_up(backbone, method_impl, method, training, task, previous, data, engine, world, options,
            earlier_tasks) -> _Stage:  # fmt: skip
    method = method_impl.training_settings(method)
    if engine.zero_stage is not None and method_impl.adapts_base:
        raise ConfigError(
            f"engine.zero_stage = {engine.zero_stage}: method {method_impl.name!r} trains tensors inside the "
            "base's LLM, which the DeepSpeed engines shard or hide; use engine.zero_stage: null for it"
        )
    model = method_impl.build_model(backbone, method, options)
    try:
        current, earlier = method_impl.start_stage(
            model, [Path(p) for p in previous], task.name, training.seed
        )
        params = _require_only_current_trainable(model, current)
        return _set_up_training(backbone, method_impl, method, training, task, data, engine, world, options,
                                earlier_tasks, model, current, earlier, params)  # fmt: skip
    except BaseException:
        method_impl.release(model)
        raise


def _training_set(backbone, method_impl, training, task, data, options, earlier_tasks, max_length):
    """The task's validated records, and for a method that reads them, the earlier tasks' kept records."""
    encoder = backbone.conversation_encoder(max_length)  # the base family's template

    def records(t: TaskConfig) -> TrainDataset:
        dataset = TrainDataset(Path(t.train_file), Path(t.image_root), encoder, backbone.image_preprocessor(),
                               skip_bad=data.skip_bad_records, check_images=data.check_images)  # fmt: skip
        # validated up front: bad records stopped the job above, before the first step, unless skipped
        if dataset.report.problems and _rank_world()[0] == 0:
            print(
                f"modalprompt: skipping bad records as configured\n{dataset.report.summary()}",
                file=sys.stderr,
            )
        return dataset

    current = records(task)
    if not earlier_tasks:
        return current
    keep = method_impl.earlier_records(options, len(earlier_tasks))
    parts = [(current, list(range(len(current))))]
    for position, earlier in enumerate(earlier_tasks, start=1):
        dataset = records(earlier)
        parts.append((dataset, kept_records(len(dataset), keep, training.seed, position)))
    return MixedTrainDataset(parts)


def _set_up_training(backbone, method_impl, method, training, task, data, engine, world, options, earlier_tasks,
                     model, current, earlier, params) -> _Stage:  # fmt: skip
    rank = _rank_world()[0]
    dataset = _training_set(
        backbone, method_impl, training, task, data, options, earlier_tasks, training.max_length
    )
    collate = Collator(backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=False)
    lengths = dataset.lengths() if training.group_by_length else None
    micro_per_epoch = len(shard_batches(len(dataset), training.batch_size, training.seed, 0, rank, world))
    total_micro = math.ceil(training.epochs * micro_per_epoch)
    total_steps = math.ceil(total_micro / training.grad_accum_steps)
    if training.max_steps is not None:
        total_steps = min(total_steps, training.max_steps)
        total_micro = min(total_micro, total_steps * training.grad_accum_steps)

    def batches(skip: int) -> Iterator[Batch]:
        """The seeded micro-batches from position `skip` on (a resumed stage replays the same order)."""
        for epoch in range(skip // micro_per_epoch, math.ceil(training.epochs) + 1):
            plan = shard_batches(
                len(dataset), training.batch_size, training.seed, epoch, rank, world, lengths
            )
            plan = plan[skip - epoch * micro_per_epoch :] if skip > epoch * micro_per_epoch else plan
            # Its own generator: a DataLoader otherwise draws its workers' base seed from the global RNG
            # each time it starts, so a stage resumed mid-epoch would draw once more than an uninterrupted one
            # and every later dropout mask would differ.
            loader_rng = torch.Generator().manual_seed(training.seed + epoch)
            yield from DataLoader(dataset, batch_sampler=plan, collate_fn=collate, num_workers=training.num_workers,
                                  pin_memory=backbone.device.type == "cuda", generator=loader_rng)  # fmt: skip

    def own_batches() -> Iterator[Batch]:
        own = dataset.parts[0][0] if isinstance(dataset, MixedTrainDataset) else dataset
        order = list(range(len(own)))
        plan = [order[i : i + training.batch_size] for i in range(0, len(own), training.batch_size)]
        loader = DataLoader(
            own,
            batch_sampler=plan,
            collate_fn=collate,
            num_workers=training.num_workers,
            generator=torch.Generator().manual_seed(training.seed),
        )  # not the global RNG
        for batch in loader:
            yield batch.to(backbone.device)

    optimizer = torch.optim.AdamW(params, lr=training.lr, betas=training.adam_betas,
                                  weight_decay=training.weight_decay)  # fmt: skip
    warmup = math.floor(training.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(training.schedule, warmup, total_steps)
    )
    runner = make_engine(engine, model, params, optimizer, scheduler, batch_size=training.batch_size,
                         accum=training.grad_accum_steps, max_grad_norm=training.max_grad_norm, world=world)  # fmt: skip
    number = max(len(earlier), len(earlier_tasks)) + 1  # after the stages it loaded, or the tasks it read
    return _Stage(number, method_impl.name, method, options, method_impl.structure(model), training, data, task,
                  earlier_tasks, world, model, current, earlier, dataset, batches, own_batches, micro_per_epoch,
                  total_micro, total_steps, optimizer, scheduler, runner)  # fmt: skip


def _require_only_current_trainable(model, current) -> list[torch.nn.Parameter]:
    """The current stage's tensors, checked to be the only ones anywhere (model and frozen base) that
    require grad."""
    expected = list(current.parameters())
    b = model.backbone
    modules = (model, b.llava, b.clip_text, b.text_projection, b.visual_projection, b.clip_vision)
    everything = {id(p): p for m in modules if m is not None for p in m.parameters()}
    everything.update({id(p): p for p in expected})
    trainable = {i for i, p in everything.items() if p.requires_grad}
    if trainable != {id(p) for p in expected}:
        raise RuntimeError("only the current task's tensors (what this stage trains) may require grad")
    return expected


# ----------------------------------------------------------------------------------------- the loop


@dataclass
class _Done:
    history: list[StepMetrics]
    samples: int = 0
    done_micro: int = 0  # micro-batches consumed: the data position
    resumed_from: int = 0  # the step a saved state was resumed at (0: from scratch)
    seconds: float = 0.0
    started: float = 0.0  # the job's start (time.perf_counter), for its cost
    earlier_seconds: float = 0.0  # the wall time of earlier attempts, up to the state this one resumed

    def wall_seconds(self) -> float:
        """The stage's wall time so far, its earlier attempts included."""
        return self.earlier_seconds + time.perf_counter() - self.started


def _train(stage: _Stage, state_dir: Path | None, save_every: int, on_start, on_step, bar: Progress,
           started: float) -> _Done:  # fmt: skip
    rank = _rank_world()[0]
    model, device, accum = stage.model, stage.device, stage.training.grad_accum_steps
    backbone = model.backbone
    autocast = (torch.autocast("cuda", dtype=backbone.dtype)
                if device.type == "cuda" and backbone.dtype != torch.float32 else nullcontext())  # fmt: skip
    checkpointing = stage.training.gradient_checkpointing
    if checkpointing:
        backbone.llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        backbone.llava.train()  # checkpointing is active in train mode only; the base has no dropout in use
    done = _resume(stage, state_dir)
    done.started = started
    stop = StopSignals() if state_dir is not None else None
    bar.start_at(done.resumed_from)
    if on_start is not None and rank == 0:
        on_start(StageStart(stage.method_name, stage.number, stage.task.name, stage.identity(), stage.total_steps,
                            done.resumed_from))  # fmt: skip
    start = time.perf_counter()
    stream = stage.batches(done.done_micro)
    try:
        for step in range(done.resumed_from + 1, stage.total_steps + 1):
            step_start = time.perf_counter()
            group = [next(stream).to(device) for _ in range(min(accum, stage.total_micro - done.done_micro))]
            done.done_micro += len(group)
            sums, tokens, images, samples = _step(stage, group, autocast)
            metrics = StepMetrics(
                step=step,
                epoch=done.done_micro / stage.micro_per_epoch,
                loss=float(sums[0]),
                ce=float(sums[1]) / max(tokens, 1),
                align_image=float(sums[2]) / max(images, 1),
                align_text=float(sums[3]) / max(samples, 1),
                lr=float(sums[4]),
                samples_per_s=samples / max(time.perf_counter() - step_start, 1e-9),
                peak_memory_mb=peak_memory_mb(device),
            )
            done.history.append(metrics)
            done.samples += samples
            bar.update(1, **{k: v for k, v in dataclasses.asdict(metrics).items() if k != "step"})
            if on_step is not None and rank == 0:
                on_step(metrics)
            if stop is not None and step < stage.total_steps:
                signum = stop.received(stage.world)
                if signum or (save_every and step % save_every == 0):
                    _save(stage, done, step, state_dir)
                if signum:
                    raise Preempted(step, Path(state_dir), signum)
    finally:
        if stop is not None:
            stop.restore()
        bar.close()
        if checkpointing:
            backbone.llava.gradient_checkpointing_disable()
            backbone.llava.eval()
    done.seconds = time.perf_counter() - start
    return done


def _step(stage: _Stage, group: list[Batch], autocast) -> tuple[torch.Tensor, int, int, int]:
    """One optimizer step over the micro-batches of `group`. Returns the summed loss terms (loss, CE,
    image gap, text gap, then the step's learning rate) and the global answer-token, image and sample
    counts."""
    # Normalise by the counts of the whole optimizer step on all ranks: the gradients then equal those of
    # one batch of accum * world * batch_size samples.
    counts = torch.tensor([[b.answer_tokens, int(b.has_image.sum()), len(b.keys)] for b in group]).sum(0)
    if stage.world > 1:
        dist.all_reduce(counts)
    tokens, images, samples = counts.tolist()
    sums = torch.zeros(4, dtype=torch.float64)  # loss, CE sum, image-gap sum, text-gap sum
    for i, batch in enumerate(group):
        with autocast:
            out = stage.runner.forward(batch)
        loss = out.normalised_loss(tokens, images, samples)
        stage.runner.backward(loss, last=i == len(group) - 1)
        terms = [loss, out.ce_sum, out.align_image_sum, out.align_text_sum]
        sums += torch.stack([t.detach().double().cpu() for t in terms])
    if stage.world > 1:
        dist.all_reduce(sums)
    lr = stage.scheduler.get_last_lr()[0]
    stage.runner.step()
    return torch.cat([sums, torch.tensor([lr], dtype=torch.float64)]), tokens, images, samples


def _resume(stage: _Stage, state_dir: Path | None) -> _Done:
    """The saved state of this stage, restored into the model, optimizer, scheduler and RNGs; or a start."""
    saved = load_state(state_dir, stage.identity()) if state_dir is not None else None
    if saved is None:
        return _Done(history=[])
    stage.current.load_state_dict(saved.trainable)
    stage.optimizer.load_state_dict(saved.optimizer)
    stage.scheduler.load_state_dict(saved.scheduler)
    set_rng_states(saved.rng, stage.device, _rank_world()[0])
    history = [StepMetrics(**m) for m in saved.history]
    return _Done(
        history, saved.samples, saved.done_micro, resumed_from=saved.step, earlier_seconds=saved.seconds
    )


def _save(stage: _Stage, done: _Done, step: int, state_dir: Path) -> None:
    rng = rng_states(stage.device, stage.world)  # on every rank: a collective when world > 1
    if _rank_world()[0] == 0:
        state = ResumeState(step, done.done_micro, done.samples, [dataclasses.asdict(m) for m in done.history],
                            stage.current.state_dict(), stage.optimizer.state_dict(), stage.scheduler.state_dict(),
                            rng, seconds=done.wall_seconds())  # fmt: skip
        save_state(state_dir, stage.identity(), state)


# ----------------------------------------------------------------------------------------- the record


def _record(stage: _Stage, done: _Done, out_dir: Path) -> JobCost:
    """The stage's checkpoint: its trained tensors and a self-describing stage.json (model/checkpoint.py), which
    records what the job cost (modalprompt/cost.py); returns the cost."""
    cost = measure(stage.device, stage.world, done.started, done.samples, done.earlier_seconds)
    settings = {"method_name": stage.method_name, "method": stage.method, "training": stage.training,
                "data": stage.data, "task": stage.task}  # fmt: skip
    if stage.options:
        settings["options"] = stage.options
    if stage.earlier_tasks:
        settings["earlier_tasks"] = stage.earlier_tasks
    extra: dict[str, Any] = {
        "steps": len(done.history),
        "samples": done.samples,
        "trained_values": sum(p.numel() for p in stage.current.parameters()),  # its budget, in the tables
        "seconds": done.seconds,
        "final_loss": done.history[-1].loss if done.history else None,
        "settings": to_jsonable(settings),
        "trained_on": [t.name for t in stage.earlier_tasks]
        + [stage.task.name],  # whose records it trained on
        "environment": backbone_environment(stage.model.backbone, stage.world),
        "git_commit": git_commit(),
        "transformers_version": transformers.__version__,
        "run_identity": stage.identity(),  # the MLflow run the training job logged live is this stage's
        "cost": cost.to_json(),
    }
    if isinstance(stage.dataset, MixedTrainDataset):
        extra["records_per_task"] = dict(zip(extra["trained_on"][-1:] + extra["trained_on"][:-1],
                                             stage.dataset.counts(), strict=True))  # fmt: skip
    meta = StageMeta(
        task=stage.task.name,
        stage=stage.number,
        base_fingerprint=stage.model.backbone.fingerprint,
        method_structure=stage.structure,
        method_hash=config_hash(stage.method),
        training_hash=config_hash(stage.training),
        tensors_sha256="",
        previous=[{"task": m.task, "tensors_sha256": m.tensors_sha256} for m in stage.earlier],
        shapes={},
        extra=extra,
        family=stage.model.backbone.family,
    )
    save_stage(stage.current, out_dir, meta)
    return cost


def git_commit() -> str:
    """The commit of the package's source checkout (with '-dirty' for local edits), or 'unknown'."""
    head, dirty = git_state(Path(__file__).resolve().parents[1])  # the package folder
    return head if head == "unknown" else head + ("-dirty" if dirty else "")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
