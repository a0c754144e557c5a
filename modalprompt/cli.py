"""Command line: a thin map from subcommands to the package's typed functions.

Each command is a function below whose signature is its command line: positional parameters are arguments,
keyword-only ones are --options (required when they have no default), and `Arg` in the annotation gives the
help. Jobs take their settings from a config file (`--config config.yaml --task NAME`, for people) or as one
JSON string (`--settings`, what the Snakemake rules pass: exactly the resolved settings of that job).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import types
import typing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from modalprompt.config import (
    ConfigError,
    EngineConfig,
    JobResources,
    PreemptionConfig,
    ProgressConfig,
    job_from_json,
)
from modalprompt.errors import BaseModelError, CheckpointError, DataError, PluginError
from modalprompt.experiment import ExperimentConfig, load_experiment
from modalprompt.files import atomic_write_text
from modalprompt.jobs import EvalJob, TrainJob, eval_job, train_job

USER_ERRORS = (ConfigError, BaseModelError, CheckpointError, DataError, PluginError)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on a signal with its state saved; the same command continues


@dataclass(frozen=True)
class Arg:
    help: str
    flag: str | None = None  # the option's name, when not the parameter's
    rest: bool = False  # every remaining argument (after `--`)


Settings = Annotated[str | None, Arg("the job's resolved settings as JSON (what the pipeline passes)")]
Config = Annotated[Path | None, Arg("config.yaml to take the settings from (with --task)")]
Task = Annotated[str | None, Arg("task name from the config's task list")]
MethodArg = Annotated[str, Arg("the method (with --config; --settings names its own)")]
Quiet = Annotated[bool, Arg("no progress lines (or bar on a terminal)")]
Threads = Annotated[int | None, Arg("CPU threads for torch (default: torch's own choice)")]
ProgressSteps = Annotated[
    int | None, Arg("a progress line every N steps or batches (default: the config's progress.every_steps)")
]
ProgressSeconds = Annotated[
    float | None, Arg("... and every S seconds (default: the config's progress.every_seconds)")
]


def _progress(
    experiment: ExperimentConfig | None, steps: int | None, seconds: float | None
) -> ProgressConfig:
    chosen = experiment.progress if experiment is not None else ProgressConfig()
    return replace(chosen, every_steps=chosen.every_steps if steps is None else steps,
                   every_seconds=chosen.every_seconds if seconds is None else seconds)  # fmt: skip


def _process_age() -> float | None:
    """Seconds since this process started (Linux /proc, 10 ms resolution): the start-up a job reports."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        started = int(
            Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]
        )  # field 22: start time
        return round(uptime - started / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def _job(settings, config, task, threads, cls, from_config) -> tuple[Any, ExperimentConfig | None]:
    """The job's settings, and the experiment config when they came from --config (None with --settings)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if not sys.stderr.isatty():  # a job's log: progress lines only, not transformers' loading bars
        from transformers.utils import logging

        logging.disable_progress_bar()
    if settings:
        return job_from_json(cls, settings), None
    if not (config and task):
        raise ConfigError("give --settings JSON, or --config config.yaml with --task NAME")
    experiment = load_experiment(config)
    return from_config(experiment, task), experiment


# ------------------------------------------------------------------------------------ stage jobs


def train(
    *,
    settings: Settings = None,
    config: Config = None,
    task: Task = None,
    quiet: Quiet = False,
    threads: Threads = None,
    previous: Annotated[list[Path], Arg("checkpoints of stages 1..t-1, in order")] = (),
    out: Annotated[Path, Arg("checkpoint folder to write")],
    history: Annotated[Path | None, Arg("write per-step metrics as JSONL here")] = None,
    state_dir: Annotated[
        Path | None,
        Arg(
            "mid-stage state folder: saved on SIGUSR1/SIGTERM and every --save-every "
            "steps, resumed when present"
        ),
    ] = None,
    save_every: Annotated[int, Arg("save the mid-stage state every N steps (0: only on a signal)")] = 0,
    zero_stage: Annotated[
        Literal["none", "0", "1", "2", "3"] | None,
        Arg(
            "none: plain data parallel; 0-3: DeepSpeed with this ZeRO stage (default: the "
            "config's engine.zero_stage with --config, else none)"
        ),
    ] = None,
    offload: Annotated[
        Literal["yes", "no"] | None,
        Arg("with --zero-stage 3: the base's shards in CPU memory (ZeRO-Offload)"),
    ] = None,
    progress_steps: ProgressSteps = None,
    progress_seconds: ProgressSeconds = None,
    tracking_uri: Annotated[
        str | None,
        Arg("MLflow store that gets the stage's curves live, step by step (the pipeline passes one)"),
    ] = None,
    tracking_experiment: Annotated[str | None, Arg("MLflow experiment of the live run")] = None,
    method: MethodArg = "modalprompt",
    seed: Annotated[
        int | None,
        Arg(
            "this stage's seed in a DAG with pipeline.seeds (its MLflow run's key; with --config, it also "
            "replaces training.seed and method.prompt_init_seed)"
        ),
    ] = None,
) -> int:
    """train one stage: what the method trains (ModalPrompt: the task's prompt and key network)"""
    from modalprompt.bases.backbone import load_backbone
    from modalprompt.cost import job_started
    from modalprompt.jobs import parse_options
    from modalprompt.run.distributed import init_from_environment, shutdown
    from modalprompt.run.resume import Preempted
    from modalprompt.run.train import train_stage

    startup = _process_age()  # the interpreter and the imports above (a warm job: the fork)
    started = job_started(startup)  # its cost counts from the process's start
    job, experiment = _job(settings, config, task, threads, TrainJob,
                           lambda cfg, name: train_job(cfg, name, method, seed))  # fmt: skip
    engine = experiment.engine if experiment is not None else EngineConfig()
    if zero_stage is not None:
        engine = replace(engine, zero_stage=None if zero_stage == "none" else int(zero_stage))
    if offload is not None:
        engine = replace(engine, offload=offload == "yes")
    if engine.offload and engine.zero_stage != 3:
        raise ConfigError("--offload yes needs --zero-stage 3 (ZeRO-Offload moves the base's ZeRO-3 shards)")
    live = _LiveCurves(tracking_uri, tracking_experiment, seed)
    options = parse_options(job.options)
    rank, _ = init_from_environment()  # torchrun or srun with several tasks: one process per GPU
    try:
        loading = time.perf_counter()
        backbone = load_backbone(job.model)
        loading = time.perf_counter() - loading
        result = train_stage(backbone, job.method, job.training, job.task, previous, out,
                             data=job.data, method_name=job.method_name, progress=not quiet,
                             progress_every=_progress(experiment, progress_steps, progress_seconds),
                             state_dir=state_dir, save_every_steps=save_every, engine=engine,
                             on_start=live.start, on_step=live.step, options=options,
                             earlier_tasks=job.earlier_tasks, started=started)  # fmt: skip
    except Preempted as stopped:
        print(f"modalprompt: {stopped}; run the same command again to continue", file=sys.stderr)
        return EXIT_PREEMPTED
    finally:
        live.close()
        shutdown()
    if rank != 0:
        return 0  # rank 0 wrote the checkpoint; it reports
    if history:
        atomic_write_text(history, "".join(json.dumps(asdict(m)) + "\n" for m in result.history))
    print(json.dumps({"task": result.task, "stage": result.stage, "checkpoint": str(result.checkpoint),
                      "steps": result.steps, "seconds": round(result.seconds, 3),
                      "samples_per_s": round(result.samples_per_s, 2), "skipped_records": len(result.skipped),
                      "resumed_from_step": result.resumed_from_step, "startup_seconds": startup,
                      "load_seconds": round(loading, 3), **_cost_summary(result.cost)}))  # fmt: skip
    return 0


def _cost_summary(cost) -> dict[str, float]:
    """What a job's summary line says of its cost (all of it is in its stage.json or cost file)."""
    return {"wall_seconds": round(cost.wall_seconds, 3), "device_hours": round(cost.device_hours, 6),
            "peak_memory_mb": round(cost.peak_memory_mb, 1)}  # fmt: skip


class _LiveCurves:
    """The training job's side of live MLflow curves: opens the stage's run when it starts (tracking.LiveRun),
    queues each step's metrics; nothing at all without a tracking URI."""

    def __init__(self, uri: str | None, experiment: str | None, seed: int | None = None):
        self.uri, self.experiment, self.seed, self.run = uri, experiment, seed, None

    def start(self, stage) -> None:
        if self.uri:
            from modalprompt.tracking import LiveRun

            warn = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
            self.run = LiveRun(self.uri, self.experiment or "modalprompt", stage.method_name, stage.stage,
                               stage.task, stage.identity, warn=warn, seed=self.seed)  # fmt: skip

    def step(self, metrics) -> None:
        if self.run is not None:
            self.run.log_step(metrics)

    def close(self) -> None:
        if self.run is not None:
            self.run.close()


def submit(
    *,
    cluster: Annotated[str | None, Arg("slurm (default when sbatch exists), local or debug")] = None,
    partition: Annotated[str | None, Arg("Slurm partition")] = None,
    account: Annotated[str | None, Arg("Slurm account")] = None,
    gpus: Annotated[int | None, Arg("GPUs per node (default: config's resources.train.gpus)")] = None,
    tasks: Annotated[int, Arg("processes per node when not one per GPU")] = 1,
    nodes: Annotated[int, Arg("nodes")] = 1,
    cpus: Annotated[int | None, Arg("CPUs per task (default: resources.train.cpus)")] = None,
    mem_gb: Annotated[float | None, Arg("memory per node in GB (default: resources.train.mem_mb)")] = None,
    timeout_min: Annotated[int | None, Arg("time limit (default: resources.train.runtime)")] = None,
    logs: Annotated[Path, Arg("submitit's folder for logs")] = Path("submitit-logs"),
    wait: Annotated[bool, Arg("wait for the job and print its output")] = False,
    train_args: Annotated[list[str], Arg("-- then the arguments of `modalprompt train`", rest=True)] = (),
) -> int:
    """submit one training stage to Slurm with submitit (no Snakemake): modalprompt submit [options] -- TRAIN ARGS"""
    from modalprompt.run.submit import submit_training

    train_args = [a for a in train_args if a != "--"]
    parsed = _parser().parse_args(["train", *train_args])
    resources, preemption = JobResources(), PreemptionConfig()
    if parsed.config:
        experiment = load_experiment(parsed.config)
        resources, preemption = experiment.resources.train, experiment.preemption
    job = submit_training(main, train_args, resources, preemption, cluster=cluster, partition=partition,
                          account=account, gpus=gpus, tasks=tasks, nodes=nodes, cpus=cpus, mem_gb=mem_gb,
                          timeout_min=timeout_min, logs=logs)  # fmt: skip
    print(json.dumps({"job_id": job.job_id, "logs": str(logs)}), flush=True)
    if wait:
        job.results()  # every task's result; raises with the failing task's traceback
        print(job.stdout() or "", end="")
    return 0


def evaluate(
    *,
    settings: Settings = None,
    config: Config = None,
    task: Task = None,
    quiet: Quiet = False,
    threads: Threads = None,
    checkpoints: Annotated[list[Path], Arg("checkpoints of stages 1..s, in order")] = (),
    out: Annotated[Path, Arg("predictions JSONL to write")],
    progress_steps: ProgressSteps = None,
    progress_seconds: ProgressSeconds = None,
    method: MethodArg = "modalprompt",
) -> None:
    """generate answers for a task's eval file after stage s"""
    from modalprompt.bases.backbone import load_backbone
    from modalprompt.cost import job_started
    from modalprompt.jobs import parse_options
    from modalprompt.run.evaluate import evaluate_stage

    startup = _process_age()  # the interpreter and the imports above (a warm job: the fork)
    started = job_started(startup)  # its cost counts from the process's start
    job, experiment = _job(
        settings, config, task, threads, EvalJob, lambda cfg, name: eval_job(cfg, name, method)
    )
    loading = time.perf_counter()
    backbone = load_backbone(job.model)
    loading = time.perf_counter() - loading
    result = evaluate_stage(backbone, job.method, job.evaluation, job.task, checkpoints, out, data=job.data,
                            method_name=job.method_name, progress=not quiet,
                            progress_every=_progress(experiment, progress_steps, progress_seconds),
                            options=parse_options(job.options), started=started)  # fmt: skip
    print(json.dumps({"task": result.task, "stage": result.stage, "samples": len(result.predictions),
                      "skipped_records": len(result.skipped), "seconds": round(result.seconds, 3),
                      "samples_per_s": round(result.samples_per_s, 2), "startup_seconds": startup,
                      "load_seconds": round(loading, 3), **_cost_summary(result.cost)}))  # fmt: skip


def run(
    *,
    config: Annotated[Path, Arg("the experiment's config.yaml")],
    quiet: Annotated[bool, Arg("no progress bars")] = False,
) -> None:
    """all methods' stages, evaluations and scores in one process, without Snakemake (no MLflow)"""
    from modalprompt.run.experiment import run_experiment

    run_experiment(load_experiment(config), progress=not quiet)


# ------------------------------------------------------------------------------------ scoring and the report


def score(
    *,
    scorer: Annotated[
        str, Arg("option_letter | vqa_soft | exact_match | exact_match_strict | contains | box_iou")
    ],
    predictions: Annotated[Path, Arg("predictions JSONL")],
    eval_file: Annotated[Path, Arg("the task's test.json / val.json")],
    task: Annotated[
        str | None, Arg("task name, for selection accuracy (most similar prompt is the task's own)")
    ] = None,
    stage: Annotated[int | None, Arg("stage the predictions come from (recorded for the matrix)")] = None,
    max_samples: Annotated[int | None, Arg("the evaluation's max_samples (0 or absent: all)")] = None,
    answers_file: Annotated[
        list[Path],
        Arg(
            "reference answers per question_id (the task's answers_file, e.g. TextVQA_0.5.1_val.json); "
            "none given: the eval file's"
        ),
    ] = (),
    out: Annotated[Path | None, Arg("write the full result (with per-question scores) as JSON here")] = None,
    cost: Annotated[
        Path | None, Arg("the evaluation's cost file (<task>.cost.json), copied into the result as `cost`")
    ] = None,
) -> None:
    """score a predictions JSONL against its eval file (joined on question_id)"""
    from modalprompt.scoring.scorers import score_predictions

    if len(answers_file) > 1:  # the rules pass the task's, which may be absent: none or one
        raise ConfigError(f"--answers-file: one file at most, got {len(answers_file)}")
    answers = answers_file[0] if answers_file else None
    result = score_predictions(scorer, predictions, eval_file, task, max_samples or None, answers)
    record = {"task": task, "stage": stage, **result.to_json()}
    if cost:
        record["cost"] = json.loads(cost.read_text())
    if out:
        atomic_write_text(out, json.dumps(record, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "per_question"}, default=str))


def matrix(
    *,
    tasks: Annotated[list[str], Arg("task names in training order")],
    scores: Annotated[list[Path], Arg("score JSON files (from score --stage)")],
    out_dir: Annotated[
        Path, Arg("folder of matrix.csv, selection.csv, metrics.json, heatmap.png, cost.json")
    ],
    method: Annotated[str, Arg("the method whose matrix this is (modalprompt.methods)")] = "modalprompt",
    title: Annotated[str, Arg("heatmap title")] = "accuracy (%)",
    stages: Annotated[list[Path], Arg("the stage.json of every stage the matrix's rows come from")] = (),
) -> None:
    """matrix.csv, selection.csv, metrics.json, heatmap.png and cost.json of a method from its score files"""
    from modalprompt import methods
    from modalprompt.scoring.report import write_method_summary

    result = write_method_summary(out_dir, tasks, scores, title, methods.get(method).repeats_base, stages)
    print((Path(out_dir) / "matrix.csv").read_text(), end="")
    print(json.dumps(result))


def aggregate(
    *,
    seeds: Annotated[list[int], Arg("the seeds, in order")],
    folders: Annotated[
        list[Path], Arg("each seed's method folder (matrix.csv, metrics.json, ...), same order")
    ],
    out_dir: Annotated[Path, Arg("the method's folder over the seeds")],
    title: Annotated[str, Arg("heatmap title")] = "accuracy (%)",
) -> None:
    """a method over its seeds: mean and standard deviation of its matrix and metrics"""
    from modalprompt.scoring.report import write_seed_summary

    if len(seeds) != len(folders):
        raise ConfigError(f"{len(seeds)} seeds for {len(folders)} folders: give one folder per seed")
    result = write_seed_summary(out_dir, dict(zip(seeds, folders, strict=True)), title)
    print(json.dumps(result))


def metrics(
    matrix: Annotated[Path, Arg("CSV: stage, then one column per task in training order")],
    *,
    selection: Annotated[Path | None, Arg("CSV of selection accuracies in the same layout")] = None,
) -> None:
    """continual-learning metrics of an accuracy matrix CSV, as JSON"""
    from modalprompt.scoring.report import metrics_of_files

    print(json.dumps(metrics_of_files(matrix, selection), indent=1))


def compare(
    *,
    results: Annotated[Path, Arg("the experiment's results folder")],
    methods: Annotated[list[str], Arg("methods with matrix.csv and metrics.json")],
    out_dir: Annotated[Path, Arg("folder of forgetting.png and metrics.csv")],
    title: Annotated[str, Arg("figure title")] = "accuracy per task",
) -> None:
    """forgetting curves and a metrics table of several methods"""
    from modalprompt.scoring.report import write_comparison

    write_comparison(results, methods, out_dir, title)


def published(
    run: Annotated[Path, Arg("the method's results folder, e.g. results/coin-llava7b/modalprompt")],
    row: Annotated[Path, Arg("the published row, e.g. docs/published/modalprompt-coin-llava-1.5-7b.json")],
    *,
    as_json: Annotated[bool, Arg("print JSON instead of the table", flag="--json")] = False,
) -> None:
    """a finished run's final accuracies and metrics beside a published row"""
    from modalprompt.scoring.published import compare_run, format_comparison, load_published

    published_row = load_published(row)
    comparison = compare_run(run, published_row)
    if as_json:
        print(json.dumps({"stage": comparison.stage, "final": comparison.final, "metrics": comparison.metrics,
                          "columns": ["ours", "ours_coin_scoring", "published"]}, indent=1))  # fmt: skip
    else:
        print(format_comparison(comparison, published_row), end="")


def confusion(
    *,
    tasks: Annotated[list[str], Arg("task names in training order")],
    predictions: Annotated[list[Path], Arg("one predictions JSONL per task")],
    out_dir: Annotated[Path, Arg("folder of selection_confusion.csv and .png")],
    title: Annotated[str, Arg("figure title")] = "selection",
) -> None:
    """selection confusion (true task vs prompt ranked first) at one stage"""
    from modalprompt.scoring.report import write_confusion

    write_confusion(out_dir, tasks, predictions, title)


def answer_overlap(
    *,
    tasks: Annotated[list[str], Arg("task names in training order")],
    train_files: Annotated[list[Path], Arg("each task's train.json, in task order")],
    eval_files: Annotated[list[Path], Arg("each task's test.json / val.json, in task order")],
    scorers: Annotated[list[str], Arg("each task's scorer, in task order (it normalises the answers)")],
    max_samples: Annotated[
        list[int], Arg("each task's evaluation max_samples, in task order (0: all; none given: all)")
    ] = (),
    out: Annotated[Path, Arg("answer_overlap.csv to write")],
) -> None:
    """the share of each task's test answers among each task's training answers, as a CSV"""
    from modalprompt.scoring.overlap import format_overlap, write_answer_overlap

    limits = [n or None for n in max_samples] if max_samples else [None] * len(tasks)
    overlap = write_answer_overlap(out, tasks, train_files, eval_files, scorers, limits)
    print(format_overlap(tasks, overlap), end="")


def overlap_forgetting(
    *,
    overlap: Annotated[Path, Arg("answer_overlap.csv (from answer-overlap)")],
    matrix: Annotated[Path, Arg("the method's matrix.csv")],
    out_dir: Annotated[Path, Arg("folder of answer_overlap.png and overlap_forgetting.json")],
    title: Annotated[str, Arg("figure title")] = "answer overlap and forgetting",
) -> None:
    """a method's answer overlap beside its forgetting, with their Pearson correlation"""
    from modalprompt.scoring.overlap import write_overlap_forgetting

    result = write_overlap_forgetting(out_dir, overlap, matrix, title)
    print(json.dumps({"correlation": result["correlation"], "pearson_r": result["pearson_r"],
                      "cells": len(result["cells"])}))  # fmt: skip


def summary(
    *,
    results: Annotated[Path, Arg("the experiment's results folder")],
    methods: Annotated[list[str], Arg("methods to show, in order")],
    tracking_uri: Annotated[str, Arg("the MLflow store, for the command that opens it")],
) -> None:
    """every method's matrix and a table of their metrics (what a finished `snakemake` prints)"""
    from modalprompt.scoring.report import summary_text
    from modalprompt.tracking import runs_table_address

    print(summary_text(results, methods, tracking_uri, runs_table_address(results)))


def track(
    *,
    uri: Annotated[str, Arg("MLflow tracking URI")],
    experiment: Annotated[str, Arg("MLflow experiment name")],
    results: Annotated[Path, Arg("the experiment's results folder")],
    methods: Annotated[list[str], Arg("methods whose results to record")],
    tasks: Annotated[list[str], Arg("task names in training order")],
    out: Annotated[Path | None, Arg("write the run ids as JSON here")] = None,
    seeds: Annotated[
        list[int], Arg("pipeline.seeds: each seed's run is under seed-<s>/ (none: one run)")
    ] = (),
) -> None:
    """record the methods' results in MLflow (replacing what changed)"""
    from modalprompt.tracking import sync_all

    result = sync_all(uri, experiment, results, methods, tasks, list(seeds) or None)
    if result.get("pending"):
        print(f"modalprompt: warning: MLflow at {uri} does not answer ({result['error']}); the results are "
              "complete on disk, and the next `snakemake` run tracks them", file=sys.stderr)  # fmt: skip
    if out:
        atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


def ui(
    *,
    config: Annotated[Path, Arg("the experiment's config.yaml")] = Path("config.yaml"),
    port: Annotated[int, Arg("port on 127.0.0.1")] = 5000,
) -> int:
    """start the MLflow UI on 127.0.0.1 over the experiment's tracking store"""
    import os
    import shutil

    from modalprompt.tracking import runs_table_address

    experiment = load_experiment(config)
    uri = experiment.tracking_uri
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    address = runs_table_address(experiment.results_dir, f"http://127.0.0.1:{port}")
    print(f"modalprompt: MLflow UI over {uri}: open {address}", flush=True)
    os.execv(mlflow, [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)])
    return 0


# ------------------------------------------------------------------------------------ data and base models


def validate(
    folder: Annotated[Path | None, Arg("folder with train.json and test.json / val.json")] = None,
    *,
    image_root: Annotated[
        Path | None, Arg("folder the image paths are relative to (default: FOLDER)")
    ] = None,
    scorer: Annotated[str | None, Arg("the task's scorer (box_iou also checks answer_bbox)")] = None,
    config: Annotated[Path | None, Arg("validate every task of this config instead")] = None,
    as_json: Annotated[bool, Arg("print the reports as JSON", flag="--json")] = False,
) -> int:
    """report every problem in a CoIN task folder (or all tasks of a config); exit 1 when any is found"""
    from modalprompt.data.validation import validate_config_tasks, validate_folder

    if config:
        reports = validate_config_tasks(load_experiment(config))
    elif folder:
        reports = validate_folder(folder, image_root, scorer)
    else:
        raise ConfigError("validate needs a task FOLDER or --config config.yaml")
    if as_json:
        print(json.dumps([r.to_json() for r in reports], indent=1, default=str))
    else:
        for report in reports:
            print(f"{report.file}: {report.records} records, all valid" if report.ok else report.full())
    return 1 if any(r.problems for r in reports) else 0


def convert_llava(
    src: Annotated[Path, Arg("folder of the original checkpoint (LlavaLlamaForCausalLM)")],
    dst: Annotated[Path, Arg("output folder (llava-hf layout)")],
    *,
    clip: Annotated[Path, Arg("local CLIP folder whose vision model is the tower")],
) -> None:
    """convert an original LLaVA-1.5 checkpoint to the llava-hf layout"""
    from modalprompt.bases.convert import convert_llava as convert

    print(convert(src, dst, clip))


def make_tiny_base(
    llava: Annotated[Path, Arg("llava-hf folder to write")],
    clip: Annotated[Path, Arg("CLIP folder to write")],
    *,
    seed: Annotated[int, Arg("seed of the random weights")] = 0,
    family: Annotated[
        Literal["llava", "llava_next", "qwen2_5_vl"], Arg("the model family (model.family)")
    ] = "llava",
) -> None:
    """write tiny random LLaVA (or LLaVA-NeXT, Qwen2.5-VL) and CLIP folders (for tests and the demo)"""
    from modalprompt.bench.tiny import build_tiny_base

    llava, clip = build_tiny_base(llava, clip, seed=seed, family=family)
    print(json.dumps({"llava": str(llava), "clip": str(clip)}))


def make_toy_data(
    out: Annotated[Path, Arg("folder for colors/, shapes/, count/")],
    *,
    seed: Annotated[int, Arg("seed of the generated images")] = 0,
) -> None:
    """write the toy 3-task CoIN-format dataset"""
    from modalprompt.bench.toy import write_toy_tasks

    print(json.dumps({k: str(v) for k, v in write_toy_tasks(out, seed=seed).items()}))


def make_minicoin(
    out: Annotated[Path, Arg("folder for one sub-folder per task")],
    *,
    tasks: Annotated[list[str], Arg("task names from modalprompt.bench.minicoin.TASKS")] = (),
    train_size: Annotated[int, Arg("training records per task")] = 200,
    test_size: Annotated[int, Arg("test records per task")] = 50,
    generic_size: Annotated[int, Arg("also write <out>/generic with this many records")] = 0,
    grounding_weight: Annotated[
        int, Arg("grounding images of the generic corpus per image of each other kind")
    ] = 1,
    seed: Annotated[int, Arg("seed of the benchmark")] = 0,
) -> None:
    """write mini-CoIN tasks (and the generic pretraining corpus)"""
    from modalprompt.bench import minicoin

    folders = {t: str(minicoin.write_task(out, t, train_size, test_size, seed)) for t in tasks}
    if generic_size:
        folders["generic"] = str(
            minicoin.generic_corpus(Path(out) / "generic", generic_size, seed, test_size, grounding_weight)
        )
    print(json.dumps(folders))


def pretrain_base(
    *,
    corpus: Annotated[Path, Arg("folder with the generic train.json and images")],
    llava: Annotated[Path, Arg("llava-hf folder to write")],
    clip: Annotated[Path, Arg("CLIP folder to write")],
    settings: Annotated[str | None, Arg("model.pretrain settings as JSON")] = None,
) -> None:
    """pretrain the small CPU base (CLIP, then LLaVA) on a generic corpus"""
    from modalprompt.bench.pretrain import pretrain_base as pretrain
    from modalprompt.config import PretrainConfig, from_dict

    chosen = from_dict(PretrainConfig, json.loads(settings), "--settings") if settings else PretrainConfig()
    print(json.dumps(pretrain(corpus, llava, clip, chosen)))


def install_base(
    *,
    llava: Annotated[Path, Arg("llava-hf folder to write")],
    clip: Annotated[Path, Arg("CLIP folder to write")],
) -> None:
    """install the shipped mini-CoIN base (what `pretrain-base` builds from the shipped settings)"""
    from modalprompt.bench.shipped import MANIFEST, install

    print(
        f"modalprompt: installing the shipped base ({MANIFEST}): model.pretrain equals its manifest",
        flush=True,
    )
    print(json.dumps(install(llava, clip)))


def ship_base(
    *,
    config: Annotated[Path, Arg("config.yaml whose model.pretrain and benchmark settings to build from")],
) -> None:
    """pretrain the mini-CoIN base from a config's settings and make it the shipped one (with its manifest)"""
    import tempfile

    from modalprompt.bench import minicoin, shipped
    from modalprompt.bench.pretrain import pretrain_base as pretrain
    from modalprompt.run.train import git_commit

    exp = load_experiment(config)
    with tempfile.TemporaryDirectory(prefix="modalprompt-ship-") as scratch:
        bench = exp.benchmark
        corpus = minicoin.generic_corpus(
            Path(scratch) / "generic",
            bench.generic_size,
            bench.seed,
            bench.test_size,
            bench.generic_grounding_weight,
        )
        llava, clip = Path(scratch) / "llava", Path(scratch) / "clip"
        report = pretrain(corpus, llava, clip, exp.model.pretrain, exp.progress)
        settings = shipped.build_settings(exp.model.pretrain, bench)
        manifest = shipped.ship(llava, clip, settings, corpus / "train.json", report, git_commit())
    print(json.dumps({"manifest": str(manifest)}))


def warm_server(socket: Annotated[Path, Arg("the socket to serve on (a --warm job chooses it)")]) -> None:
    """serve --warm jobs: started by the first one, ends when idle (modalprompt/run/warm.py)"""
    from modalprompt.run.warm import serve

    serve(socket, main)


def schema() -> None:
    """print the JSON Schema of config.yaml (YAML)"""
    import yaml

    from modalprompt.experiment import json_schema

    print(yaml.safe_dump(json_schema(), sort_keys=False, width=120), end="")


COMMANDS = (train, evaluate, run, submit, score, matrix, aggregate, metrics, compare, published, confusion, answer_overlap,
            overlap_forgetting, summary, track, ui,
            validate, convert_llava, make_tiny_base, make_toy_data, make_minicoin, pretrain_base, install_base, ship_base, schema, warm_server)  # fmt: skip


# ------------------------------------------------------------------------------------ signatures to argparse


def _add_command(sub: argparse._SubParsersAction, func) -> None:
    doc = inspect.getdoc(func) or ""
    parser = sub.add_parser(func.__name__.replace("_", "-"), help=doc, description=doc)
    hints = typing.get_type_hints(func, include_extras=True)
    for name, param in inspect.signature(func).parameters.items():
        kind, arg = hints[name].__origin__, hints[name].__metadata__[0]
        required = param.default is inspect.Parameter.empty
        options: dict[str, Any] = {"help": arg.help}
        if kind in (bool, bool | None):
            parser.add_argument(
                arg.flag or f"--{name.replace('_', '-')}", dest=name, action="store_true", **options
            )
            continue
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if typing.get_origin(kind) is list:
            kind = typing.get_args(kind)[0]
            options["nargs"] = argparse.REMAINDER if arg.rest else ("+" if required else "*")
        if typing.get_origin(kind) is Literal:
            options["choices"] = list(typing.get_args(kind))
            kind = str
        if not required:
            options["default"] = list(param.default) if isinstance(param.default, tuple) else param.default
        if param.kind is inspect.Parameter.KEYWORD_ONLY and not arg.rest:
            parser.add_argument(arg.flag or f"--{name.replace('_', '-')}", dest=name, type=kind, required=required,
                                **options)  # fmt: skip
        else:
            if not required and "nargs" not in options:
                options["nargs"] = "?"
            parser.add_argument(name, type=kind, **options)
    parser.set_defaults(func=func)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modalprompt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warm", choices=["yes", "no"], default="no",
                        help="train/evaluate: run in a process forked from a local server that has already "
                             "imported torch and transformers (modalprompt/run/warm.py); no effect under Slurm")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for func in COMMANDS:
        _add_command(sub, func)
    return parser


WARM_COMMANDS = ("train", "evaluate")


def _without_warm(argv: list[str]) -> list[str]:
    """The command line without the leading --warm option (the child runs the command itself)."""
    i = (
        argv.index("--warm")
        if "--warm" in argv
        else argv.index(next(a for a in argv if a.startswith("--warm=")))
    )
    return argv[:i] + argv[i + (1 if "=" in argv[i] else 2) :]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(_parser().parse_args(argv))
    func = args.pop("func")
    warm, command = args.pop("warm") == "yes", args.pop("command")
    if warm and command in WARM_COMMANDS:
        from modalprompt.run.warm import run_warm

        status = run_warm(_without_warm(argv))
        if status is not None:
            return status  # the command ran in a warm child; None: run it here
    try:
        return func(**args) or 0
    except USER_ERRORS as err:
        print(f"modalprompt: error: {err}", file=sys.stderr)
        return 2
