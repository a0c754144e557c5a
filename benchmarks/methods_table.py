"""Every method of an experiment over seeds, run and timed by this script as one results file; and the
Markdown table of such a file (mean +- standard deviation per metric).

    python benchmarks/methods_table.py --config config/minicoin-all.yaml --cores 2 \\
        --out benchmarks/results/minicoin-all-cpu-2core.json
    python benchmarks/methods_table.py --table benchmarks/results/minicoin-all-cpu-2core.json

The first runs `snakemake --profile profiles/default --configfile CONFIG --cores N` in the repository, timed
(the config's paths are relative to the config file: config/minicoin-all.yaml shares the default run's
generated data and pretrained base, so run `make demo` first, or the DAG builds them too and the wall time
includes them; the jobs Snakemake planned, per rule, and Snakemake's own CPU time are recorded). It refuses to
start when the experiment's results folder exists: the wall time must be the whole run's. Then it reads what
the run wrote: each method's metrics.json over the seeds (results/<experiment>/<method>/), its cost
(cost.json), its budget (prompt rows, epochs, learning rate, values trained per stage, records of earlier
tasks), the environment fingerprint of one stage, and the job times of Snakemake's benchmark files, and writes
them with how they were measured (benchmarks/record.py). The config must set pipeline.seeds. The second prints
the table of a results file written by the first.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

from record import (
    Measurement,
    jobs_env,
    profile_scheduler,
    relative,
    run_sampled,
    snakemake_command,
    write_results,
)

from modalprompt import layout
from modalprompt.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("avg", "mft", "maa", "bwt", "forgetting", "fwt", "selection_accuracy")


def job_seconds(results: Path) -> dict[str, float]:
    """Seconds of every job, summed per rule (train, evaluate, ...), from Snakemake's benchmark files."""
    totals: dict[str, float] = {}
    for path in results.rglob("benchmarks/**/*.tsv"):
        rows = list(csv.DictReader(path.open(), delimiter="\t"))
        rule = path.stem.split("-")[0]
        totals[rule] = totals.get(rule, 0.0) + sum(float(r["s"]) for r in rows)
    return {k: round(v, 1) for k, v in sorted(totals.items())}


def run_dag(config: Path, cores: int) -> tuple[dict[str, int], float | None]:
    """`snakemake --configfile CONFIG --cores N` in the repository; the jobs it planned, per rule, and the CPU
    seconds of Snakemake's own process (its scheduling and bookkeeping, its jobs not counted)."""
    done, scheduler_cpu = run_sampled(snakemake_command(config, cores), cwd=ROOT, env=jobs_env())
    if done.returncode != 0:
        sys.exit(f"snakemake failed:\n{(done.stdout + done.stderr)[-3000:]}")
    stats = (done.stdout + done.stderr).partition("Job stats:")[2].split("\n\n")[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats, re.M)}, scheduler_cpu


def budgets(cfg, results: Path) -> dict[str, dict]:
    """What each method trained and evaluated with, so that a table can say how the budgets differ: the
    prompt rows a sample gets at inference (Method.prefix_tokens), its epochs and learning rate (the first
    task's, its sections' overrides applied: the job's own settings), the values a stage trains (stage 1 of the
    first seed, as its stage.json records) and, for a method that also trains on earlier tasks' records, how
    many its last stage took of its own task and of the earlier ones."""
    from modalprompt import methods
    from modalprompt.jobs import eval_job, parse_options, train_job

    first, seed = cfg.tasks[0].name, cfg.pipeline.seeds[0]
    out: dict[str, dict] = {}
    for name in dict.fromkeys(str(m) for m in cfg.pipeline.methods):
        impl = methods.get(name)
        job = eval_job(cfg, first, name)
        entry: dict = {"prefix_tokens": impl.prefix_tokens(job.method, parse_options(job.options)),
                       "trains": impl.prompts_of}  # fmt: skip
        if impl.prompts_of is not None:
            training = train_job(cfg, first, impl.prompts_of).training
            entry.update(epochs=training.epochs, lr=training.lr)
            run = layout.run_dir(results, seed)
            stage1 = json.loads(
                (layout.checkpoint_dir(run, impl.prompts_of, 1) / layout.META_FILE).read_text()
            )
            entry["trained_values"] = stage1["extra"].get("trained_values")
            last = layout.checkpoint_dir(run, impl.prompts_of, len(cfg.tasks)) / layout.META_FILE
            counts = json.loads(last.read_text())["extra"].get("records_per_task")
            if counts:
                own = counts[cfg.tasks[-1].name]
                entry["last_stage_records"] = {"own": own, "earlier": sum(counts.values()) - own}
        out[name] = entry
    return out


def costs(cfg, results: Path) -> dict[str, dict | None]:
    """Each method's cost in all (cost.json's total, the mean over the seeds), or None where it has none."""
    out = {}
    for name in dict.fromkeys(str(m) for m in cfg.pipeline.methods):
        path = layout.method_dir(results, name) / layout.COST_FILE
        out[name] = json.loads(path.read_text())["total"] if path.is_file() else None
    return out


def cell(metrics: dict, name: str) -> str:
    mean, std = metrics.get(name), metrics.get("std", {}).get(name)
    if mean is None:
        return "-"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} +- {std:.1f}"


def markdown(report: dict) -> str:
    """The table of a results file: one row per method, mean +- standard deviation over the seeds."""
    lines = ["| method | " + " | ".join(c.replace("_accuracy", "") for c in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]  # fmt: skip
    lines += [
        f"| {method} | " + " | ".join(cell(m, c) for c in COLUMNS) + " |"
        for method, m in report["methods"].items()
    ]
    return "\n".join(lines) + "\n"


def measure(config: Path, cores: int, argv: list[str] | None) -> dict:
    cfg = load_experiment(config)
    if not cfg.pipeline.seeds:
        raise SystemExit(f"{config}: pipeline.seeds is not set: this table is over seeds")
    results = cfg.results_dir
    if results.exists() and any(results.iterdir()):
        raise SystemExit(
            f"{results} exists: delete it (or rename the experiment) so that the run is timed whole"
        )
    with Measurement() as measured:
        jobs, scheduler_cpu = run_dag(config, cores)
    methods = [str(m) for m in dict.fromkeys(cfg.pipeline.methods)]
    table = {m: json.loads((layout.method_dir(results, m) / "metrics.json").read_text()) for m in methods}
    first_run = layout.run_dir(results, cfg.pipeline.seeds[0])
    stage_files = sorted(first_run.glob(f"*/stage-1/checkpoint/{layout.META_FILE}"))
    environment = json.loads(stage_files[0].read_text())["extra"]["environment"] if stage_files else None
    return {
        **measured.record(argv),
        "config": relative(config),
        "experiment": cfg.experiment,
        "cores_used": cores,
        "tasks": [t.name for t in cfg.tasks],
        "seeds": list(cfg.pipeline.seeds),
        "jobs": jobs,
        "methods": table,
        "budgets": budgets(cfg, results),
        "cost": costs(cfg, results),
        "train_size": cfg.benchmark.train_size,
        "job_seconds": job_seconds(results),
        "scheduler_cpu_seconds": scheduler_cpu,  # Snakemake's own process, its jobs not counted
        "profile_scheduler": profile_scheduler(),
        "environment": environment,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, help="run this experiment (pipeline.seeds set) and write --out"
    )
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, help="the results file to write")
    parser.add_argument("--table", type=Path, help="print the table of this results file (runs nothing)")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.table.read_text())), end="")
        return
    if not (args.config and args.out):
        parser.error("give --config and --out (run and record), or --table FILE")
    report = measure(args.config, args.cores, None if argv is None else [__file__, *argv])
    write_results(args.out, report)
    print(markdown(report), end="")


if __name__ == "__main__":
    main()
