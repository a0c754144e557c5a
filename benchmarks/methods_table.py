"""Every method of a finished run over seeds, as one results file and a README table (mean +- standard
deviation per metric).

    python benchmarks/methods_table.py --config config/ci-all.yaml --out benchmarks/results/ci-all-cpu-2core.json

Reads what `snakemake --configfile CONFIG` (or `modalprompt run --config CONFIG`, which writes the same files)
wrote: each method's metrics.json over the seeds (results/<experiment>/<method>/), the environment
fingerprint of one stage, and the job times of Snakemake's benchmark files (none after `modalprompt run`; give
its wall time with --wall-seconds). Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from modalprompt import layout
from modalprompt.config import load_experiment
from modalprompt.files import atomic_write_text

COLUMNS = ("avg", "mft", "maa", "bwt", "forgetting", "fwt", "selection_accuracy")


def job_seconds(results: Path) -> dict[str, float]:
    """Seconds of every job, summed per rule (train, evaluate, ...), from Snakemake's benchmark files."""
    totals: dict[str, float] = {}
    for path in results.rglob("benchmarks/**/*.tsv"):
        rows = list(csv.DictReader(path.open(), delimiter="\t"))
        rule = path.stem.split("-")[0]
        totals[rule] = totals.get(rule, 0.0) + sum(float(r["s"]) for r in rows)
    return {k: round(v, 1) for k, v in sorted(totals.items())}


def cell(metrics: dict, name: str) -> str:
    mean, std = metrics.get(name), metrics.get("std", {}).get(name)
    if mean is None:
        return "-"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} +- {std:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wall-seconds", type=float, help="wall time of the run, as measured")
    parser.add_argument("--command", help="the command that made the results, as run")
    args = parser.parse_args()
    cfg = load_experiment(args.config)
    if not cfg.pipeline.seeds:
        raise SystemExit(f"{args.config}: pipeline.seeds is not set: this table is over seeds")
    results = cfg.results_dir
    methods = [str(m) for m in dict.fromkeys(cfg.pipeline.methods)]
    table = {m: json.loads((layout.method_dir(results, m) / "metrics.json").read_text()) for m in methods}
    first_run = layout.run_dir(results, cfg.pipeline.seeds[0])
    stage_files = sorted(first_run.glob(f"*/stage-1/checkpoint/{layout.META_FILE}"))
    environment = json.loads(stage_files[0].read_text())["extra"]["environment"] if stage_files else None
    record = {
        "config": str(args.config),
        "experiment": cfg.experiment,
        "tasks": [t.name for t in cfg.tasks],
        "seeds": list(cfg.pipeline.seeds),
        "methods": table,
        "command": args.command,
        "wall_seconds": args.wall_seconds,
        "job_seconds": job_seconds(results),
        "environment": environment,
    }
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print("| method | " + " | ".join(c.replace("_accuracy", "") for c in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for method, metrics in table.items():
        print(f"| {method} | " + " | ".join(cell(metrics, c) for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
