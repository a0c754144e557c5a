"""Each job's settings: exactly what a stage's training or one evaluation reads, and nothing else. The rules
pass them as canonical JSON params (`job_settings`), which is what makes Snakemake rerun exactly the
jobs a change affects; the job commands read them back (`--settings`). Each method says which settings it
uses (modalprompt/methods/), so this sits above the methods.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from modalprompt import methods
from modalprompt.config import (
    ConfigError,
    DataConfig,
    EvaluationConfig,
    MethodConfig,
    ModelConfig,
    ModelSource,
    Scorer,
    TaskConfig,
    TrainingConfig,
    _help,
    for_evaluation,
    for_training,
    from_dict,
    job_to_json,
    to_jsonable,
)
from modalprompt.experiment import METHOD_SECTIONS, ExperimentConfig, MethodName


@dataclass(frozen=True)
class TrainJob:
    """Exactly what a stage's training job needs (and what makes it rerun when it changes)."""

    method_name: MethodName = _help("The method whose stage this is.", default=MethodName("modalprompt"))
    model: ModelConfig = _help("Base models.", default_factory=ModelConfig)
    method: MethodConfig = _help(
        "The method settings this method trains with (those it ignores at fixed values).",
        default_factory=MethodConfig,
    )
    training: TrainingConfig = _help(
        "This task's training settings, overrides applied.", default_factory=TrainingConfig
    )
    data: DataConfig = _help("Validation settings.", default_factory=DataConfig)
    task: TaskConfig = _help("The task, paths resolved.", default_factory=TaskConfig)
    options: dict[str, Any] = _help(
        "The settings of the method's own config sections (lora, replay, l2p, ...) it trains with.",
        default_factory=dict,
    )
    earlier_tasks: tuple[TaskConfig, ...] = _help(
        "Tasks 1..t-1, paths resolved, for a method that trains on their records too (replay, multitask).",
        default=(),
    )


@dataclass(frozen=True)
class EvalJob:
    """Exactly what one evaluation job needs."""

    method_name: MethodName = _help("The method evaluated.", default=MethodName("modalprompt"))
    model: ModelConfig = _help("Base models.", default_factory=ModelConfig)
    method: MethodConfig = _help(
        "The method settings this method evaluates with (those it ignores at fixed values).",
        default_factory=MethodConfig,
    )
    evaluation: EvaluationConfig = _help(
        "This task's evaluation settings, overrides applied.", default_factory=EvaluationConfig
    )
    data: DataConfig = _help("Validation settings.", default_factory=DataConfig)
    task: TaskConfig = _help("The task, paths resolved.", default_factory=TaskConfig)
    options: dict[str, Any] = _help(
        "The settings of the method's own config sections it evaluates with (training-only ones at defaults).",
        default_factory=dict,
    )


def train_job(
    cfg: ExperimentConfig, name: str, method_name: str = "modalprompt", seed: int | None = None
) -> TrainJob:
    """Training reads the train file and images only: the eval file and the scorer are left out, so
    changing them does not retrain. The method keeps only the method settings it trains with, its own
    sections (`options`, their `training` overrides applied) and, when it trains on them, the earlier tasks.
    A `seed` (pipeline.seeds) replaces training.seed and method.prompt_init_seed."""
    method = methods.get(method_name)
    if not method.trains:
        raise ConfigError(
            f"method {method.name!r} trains nothing (it evaluates {method.prompts_of!r}'s prompts)"
        )
    task = _for_training(cfg.task(name))
    training = cfg.training_for(name)
    for section in method.sections:
        overrides = getattr(getattr(cfg, section), "training", {})
        if overrides:
            merged = {**dataclasses.asdict(training), **overrides}
            training = from_dict(TrainingConfig, merged, f"{cfg.source}: {section}.training (with overrides)")
    knobs = cfg.method
    if seed is not None:
        training = dataclasses.replace(training, seed=seed)
        knobs = dataclasses.replace(knobs, prompt_init_seed=seed)
    options = {section: to_jsonable(for_training(getattr(cfg, section))) for section in method.sections}
    earlier = (
        tuple(_for_training(t) for t in cfg.tasks[: cfg.stage_of(name) - 1])
        if method.reads_earlier_tasks
        else ()
    )
    return TrainJob(MethodName(method.name), cfg.model, method.training_settings(knobs), training, cfg.data, task,
                    options, earlier)  # fmt: skip


def eval_job(cfg: ExperimentConfig, name: str, method_name: str = "modalprompt") -> EvalJob:
    """Evaluation reads the eval file and images only; scoring is a later step with its own settings. The
    method keeps only the method settings it evaluates with (its own sections without the training-only
    fields). No seed reaches an evaluation: it reads the checkpoints that seed trained."""
    method = methods.get(method_name)
    task = dataclasses.replace(
        _bare(cfg.task(name)), train_file="", answers_file="", scorer=Scorer.EXACT_MATCH
    )
    options = {section: to_jsonable(for_evaluation(getattr(cfg, section))) for section in method.sections}
    return EvalJob(MethodName(method.name), cfg.model, method.evaluation_settings(cfg.method),
                   cfg.evaluation_for(name), cfg.data, task, options)  # fmt: skip


def _for_training(task: TaskConfig) -> TaskConfig:
    """What training reads of a task: its train file and image root."""
    return dataclasses.replace(_bare(task), eval_file="", answers_file="", scorer=Scorer.EXACT_MATCH)


def _bare(task: TaskConfig) -> TaskConfig:
    """The task without its override dicts (they are already applied in the job's settings)."""
    return dataclasses.replace(task, training={}, evaluation={})


def parse_options(options: dict[str, Any], where: str = "--settings") -> dict[str, Any]:
    """A job's `options` (the sections its method reads, as JSON) as their typed settings."""
    unknown = sorted(set(options) - set(METHOD_SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: options {unknown} are no method's settings ({sorted(METHOD_SECTIONS)})")
    return {
        name: from_dict(METHOD_SECTIONS[name], value, f"{where}: options.{name}")
        for name, value in options.items()
    }


def job_settings(job: TrainJob | EvalJob) -> str:
    """What a job's rule passes it, and so its rerun key: the job's JSON (`job_to_json`), less
    `model.pretrain` unless the base is pretrained here (`model.source: pretrain`). A setting that the job
    does not read reruns nothing: a CoIN run keeps its stages when the mini-CoIN base's settings change. The
    job reads the omitted section back as its defaults."""
    settings = to_jsonable(job)
    if job.model.source != ModelSource.PRETRAIN:
        del settings["model"]["pretrain"]
    return job_to_json(settings)
