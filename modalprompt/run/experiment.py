"""`run_experiment`: the whole experiment in one process with one loaded base model, without Snakemake or
MLflow. It writes the files the DAG writes, in the same layout (modalprompt.layout): every method of
`pipeline.methods`, asked through its interface (modalprompt.methods) what it trains and which cells it
needs; then each method's matrices and metrics, the selection confusion and the comparison."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from modalprompt import layout, methods
from modalprompt.bases.backbone import load_backbone
from modalprompt.config import ExperimentConfig, eval_job, train_job
from modalprompt.files import atomic_write_text
from modalprompt.run.evaluate import evaluate_stage
from modalprompt.run.train import train_stage
from modalprompt.scoring import report
from modalprompt.scoring.scorers import score_predictions


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> dict[str, dict]:
    """Train, evaluate and score every cell of every method; returns each method's metrics."""
    backbone = load_backbone(cfg.model)
    results, tasks = cfg.results_dir, [t.name for t in cfg.tasks]
    chosen = [methods.get(m) for m in dict.fromkeys(cfg.pipeline.methods)]
    checkpoints: dict[str, list[Path]] = {}
    for trainer in dict.fromkeys(m.prompts_of for m in chosen if m.prompts_of):
        checkpoints[trainer] = []
        for stage, task in enumerate(tasks, start=1):
            job = train_job(cfg, task, trainer)
            out = layout.checkpoint_dir(results, trainer, stage)
            trained = train_stage(backbone, job.method, job.training, job.task, checkpoints[trainer], out,
                                  data=job.data, method_name=trainer, progress=progress)  # fmt: skip
            atomic_write_text(layout.history_file(results, trainer, stage),
                              "".join(json.dumps(asdict(m)) + "\n" for m in trained.history))  # fmt: skip
            checkpoints[trainer].append(out)

    summaries, evaluated = {}, set()
    for method in chosen:
        scores = []
        for stage, task in method.cells(tasks, cfg.pipeline.zero_shot):
            owner = layout.cell_method(method.name, stage)  # row 0 is the base model's, shared
            scores.append(layout.score_file(results, owner, stage, task))
            if (owner, stage, task) not in evaluated:
                given = checkpoints[method.prompts_of][:stage] if method.prompts_of else []
                _evaluate_and_score(cfg, backbone, owner, stage, task, given, progress)
                evaluated.add((owner, stage, task))
        folder = layout.method_dir(results, method.name)
        summaries[method.name] = report.write_method_summary(
            folder, tasks, scores, f"{cfg.experiment}: {method.name}", method.repeats_base
        )
        if method.selects:
            last = [layout.predictions_file(results, method.name, len(tasks), t) for t in tasks]
            report.write_confusion(
                folder, tasks, last, f"{cfg.experiment}: {method.name}, prompt ranked first"
            )
    report.write_comparison(results, list(summaries), results / "comparison", f"{cfg.experiment}: accuracy")
    return summaries


def _evaluate_and_score(
    cfg, backbone, owner: str, stage: int, task: str, checkpoints, progress: bool
) -> None:
    job = eval_job(cfg, task, owner)
    predictions = layout.predictions_file(cfg.results_dir, owner, stage, task)
    evaluate_stage(backbone, job.method, job.evaluation, job.task, checkpoints, predictions, data=job.data,
                   method_name=owner, progress=progress)  # fmt: skip
    answers = cfg.task(task).answers_file  # e.g. TextVQA's ten human answers per question
    result = score_predictions(cfg.task(task).scorer, predictions, Path(job.task.eval_file), task,
                               job.evaluation.max_samples, Path(answers) if answers else None)  # fmt: skip
    record = {"task": task, "stage": stage, **result.to_json()}
    atomic_write_text(layout.score_file(cfg.results_dir, owner, stage, task), json.dumps(record) + "\n")
