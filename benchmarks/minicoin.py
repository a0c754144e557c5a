"""The embedded default end to end: wall time of the whole DAG from nothing, where the time goes, every
method's accuracy matrix (and selection matrix) and metrics, and the mini-CoIN targets (README), each with
its measured value and met / not met.

    python benchmarks/minicoin.py --out benchmarks/results/minicoin-cpu-2core.json

Runs `snakemake --configfile CONFIG --cores N` in a scratch copy of the project's config (its paths point
into a fresh folder, so nothing is reused), then reads the per-job benchmark files Snakemake wrote and
each method's matrix.csv / metrics.json. Prints a table and writes JSON. `--results FOLDER` skips the run
and reads an existing results folder (its wall time is then unknown).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

from modalprompt.scoring.metrics import read_matrix

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"wall_minutes": 15.0, "gain_over_zero_shot": 30.0, "bwt": -5.0, "selection": 90.0}


def run_dag(config: Path, cores: int, folder: Path) -> tuple[Path, float, dict]:
    raw = yaml.safe_load(config.read_text())
    raw["paths"] = {"models": "models", "data": "data", "results": "results"}
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"),
               "--directory", str(folder), "--configfile", str(folder / "config.yaml"), "--cores", str(cores)]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (folder / "snakemake.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"snakemake failed; see {folder / 'snakemake.log'}\n{done.stdout[-3000:]}")
    return folder / "results" / raw["experiment"], wall, raw


def job_seconds(results: Path) -> dict[str, dict]:
    """Sum and count of the `s` column of Snakemake's benchmark files, per rule (the file name's prefix)."""
    by_rule: dict[str, list[float]] = defaultdict(list)
    for tsv in (results / "benchmarks").rglob("*.tsv"):
        rule = tsv.stem.split("-stage-")[0]
        with tsv.open() as f:
            by_rule[rule].append(float(next(csv.DictReader(f, delimiter="\t"))["s"]))
    return {r: {"jobs": len(v), "seconds": round(sum(v), 1)} for r, v in sorted(by_rule.items())}


def targets(modalprompt: dict | None, wall: float | None) -> dict:
    """Each target with what it asks, the measured value and whether it is met (None: not measured)."""
    if modalprompt is None:
        return {}
    gains = modalprompt["gain_over_zero_shot"]
    bwt = modalprompt["metrics"]["bwt"]
    selection = modalprompt["metrics"].get("selection_accuracy")
    return {
        "wall_minutes": {"target": f"< {TARGETS['wall_minutes']} on 2 cores",
                         "measured": None if wall is None else round(wall / 60, 1),
                         "met": None if wall is None else wall / 60 < TARGETS["wall_minutes"]},
        "gain_over_zero_shot": {"target": f">= {TARGETS['gain_over_zero_shot']} points on every task, right after "
                                "its own stage", "measured": gains, "lowest": min(gains.values()),
                                "met": min(gains.values()) >= TARGETS["gain_over_zero_shot"]},
        "modalprompt_bwt": {"target": f">= {TARGETS['bwt']}", "measured": bwt, "met": bwt >= TARGETS["bwt"]},
        "selection": {"target": f">= {TARGETS['selection']}% at the last stage", "measured": selection,
                      "met": selection is not None and selection >= TARGETS["selection"]},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--results", type=Path, help="read this results/<experiment> folder instead of running"
    )
    parser.add_argument("--keep", type=Path, help="run in this folder (kept) instead of a temporary one")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    wall, load_start = None, os.getloadavg()
    if args.results:
        results = args.results
    else:
        folder = args.keep or Path(tempfile.mkdtemp(prefix="minicoin-bench-"))
        folder.mkdir(parents=True, exist_ok=True)
        results, wall, _ = run_dag(args.config, args.cores, folder)
    methods = sorted(p.name for p in results.iterdir() if (p / "metrics.json").is_file())
    tasks, zero = read_matrix(results / "zero_shot" / "matrix.csv") if "zero_shot" in methods else ([], {})
    report: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "cores_used": args.cores,
            "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
        },  # shared machine
        "config": str(args.config),
        "wall_seconds": None if wall is None else round(wall, 1),
        "job_seconds": job_seconds(results),
        "methods": {},
    }
    for method in methods:
        names, matrix = read_matrix(results / method / "matrix.csv")
        metrics = json.loads((results / method / "metrics.json").read_text())
        own = {t: matrix[s][s - 1] for s, t in enumerate(names, start=1) if s in matrix}
        gain = {t: round(v - zero[0][tasks.index(t)], 1) for t, v in own.items() if v is not None and zero}
        entry = {"metrics": metrics, "tasks": names, "matrix": {s: row for s, row in sorted(matrix.items())},
                 "after_own_stage": own, "gain_over_zero_shot": gain}  # fmt: skip
        if (
            results / method / "selection.csv"
        ).is_file():  # share of each task's samples given its own prompt
            _, selection = read_matrix(results / method / "selection.csv")
            entry["selection"] = {s: row for s, row in sorted(selection.items())}
        report["methods"][method] = entry
    report["targets"] = targets(report["methods"].get("modalprompt"), wall)

    print(f"wall: {'-' if wall is None else f'{wall / 60:.1f} min'} on {args.cores} cores")
    for rule, s in report["job_seconds"].items():
        print(f"  {rule:<24} {s['jobs']:>4} jobs {s['seconds']:>8.1f} s")
    print(
        f"{'method':>12} {'avg':>6} {'mft':>6} {'bwt':>6} {'forget':>6} {'select':>6}  gain over zero-shot per task"
    )
    for method, m in report["methods"].items():
        x = m["metrics"]
        sel = x.get("selection_accuracy")
        print(f"{method:>12} {x['avg']:>6.1f} {x['mft']:>6.1f} {x['bwt']:>6.1f} {x['forgetting']:>6.1f} "
              f"{'-' if sel is None else f'{sel:.1f}':>6}  {m['gain_over_zero_shot']}")  # fmt: skip
    for name, t in report["targets"].items():
        print(f"{name}: {t['target']}, measured {t['measured']}: {'met' if t['met'] else 'NOT met'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
