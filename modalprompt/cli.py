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
from modalprompt.data import DataError

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
    """Every stage in order, then every (stage s, task j <= s) evaluation, with one loaded base model."""
    from modalprompt.backbone import load_backbone
    from modalprompt.evaluate import evaluate_stage
    from modalprompt.train import train_stage

    cfg = load_experiment(args.config)
    backbone = load_backbone(cfg.model)
    results = Path(args.results)
    checkpoints: list[Path] = []
    for stage, task in enumerate(cfg.tasks, start=1):
        folder = results / f"stage-{stage}" / "checkpoint"
        trained = train_stage(
            backbone,
            cfg.method,
            cfg.training_for(task.name),
            task,
            checkpoints,
            folder,
            progress=not args.quiet,
        )
        checkpoints.append(trained.checkpoint)
        for seen in cfg.tasks[:stage]:
            out = results / f"stage-{stage}" / "eval" / f"{seen.name}.jsonl"
            evaluate_stage(
                backbone,
                cfg.method,
                cfg.evaluation_for(seen.name),
                seen,
                checkpoints,
                out,
                progress=not args.quiet,
            )
            print(f"stage {stage} ({task.name}): predictions for {seen.name} -> {out}")


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
        args.func(args)
    except USER_ERRORS as err:
        print(f"modalprompt: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
