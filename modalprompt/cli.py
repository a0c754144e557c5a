"""Command line: a thin map from subcommands to the package's typed functions.

Jobs take their settings either from a config file (`--config config.yaml --task NAME`, for people) or as
one JSON string (`--settings`, what the Snakemake rules pass: exactly the resolved settings of that job).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from modalprompt.config import (
    ConfigError,
    EngineConfig,
    EvalJob,
    ExperimentConfig,
    JobResources,
    PreemptionConfig,
    Strategy,
    TrainJob,
    eval_job,
    job_from_json,
    load_experiment,
    train_job,
)
from modalprompt.errors import BaseModelError, CheckpointError, DataError
from modalprompt.files import atomic_write_bytes, atomic_write_text

USER_ERRORS = (ConfigError, BaseModelError, CheckpointError, DataError)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on a signal with its state saved; the same command continues


def _job(
    args: argparse.Namespace, cls: type, from_config
) -> tuple[TrainJob | EvalJob, ExperimentConfig | None]:
    """The job's settings, and the experiment config when they came from --config (None with --settings)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.settings:
        return job_from_json(cls, args.settings), None
    if not (args.config and args.task):
        raise ConfigError("give --settings JSON, or --config config.yaml with --task NAME")
    experiment = load_experiment(args.config)
    return from_config(experiment, args.task), experiment


def _cmd_train(args: argparse.Namespace) -> int:
    from modalprompt.backbone import load_backbone
    from modalprompt.distributed import init_from_environment, shutdown
    from modalprompt.resume import Preempted
    from modalprompt.train import train_stage

    job, experiment = _job(args, TrainJob, train_job)
    engine = experiment.engine if experiment is not None else EngineConfig()
    if args.zero_stage is not None:
        engine = replace(engine, zero_stage=None if args.zero_stage == "none" else int(args.zero_stage))
    if args.offload is not None:
        engine = replace(engine, offload=args.offload == "yes")
    if engine.offload and engine.zero_stage != 3:
        raise ConfigError("--offload yes needs --zero-stage 3 (ZeRO-Offload moves the base's ZeRO-3 shards)")
    rank, _ = init_from_environment()  # torchrun or srun with several tasks: one process per GPU
    try:
        result = train_stage(load_backbone(job.model), job.method, job.training, job.task, args.previous,
                             args.out, data=job.data, strategy=job.strategy, progress=not args.quiet,
                             state_dir=args.state_dir, save_every_steps=args.save_every,
                             engine=engine)  # fmt: skip
    except Preempted as stopped:
        print(f"modalprompt: {stopped}; run the same command again to continue", file=sys.stderr)
        return EXIT_PREEMPTED
    finally:
        shutdown()
    if rank != 0:
        return 0  # rank 0 wrote the checkpoint; it reports
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
                "skipped_records": len(result.skipped),
                "resumed_from_step": result.resumed_from_step,
            }
        )
    )
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    """One training stage as a Slurm job through submitit, without Snakemake (debugging on a cluster).
    Resources default to config.yaml's resources.train when the train arguments name a --config."""
    import submitit

    from modalprompt.submit import SubmittedTrain

    train_args = [a for a in args.train_args if a != "--"]
    parsed = build_parser().parse_args(["train", *train_args])
    res, preemption = JobResources(), PreemptionConfig()
    if parsed.config:
        cfg = load_experiment(parsed.config)
        res, preemption = cfg.resources.train, cfg.preemption
    gpus = res.gpus if args.gpus is None else args.gpus
    timeout = args.timeout_min or res.runtime
    executor = submitit.AutoExecutor(folder=args.logs, cluster=args.cluster)
    executor.update_parameters(
        name="modalprompt-train",
        timeout_min=timeout,
        nodes=args.nodes,
        tasks_per_node=max(gpus, args.tasks, 1),  # one process per GPU
        gpus_per_node=gpus,
        cpus_per_task=args.cpus or res.cpus,
        mem_gb=(args.mem_gb or res.mem_mb / 1024),
        # submitit's own warning signal (USR2): it requeues the job, which resumes from the last saved state
        slurm_signal_delay_s=min(preemption.signal_seconds or 90, timeout * 30),
        **({"slurm_partition": args.partition} if args.partition else {}),
        **({"slurm_account": args.account} if args.account else {}),
    )
    job = executor.submit(SubmittedTrain(), train_args)
    print(json.dumps({"job_id": job.job_id, "logs": str(args.logs)}), flush=True)
    if args.wait:
        job.results()  # every task's result; raises with the failing task's traceback
        print(job.stdout() or "", end="")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from modalprompt.backbone import load_backbone
    from modalprompt.evaluate import evaluate_stage

    job, _ = _job(args, EvalJob, eval_job)
    result = evaluate_stage(load_backbone(job.model), job.method, job.evaluation, job.task, args.checkpoints,
                            args.out, data=job.data, strategy=job.strategy, progress=not args.quiet)  # fmt: skip
    print(
        json.dumps(
            {
                "task": result.task,
                "stage": result.stage,
                "samples": len(result.predictions),
                "skipped_records": len(result.skipped),
                "seconds": round(result.seconds, 3),
                "samples_per_s": round(result.samples_per_s, 2),
            }
        )
    )


def _cmd_score(args: argparse.Namespace) -> None:
    from modalprompt.scoring import score_predictions

    result = score_predictions(
        args.scorer, args.predictions, args.eval_file, args.task, args.max_samples or None
    )
    record = {"task": args.task, "stage": args.stage, **result.to_json()}
    if args.out:
        atomic_write_text(args.out, json.dumps(record, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "per_question"}, default=str))


def _cmd_matrix(args: argparse.Namespace) -> None:
    """Accuracy and selection matrices, metrics and heatmap from score files (each names its stage/task)."""
    from modalprompt.metrics import compute_metrics, format_matrix
    from modalprompt.plots import write_heatmap

    tasks = list(args.tasks)
    accuracy: dict[int, list[float | None]] = {}
    selection: dict[int, list[float | None]] = {}
    for path in args.scores:
        record = json.loads(Path(path).read_text())
        if record.get("task") not in tasks or not isinstance(record.get("stage"), int):
            raise DataError(
                f"{path}: needs 'task' (one of {tasks}) and an integer 'stage' (score with --stage)"
            )
        column = tasks.index(record["task"])
        accuracy.setdefault(record["stage"], [None] * len(tasks))[column] = record["accuracy"]
        selection.setdefault(record["stage"], [None] * len(tasks))[column] = record["selection_accuracy"]
    for stage in range(1, (args.repeat_base or 0) + 1):  # a method without training: row 0 at every stage
        accuracy[stage], selection[stage] = list(accuracy[0]), [None] * len(tasks)
    out = Path(args.out_dir)
    metrics = compute_metrics(tasks, accuracy)
    last = [v for v in selection.get(metrics["stages"], []) if v is not None]  # at the last stage
    metrics["selection_accuracy"] = round(sum(last) / len(last), 6) if last else None
    atomic_write_text(out / "matrix.csv", format_matrix(tasks, accuracy))
    atomic_write_text(
        out / "selection.csv", format_matrix(tasks, {s: r for s, r in selection.items() if s > 0})
    )
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    write_heatmap(out / "heatmap.png", tasks, accuracy, args.title or "accuracy (%)")
    print(format_matrix(tasks, accuracy), end="")
    print(json.dumps(metrics))


def _cmd_compare(args: argparse.Namespace) -> None:
    """The methods side by side: forgetting curves (each task across stages, a line per method) and their
    metrics in one table."""
    from modalprompt.metrics import SUMMARY_METRICS, read_matrix
    from modalprompt.plots import forgetting_png

    matrices, rows, tasks = {}, [], []
    for method in args.methods:
        folder = Path(args.results) / method
        tasks, matrices[method] = read_matrix(folder / "matrix.csv")
        metrics = json.loads((folder / "metrics.json").read_text())
        rows.append(
            [method, *("" if metrics.get(k) is None else f"{metrics[k]:.4f}" for k in SUMMARY_METRICS)]
        )
    out = Path(args.out_dir)
    atomic_write_bytes(
        out / "forgetting.png", forgetting_png(tasks, matrices, args.title or "accuracy per task")
    )
    atomic_write_text(
        out / "metrics.csv", "\n".join(",".join(r) for r in [["method", *SUMMARY_METRICS], *rows]) + "\n"
    )


def _cmd_confusion(args: argparse.Namespace) -> None:
    """Selection confusion at one stage: each sample's true task against the task whose prompt ranked first
    (the last of `selected`, which is in ascending score order)."""
    from modalprompt.plots import confusion_png

    tasks = list(args.tasks)
    if len(args.predictions) != len(tasks):
        raise DataError(
            f"--predictions: {len(args.predictions)} files for {len(tasks)} tasks (one per task, in order)"
        )
    counts = [[0] * len(tasks) for _ in tasks]
    for row, path in enumerate(args.predictions):
        for line in Path(path).read_text().splitlines():
            selected = json.loads(line).get("selected") or []
            if selected and selected[-1] in tasks:
                counts[row][tasks.index(selected[-1])] += 1
    out = Path(args.out_dir)
    table = [["true \\ selected", *tasks]] + [[t, *map(str, c)] for t, c in zip(tasks, counts, strict=True)]
    atomic_write_text(out / "selection_confusion.csv", "\n".join(",".join(r) for r in table) + "\n")
    atomic_write_bytes(
        out / "selection_confusion.png", confusion_png(tasks, counts, args.title or "selection")
    )


def _cmd_ui(args: argparse.Namespace) -> int:
    """The MLflow UI on 127.0.0.1 over the experiment's store (replaces this process)."""
    import os
    import shutil

    uri = load_experiment(args.config).tracking_uri
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    command = [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)]
    print(f"modalprompt: MLflow UI on http://127.0.0.1:{args.port} ({uri})", flush=True)
    os.execv(mlflow, command)
    return 0


def _cmd_track(args: argparse.Namespace) -> None:
    from modalprompt.tracking import sync_all

    summary = sync_all(args.uri, args.experiment, Path(args.results), list(args.methods), list(args.tasks))
    if summary.get("pending"):
        print(f"modalprompt: warning: MLflow at {args.uri} does not answer ({summary['error']}); the results are "
              "complete on disk, and the next `snakemake` run tracks them", file=sys.stderr)  # fmt: skip
    if args.out:
        atomic_write_text(args.out, json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


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


def _cmd_convert(args: argparse.Namespace) -> None:
    from modalprompt.backbone import convert_llava

    print(convert_llava(args.src, args.dst, args.clip))


def _cmd_make_tiny_base(args: argparse.Namespace) -> None:
    from modalprompt.tiny import build_tiny_base

    llava, clip = build_tiny_base(args.llava, args.clip, seed=args.seed)
    print(json.dumps({"llava": str(llava), "clip": str(clip)}))


def _cmd_make_toy_data(args: argparse.Namespace) -> None:
    from modalprompt.tiny import write_toy_tasks

    print(json.dumps({k: str(v) for k, v in write_toy_tasks(args.out, seed=args.seed).items()}))


def _cmd_make_minicoin(args: argparse.Namespace) -> None:
    from modalprompt import minicoin

    folders = {
        t: str(minicoin.write_task(args.out, t, args.train_size, args.test_size, args.seed))
        for t in args.tasks
    }
    if args.generic_size:
        folders["generic"] = str(
            minicoin.generic_corpus(Path(args.out) / "generic", args.generic_size, args.seed, args.test_size)
        )
    print(json.dumps(folders))


def _cmd_pretrain_base(args: argparse.Namespace) -> None:
    from modalprompt.config import PretrainConfig, from_dict
    from modalprompt.pretrain import pretrain_base

    settings = (
        from_dict(PretrainConfig, json.loads(args.settings), "--settings")
        if args.settings
        else PretrainConfig()
    )
    report = pretrain_base(
        args.corpus, args.llava, args.clip, settings, log=lambda line: print(line, flush=True)
    )
    print(json.dumps(report))


def _cmd_schema(args: argparse.Namespace) -> None:
    import yaml

    from modalprompt.config import json_schema

    print(yaml.safe_dump(json_schema(), sort_keys=False, width=120), end="")


def _cmd_run(args: argparse.Namespace) -> None:
    """Every stage in order, every (stage s, task j <= s) evaluation and its score, in one process with one
    loaded base model (no Snakemake, no MLflow); then the matrices and metrics, in the pipeline's layout."""
    from modalprompt import layout
    from modalprompt.backbone import load_backbone
    from modalprompt.evaluate import evaluate_stage
    from modalprompt.scoring import score_predictions
    from modalprompt.train import train_stage

    cfg = load_experiment(args.config)
    backbone = load_backbone(cfg.model)
    results, method, names = cfg.results_dir, layout.METHOD, [t.name for t in cfg.tasks]
    cells = layout.evaluation_cells(names, cfg.pipeline.zero_shot)
    scores, checkpoints = [], []
    for stage in range(0, len(names) + 1):
        if stage > 0:
            job = train_job(cfg, names[stage - 1])
            trained = train_stage(backbone, job.method, job.training, job.task, checkpoints,
                                  layout.checkpoint_dir(results, method, stage), data=job.data,
                                  progress=not args.quiet)  # fmt: skip
            atomic_write_text(layout.history_file(results, method, stage),
                              "".join(json.dumps(asdict(m)) + "\n" for m in trained.history))  # fmt: skip
            checkpoints.append(trained.checkpoint)
        for name in [task for s, task in cells if s == stage]:
            job = eval_job(cfg, name, Strategy.ZERO_SHOT if stage == 0 else Strategy.MODALPROMPT)
            out = layout.predictions_file(results, layout.cell_method(method, stage), stage, name)
            evaluate_stage(backbone, job.method, job.evaluation, job.task, checkpoints, out, data=job.data,
                           progress=not args.quiet)  # fmt: skip
            result = score_predictions(cfg.task(name).scorer, out, Path(job.task.eval_file), name,
                                       job.evaluation.max_samples)  # fmt: skip
            scores.append(layout.score_file(results, layout.cell_method(method, stage), stage, name))
            atomic_write_text(
                scores[-1], json.dumps({"task": name, "stage": stage, **result.to_json()}) + "\n"
            )
    _cmd_matrix(argparse.Namespace(tasks=names, scores=scores, title=cfg.experiment, repeat_base=0,
                                   out_dir=layout.method_dir(results, method)))  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modalprompt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def job_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--settings", help="the job's resolved settings as JSON (what the pipeline passes)")
        p.add_argument("--config", type=Path, help="config.yaml to take the settings from (with --task)")
        p.add_argument("--task", help="task name from the config's task list")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")

    p = sub.add_parser("train", help="train one stage: the task's prompt and key network")
    job_options(p)
    p.add_argument(
        "--previous", type=Path, nargs="*", default=[], help="checkpoints of stages 1..t-1, in order"
    )
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--history", type=Path, help="write per-step metrics as JSONL here")
    p.add_argument("--state-dir", type=Path,
                   help="mid-stage state folder: saved on SIGUSR1/SIGTERM and every --save-every steps, "
                        "resumed when present")  # fmt: skip
    p.add_argument(
        "--save-every",
        type=int,
        default=0,
        help="save the mid-stage state every N steps (0: only on a signal)",
    )
    p.add_argument("--zero-stage", choices=["none", "0", "1", "2", "3"],
                   help="none: plain data parallel; 0-3: DeepSpeed with this ZeRO stage (default: the "
                        "config's engine.zero_stage with --config, else none)")  # fmt: skip
    p.add_argument("--offload", choices=["yes", "no"],
                   help="with --zero-stage 3: the base's shards in CPU memory (ZeRO-Offload)")  # fmt: skip
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "submit",
        help="submit one training stage to Slurm with submitit (no Snakemake): modalprompt submit [options] -- "
        "TRAIN ARGUMENTS",
    )
    p.add_argument("--cluster", default=None, help="slurm (default when sbatch exists), local or debug")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--gpus", type=int, help="GPUs per node (default: config's resources.train.gpus)")
    p.add_argument("--tasks", type=int, default=1, help="processes per node when not one per GPU")
    p.add_argument("--nodes", type=int, default=1, help="nodes")
    p.add_argument("--cpus", type=int, help="CPUs per task (default: resources.train.cpus)")
    p.add_argument("--mem-gb", type=float, help="memory per node in GB (default: resources.train.mem_mb)")
    p.add_argument("--timeout-min", type=int, help="time limit (default: resources.train.runtime)")
    p.add_argument("--logs", type=Path, default=Path("submitit-logs"), help="submitit's folder for logs")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its output")
    p.add_argument(
        "train_args", nargs=argparse.REMAINDER, help="-- then the arguments of `modalprompt train`"
    )
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("evaluate", help="generate answers for a task's eval file after stage s")
    job_options(p)
    p.add_argument(
        "--checkpoints", type=Path, nargs="*", default=[], help="checkpoints of stages 1..s, in order"
    )
    p.add_argument("--out", type=Path, required=True, help="predictions JSONL to write")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "score", help="score a predictions JSONL against its eval file (joined on question_id)"
    )
    p.add_argument(
        "--scorer", required=True, help="option_letter | vqa_soft | exact_match | contains | box_iou"
    )
    p.add_argument("--predictions", type=Path, required=True)
    p.add_argument("--eval-file", type=Path, required=True, help="the task's test.json / val.json")
    p.add_argument("--task", help="task name, for selection accuracy (most similar prompt is the task's own)")
    p.add_argument("--stage", type=int, help="stage the predictions come from (recorded for the matrix)")
    p.add_argument("--max-samples", type=int, help="the evaluation's max_samples (0 or absent: all)")
    p.add_argument("--out", type=Path, help="write the full result (with per-question scores) as JSON here")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser(
        "matrix", help="matrix.csv, selection.csv, metrics.json and heatmap.png from score files"
    )
    p.add_argument("--tasks", nargs="+", required=True, help="task names in training order")
    p.add_argument(
        "--scores", type=Path, nargs="+", required=True, help="score JSON files (from score --stage)"
    )
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--title", help="heatmap title")
    p.add_argument("--repeat-base", type=int, default=0, help="fill stages 1..N with row 0 (zero_shot)")
    p.set_defaults(func=_cmd_matrix)

    p = sub.add_parser("metrics", help="continual-learning metrics of an accuracy matrix CSV, as JSON")
    p.add_argument("matrix", type=Path, help="CSV: stage, then one column per task in training order")
    p.add_argument("--selection", type=Path, help="CSV of selection accuracies in the same layout")
    p.set_defaults(func=_cmd_metrics)

    p = sub.add_parser("compare", help="forgetting curves and a metrics table of several methods")
    p.add_argument("--results", type=Path, required=True, help="the experiment's results folder")
    p.add_argument("--methods", nargs="+", required=True, help="methods with matrix.csv and metrics.json")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "confusion", help="selection confusion (true task vs prompt ranked first) at one stage"
    )
    p.add_argument("--tasks", nargs="+", required=True, help="task names in training order")
    p.add_argument(
        "--predictions", type=Path, nargs="+", required=True, help="one predictions JSONL per task"
    )
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=_cmd_confusion)

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 over the experiment's tracking store")
    p.add_argument("--config", type=Path, default=Path("config.yaml"))
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_cmd_ui)

    p = sub.add_parser("track", help="record a method's results in MLflow (replacing what changed)")
    p.add_argument("--uri", required=True, help="MLflow tracking URI")
    p.add_argument("--experiment", required=True, help="MLflow experiment name")
    p.add_argument("--results", type=Path, required=True, help="the experiment's results folder")
    p.add_argument("--methods", nargs="+", required=True, help="methods whose results to record")
    p.add_argument("--tasks", nargs="+", required=True, help="task names in training order")
    p.add_argument("--out", type=Path, help="write the run ids as JSON here")
    p.set_defaults(func=_cmd_track)

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
        "convert-llava", help="convert an original LLaVA-1.5 checkpoint to the llava-hf layout"
    )
    p.add_argument("src", type=Path, help="folder of the original checkpoint (LlavaLlamaForCausalLM)")
    p.add_argument("dst", type=Path, help="output folder (llava-hf layout)")
    p.add_argument(
        "--clip", type=Path, required=True, help="local CLIP folder whose vision model is the tower"
    )
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "make-tiny-base", help="write tiny random LLaVA and CLIP folders (for tests and the demo)"
    )
    p.add_argument("llava", type=Path)
    p.add_argument("clip", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_tiny_base)

    p = sub.add_parser("make-toy-data", help="write the toy 3-task CoIN-format dataset")
    p.add_argument("out", type=Path, help="folder for colors/, shapes/, count/")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_toy_data)

    p = sub.add_parser("make-minicoin", help="write mini-CoIN tasks (and the generic pretraining corpus)")
    p.add_argument("out", type=Path, help="folder for one sub-folder per task")
    p.add_argument("--tasks", nargs="+", default=[], help="task names from modalprompt.minicoin.TASKS")
    p.add_argument("--train-size", type=int, default=200)
    p.add_argument("--test-size", type=int, default=50)
    p.add_argument(
        "--generic-size",
        type=int,
        default=0,
        help="also write <out>/generic with this many records, none a test image",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_minicoin)

    p = sub.add_parser(
        "pretrain-base", help="pretrain the small CPU base (CLIP, then LLaVA) on a generic corpus"
    )
    p.add_argument("--corpus", type=Path, required=True, help="folder with the generic train.json and images")
    p.add_argument("--llava", type=Path, required=True, help="llava-hf folder to write")
    p.add_argument("--clip", type=Path, required=True, help="CLIP folder to write")
    p.add_argument("--settings", help="model.pretrain settings as JSON")
    p.set_defaults(func=_cmd_pretrain_base)

    p = sub.add_parser("schema", help="print the JSON Schema of config.yaml (YAML)")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("run", help="all stages, evaluations and scores in one process, without Snakemake")
    p.add_argument("--config", type=Path, required=True)
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
