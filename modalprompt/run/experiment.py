"""`run_experiment`: the whole experiment in one process with one loaded base model, without Snakemake or
MLflow. It writes the files the DAG writes, in the same layout (modalprompt.layout): every method of
`pipeline.methods`, asked through its interface (modalprompt.methods) what it trains and which cells it
needs; then each method's matrices, metrics and cost, the selection confusion, the comparison, and the
tasks' answer overlap set against each method's forgetting."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from modalprompt import layout, methods
from modalprompt.bases.backbone import load_backbone
from modalprompt.experiment import ExperimentConfig
from modalprompt.files import atomic_write_text
from modalprompt.jobs import eval_job, parse_options, train_job
from modalprompt.run.evaluate import evaluate_stage
from modalprompt.run.train import train_stage
from modalprompt.scoring import overlap, report
from modalprompt.scoring.scorers import score_predictions


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> dict[str, dict]:
    """Train, evaluate and score every cell of every method (with pipeline.seeds: once per seed, in
    seed-<s>/, then each method over the seeds); returns each method's metrics."""
    backbone = load_backbone(cfg.model)
    seeds = list(cfg.pipeline.seeds) if cfg.pipeline.seeds else None
    results, summaries, evaluated = cfg.results_dir, {}, set()
    for seed in seeds or [None]:
        summaries = _run_one_seed(
            cfg, backbone, layout.run_dir(results, seed), seed, seeds, evaluated, progress
        )
    if seeds:
        summaries = {
            name: report.write_seed_summary(
                layout.method_dir(results, name),
                {s: layout.method_dir(layout.run_dir(results, s), name) for s in seeds},
                f"{cfg.experiment}: {name}",
            )
            for name in summaries
        }
    report.write_comparison(results, list(summaries), results / "comparison", f"{cfg.experiment}: accuracy")
    overlap_csv = results / layout.ANSWER_OVERLAP_FILE
    overlap.write_answer_overlap(overlap_csv, [t.name for t in cfg.tasks], [Path(t.train_file) for t in cfg.tasks],
                                 [Path(t.eval_file) for t in cfg.tasks], [t.scorer for t in cfg.tasks],
                                 [cfg.evaluation_for(t.name).max_samples for t in cfg.tasks])  # fmt: skip
    for name in summaries:
        folder = layout.method_dir(results, name)
        overlap.write_overlap_forgetting(
            folder, overlap_csv, folder / "matrix.csv", f"{cfg.experiment}: {name}"
        )
    return summaries


def _run_one_seed(
    cfg, backbone, run: Path, seed: int | None, seeds: list[int] | None, evaluated: set, progress: bool
):
    """One seed's run in `run` (the layout of a run without seeds); returns each method's metrics. `evaluated`:
    the cells evaluated so far, over all seeds (row 0 once)."""
    tasks = [t.name for t in cfg.tasks]
    chosen = [methods.get(m) for m in dict.fromkeys(cfg.pipeline.methods)]
    checkpoints: dict[str, list[Path]] = {}
    for trainer in dict.fromkeys(m.prompts_of for m in chosen if m.prompts_of):
        checkpoints[trainer] = []
        for stage, task in enumerate(tasks, start=1):
            job = train_job(cfg, task, trainer, seed)
            out = layout.checkpoint_dir(run, trainer, stage)
            previous = [checkpoints[trainer][s - 1] for s in methods.get(trainer).training_inputs(stage)]
            trained = train_stage(backbone, job.method, job.training, job.task, previous, out, data=job.data,
                                  method_name=trainer, progress=progress, options=parse_options(job.options),
                                  earlier_tasks=job.earlier_tasks)  # fmt: skip
            atomic_write_text(layout.history_file(run, trainer, stage),
                              "".join(json.dumps(asdict(m)) + "\n" for m in trained.history))  # fmt: skip
            checkpoints[trainer].append(out)

    summaries = {}
    for method in chosen:
        scores = []
        for stage, task in method.cells(tasks, cfg.pipeline.zero_shot):
            owner = layout.cell_method(method.name, stage)  # row 0 is the base model's, shared
            # row 0 is evaluated once, in the first seed's run
            home = layout.run_dir(cfg.results_dir, layout.cell_seed(seed, seeds, stage))
            scores.append(layout.score_file(home, owner, stage, task))
            if (home, owner, stage, task) not in evaluated and not layout.score_file(
                home, owner, stage, task
            ).is_file():
                given = (
                    [checkpoints[method.prompts_of][s - 1] for s in method.evaluation_inputs(stage)]
                    if method.prompts_of
                    else []
                )
                _evaluate_and_score(cfg, backbone, home, owner, stage, task, given, progress)
            evaluated.add((home, owner, stage, task))
        folder = layout.method_dir(run, method.name)
        trainer = method.prompts_of  # whose stages its rows come from: their stage.json records their cost
        stage_files = (
            [layout.checkpoint_files(run, trainer, s)[0] for s in range(1, len(tasks) + 1)] if trainer else []
        )
        summaries[method.name] = report.write_method_summary(
            folder, tasks, scores, f"{cfg.experiment}: {method.name}", method.repeats_base, stage_files
        )
        if method.selects:
            last = [layout.predictions_file(run, method.name, len(tasks), t) for t in tasks]
            report.write_confusion(
                folder, tasks, last, f"{cfg.experiment}: {method.name}, prompt ranked first"
            )
    return summaries


def _evaluate_and_score(
    cfg, backbone, run: Path, owner: str, stage: int, task: str, checkpoints, progress: bool
) -> None:
    job = eval_job(cfg, task, owner)
    predictions = layout.predictions_file(run, owner, stage, task)
    evaluated = evaluate_stage(backbone, job.method, job.evaluation, job.task, checkpoints, predictions,
                               data=job.data, method_name=owner, progress=progress,
                               options=parse_options(job.options))  # fmt: skip
    answers = cfg.task(task).answers_file  # e.g. TextVQA's ten human answers per question
    result = score_predictions(cfg.task(task).scorer, predictions, Path(job.task.eval_file), task,
                               job.evaluation.max_samples, Path(answers) if answers else None)  # fmt: skip
    record = {"task": task, "stage": stage, **result.to_json(), "cost": {"task": task, "stage": stage,
                                                                        **evaluated.cost.to_json()}}  # fmt: skip
    atomic_write_text(layout.score_file(run, owner, stage, task), json.dumps(record) + "\n")
