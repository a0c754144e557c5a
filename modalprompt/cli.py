"""Command line: a thin map from subcommands to the package's typed functions."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from modalprompt.backbone import BaseModelError
from modalprompt.checkpoint import CheckpointError, atomic_write_text
from modalprompt.config import ConfigError, load_experiment
from modalprompt.errors import DataError

USER_ERRORS = (ConfigError, BaseModelError, CheckpointError, DataError)


def _cmd_make_tiny(args: argparse.Namespace) -> None:
    from modalprompt.tiny import build_tiny_base, write_toy_tasks

    llava, clip = build_tiny_base(args.models, seed=args.seed)
    tasks = write_toy_tasks(args.data, seed=args.seed)
    print(
        json.dumps({"llava": str(llava), "clip": str(clip), "tasks": {k: str(v) for k, v in tasks.items()}})
    )


def _cmd_convert(args: argparse.Namespace) -> None:
    from modalprompt.backbone import convert_llava

    print(convert_llava(args.src, args.dst, args.clip))


def _cmd_train(args: argparse.Namespace) -> None:
    from modalprompt.backbone import load_backbone
    from modalprompt.train import train_stage

    cfg = load_experiment(args.config)
    task = cfg.task(args.task)
    result = train_stage(
        load_backbone(cfg.model),
        cfg.method,
        cfg.training_for(task.name),
        task,
        args.previous,
        args.out,
        data=cfg.data,
        progress=not args.quiet,
    )
    if args.history:
        atomic_write_text(args.history, "".join(json.dumps(asdict(m)) + "\n" for m in result.history))
    print(
        json.dumps(
            {
                "task": result.task,
                "stage": result.stage,
                "checkpoint": str(result.checkpoint),
                "steps": result.steps,
                "seconds": round(result.seconds, 3),
                "samples_per_s": round(result.samples_per_s, 2),
            }
        )
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from modalprompt.backbone import load_backbone
    from modalprompt.evaluate import evaluate_stage

    cfg = load_experiment(args.config)
    task = cfg.task(args.task)
    result = evaluate_stage(
        load_backbone(cfg.model),
        cfg.method,
        cfg.evaluation_for(task.name),
        task,
        args.checkpoints,
        args.out,
        data=cfg.data,
        progress=not args.quiet,
    )
    print(
        json.dumps(
            {
                "task": result.task,
                "stage": result.stage,
                "samples": len(result.predictions),
                "seconds": round(result.seconds, 3),
                "samples_per_s": round(result.samples_per_s, 2),
            }
        )
    )


def _cmd_run(args: argparse.Namespace) -> None:
    """Every stage in order, every (stage s, task j <= s) evaluation and its score, with one loaded base
    model; then the accuracy matrix, the selection matrix and the metrics."""
    from modalprompt.backbone import load_backbone
    from modalprompt.evaluate import evaluate_stage
    from modalprompt.metrics import compute_metrics, format_matrix
    from modalprompt.scoring import score_predictions
    from modalprompt.train import train_stage

    cfg = load_experiment(args.config)
    backbone = load_backbone(cfg.model)
    results = Path(args.results)
    names = [t.name for t in cfg.tasks]
    accuracy = {s: [None] * len(names) for s in range(1, len(names) + 1)}
    selection = {s: [None] * len(names) for s in range(1, len(names) + 1)}
    checkpoints: list[Path] = []
    for stage, task in enumerate(cfg.tasks, start=1):
        trained = train_stage(
            backbone, cfg.method, cfg.training_for(task.name), task, checkpoints,
            results / f"stage-{stage}" / "checkpoint", data=cfg.data, progress=not args.quiet,
        )  # fmt: skip
        checkpoints.append(trained.checkpoint)
        for j, seen in enumerate(cfg.tasks[:stage]):
            evaluation = cfg.evaluation_for(seen.name)
            out = results / f"stage-{stage}" / "eval" / f"{seen.name}.jsonl"
            evaluate_stage(
                backbone,
                cfg.method,
                evaluation,
                seen,
                checkpoints,
                out,
                data=cfg.data,
                progress=not args.quiet,
            )
            scored = score_predictions(
                seen.scorer, out, Path(seen.eval_file), seen.name, evaluation.max_samples
            )
            atomic_write_text(out.with_suffix(".score.json"), json.dumps(scored.to_json(), indent=1) + "\n")
            accuracy[stage][j], selection[stage][j] = scored.accuracy, scored.selection_accuracy
            print(
                f"stage {stage} ({task.name}) on {seen.name}: accuracy {scored.accuracy:.1f}%, "
                f"selection {scored.selection_accuracy:.1f}%"
            )
    atomic_write_text(results / "matrix.csv", format_matrix(names, accuracy))
    atomic_write_text(results / "selection.csv", format_matrix(names, selection))
    metrics = compute_metrics(names, accuracy)
    atomic_write_text(results / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics))


def _cmd_validate(args: argparse.Namespace) -> int:
    """Every problem of a CoIN task folder, or of every task in a config; exit 1 when any is found."""
    from modalprompt.validation import (
        ImageChecker,
        load_records,
        validate_eval_records,
        validate_folder,
        validate_train_records,
    )

    if args.config:
        cfg = load_experiment(args.config)
        reports = []
        for task in cfg.tasks:
            images = ImageChecker(Path(task.image_root), open_images=cfg.data.check_images)
            train, test = Path(task.train_file), Path(task.eval_file)
            reports.append(validate_train_records(load_records(train), str(train), images))
            reports.append(validate_eval_records(load_records(test), str(test), images, task.scorer))
    elif args.folder:
        reports = validate_folder(args.folder, args.image_root, args.scorer)
    else:
        raise ConfigError("validate needs a task FOLDER or --config config.yaml")
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=1, default=str))
    else:
        for report in reports:
            print(f"{report.file}: {report.records} records, all valid" if report.ok else report.full())
    return 1 if any(r.problems for r in reports) else 0


def _cmd_score(args: argparse.Namespace) -> None:
    from modalprompt.scoring import score_predictions

    result = score_predictions(args.scorer, args.predictions, args.eval_file, args.task, args.max_samples)
    if args.out:
        atomic_write_text(args.out, json.dumps(result.to_json(), indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.to_json().items() if k != "per_question"}, default=str))


def _cmd_metrics(args: argparse.Namespace) -> None:
    from modalprompt.metrics import compute_metrics, read_matrix

    tasks, matrix = read_matrix(args.matrix)
    result = compute_metrics(tasks, matrix)
    if args.selection:
        _, selection = read_matrix(args.selection)
        last = selection.get(result["stages"])
        if last is None:
            raise DataError(f"{args.selection}: no row for stage {result['stages']}")
        by_task = {t: v for t, v in zip(tasks, last, strict=False) if v is not None}
        result["selection_accuracy"] = sum(by_task.values()) / len(by_task) if by_task else None
        result["selection_accuracy_by_task"] = by_task
    print(json.dumps(result, indent=1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modalprompt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny", help="write tiny local base models and a toy 3-task CoIN-format dataset")
    p.add_argument(
        "--models", type=Path, default=Path("models/tiny"), help="output folder for llava/ and clip/"
    )
    p.add_argument("--data", type=Path, default=Path("data/toy"), help="output folder for the toy tasks")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_tiny)

    p = sub.add_parser(
        "convert-llava", help="convert an original LLaVA-1.5 checkpoint to the llava-hf layout"
    )
    p.add_argument("src", type=Path, help="folder of the original checkpoint (LlavaLlamaForCausalLM)")
    p.add_argument("dst", type=Path, help="output folder (llava-hf layout)")
    p.add_argument(
        "--clip", type=Path, required=True, help="local CLIP folder whose vision model is the tower"
    )
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("train", help="train one stage: the task's prompt and key network")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--task", required=True, help="task name from the config's task list")
    p.add_argument(
        "--previous", type=Path, nargs="*", default=[], help="checkpoints of stages 1..t-1, in order"
    )
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--history", type=Path, help="write per-step metrics as JSONL here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="generate answers for a task's eval file after stage s")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--task", required=True, help="task name from the config's task list")
    p.add_argument(
        "--checkpoints", type=Path, nargs="*", default=[], help="checkpoints of stages 1..s, in order"
    )
    p.add_argument("--out", type=Path, required=True, help="predictions JSONL to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "validate", help="report every problem in a CoIN task folder (or all tasks of a config)"
    )
    p.add_argument("folder", type=Path, nargs="?", help="folder with train.json and test.json / val.json")
    p.add_argument("--image-root", type=Path, help="folder the image paths are relative to (default: FOLDER)")
    p.add_argument("--scorer", help="the task's scorer (box_iou also checks answer_bbox)")
    p.add_argument("--config", type=Path, help="validate every task of this config instead")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "score", help="score a predictions JSONL against its eval file (joined on question_id)"
    )
    p.add_argument(
        "--scorer", required=True, help="option_letter | vqa_soft | exact_match | contains | box_iou"
    )
    p.add_argument("--predictions", type=Path, required=True)
    p.add_argument("--eval-file", type=Path, required=True, help="the task's test.json / val.json")
    p.add_argument("--task", help="task name, for selection accuracy (most similar prompt is the task's own)")
    p.add_argument("--max-samples", type=int, help="the evaluation's max_samples, if it used one")
    p.add_argument("--out", type=Path, help="write the full result (with per-question scores) as JSON here")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("metrics", help="continual-learning metrics of an accuracy matrix CSV, as JSON")
    p.add_argument("matrix", type=Path, help="CSV: stage, then one column per task in training order")
    p.add_argument("--selection", type=Path, help="CSV of selection accuracies in the same layout")
    p.set_defaults(func=_cmd_metrics)

    p = sub.add_parser(
        "run", help="train all stages in order and evaluate each stage on the tasks seen so far"
    )
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except USER_ERRORS as err:
        print(f"modalprompt: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
