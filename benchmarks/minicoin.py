"""The embedded default end to end: wall time of the whole DAG from nothing, where the time goes, every
method's accuracy matrix (and selection matrix) and metrics, and the mini-CoIN targets, each with its
measured value and met / not met.

    python benchmarks/minicoin.py --out benchmarks/results/minicoin-cpu-2core.json

Runs `snakemake --profile profiles/default --configfile CONFIG --cores N` (what `make demo` runs) in a
scratch copy of the project's config (its paths point into a fresh folder, so nothing is reused), recording
Snakemake's own CPU time beside its jobs', then reads the per-job benchmark files Snakemake wrote and
each method's matrix.csv / metrics.json. Prints a table and writes JSON with how it was measured
(benchmarks/record.py). Run it with nothing else on the machine.

    python benchmarks/minicoin.py --rebuild --out benchmarks/results/minicoin-rebuild-cpu-2core.json

times the other path instead: rebuilding the base that the DAG installs from the package (generating the
corpus and pretraining it from `model.pretrain`, what the DAG does when the settings differ from the
shipped manifest), and checks that the rebuilt weights equal the shipped ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml
from record import (
    Measurement,
    jobs_env,
    profile_scheduler,
    relative,
    run_sampled,
    snakemake_command,
    write_results,
)

from modalprompt.bench.shipped import read_manifest
from modalprompt.files import sha256_file
from modalprompt.scoring.metrics import read_matrix

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"wall_minutes": 10.0, "wall_minutes_ceiling": 15.0, "gain_over_zero_shot": 30.0, "bwt": -5.0,
           "selection": 90.0, "oracle_gap": 3.0, "test_size": 200}  # fmt: skip


def run_dag(config: Path, cores: int, folder: Path) -> tuple[Path, float, dict, float | None]:
    raw = yaml.safe_load(config.read_text())
    raw["paths"] = {"models": "models", "data": "data", "results": "results"}
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    command = snakemake_command(folder / "config.yaml", cores, directory=folder)
    start = time.perf_counter()
    done, scheduler_cpu = run_sampled(command, cwd=folder, env=jobs_env())
    wall = time.perf_counter() - start
    (folder / "snakemake.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"snakemake failed; see {folder / 'snakemake.log'}\n{done.stdout[-3000:]}")
    return folder / "results" / raw["experiment"], wall, raw, scheduler_cpu


def rebuild_base(raw: dict, folder: Path) -> dict:
    """Generate the generic corpus and pretrain the base from the config's settings, as the DAG does when
    `model.pretrain` differs from the shipped base's manifest; each step timed."""
    bench, pretrain = raw["benchmark"], raw["model"]["pretrain"]
    steps = {
        "generic_corpus": ["make-minicoin", str(folder / "data"), "--generic-size", str(bench["generic_size"]),
                           "--test-size", str(bench["test_size"]), "--seed", str(bench["seed"])],
        "pretrain_base": ["pretrain-base", "--corpus", str(folder / "data" / "generic"), "--llava",
                          str(folder / "llava"), "--clip", str(folder / "clip"), "--settings", json.dumps(pretrain)],
    }  # fmt: skip
    seconds = {}
    for name, args in steps.items():
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "modalprompt", *args], env=jobs_env(), capture_output=True,
                              text=True)  # fmt: skip
        seconds[name] = round(time.perf_counter() - start, 1)
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    shipped = read_manifest()
    same = all(sha256_file(folder / f) == digest for f, digest in shipped["files"].items()
               if f.endswith(".safetensors"))  # fmt: skip
    return {"seconds": seconds, "total_seconds": round(sum(seconds.values()), 1),
            "weights_equal_the_shipped_ones": same}  # fmt: skip


def job_seconds(results: Path) -> dict[str, dict]:
    """Sum and count of the `s` column of Snakemake's benchmark files, per rule (the file name's prefix)."""
    by_rule: dict[str, list[float]] = defaultdict(list)
    for tsv in (results / "benchmarks").rglob("*.tsv"):
        rule = tsv.stem.split("-stage-")[0]
        with tsv.open() as f:
            by_rule[rule].append(float(next(csv.DictReader(f, delimiter="\t"))["s"]))
    return {r: {"jobs": len(v), "seconds": round(sum(v), 1)} for r, v in sorted(by_rule.items())}


def targets(methods: dict, wall: float | None, test_size: int) -> dict:
    """Each target with what it asks, the measured value and whether it is met (None: not measured)."""
    modalprompt, oracle = methods.get("modalprompt"), methods.get("oracle")
    if modalprompt is None:
        return {}
    gains = modalprompt["gain_over_zero_shot"]
    bwt = modalprompt["metrics"]["bwt"]
    selection = modalprompt["metrics"].get("selection_accuracy")
    minutes = None if wall is None else round(wall / 60, 1)
    out = {
        "wall_minutes": {"target": f"<= {TARGETS['wall_minutes']} on 2 idle cores "
                                   f"(ceiling {TARGETS['wall_minutes_ceiling']})",
                         "measured": minutes, "met": None if wall is None else wall / 60 <= TARGETS["wall_minutes"]},
        "gain_over_zero_shot": {"target": f">= {TARGETS['gain_over_zero_shot']} points on every task, right after "
                                "its own stage", "measured": gains, "lowest": min(gains.values()),
                                "met": min(gains.values()) >= TARGETS["gain_over_zero_shot"]},
        "modalprompt_bwt": {"target": f">= {TARGETS['bwt']}", "measured": bwt, "met": bwt >= TARGETS["bwt"]},
        "selection": {"target": f">= {TARGETS['selection']}% at the last stage", "measured": selection,
                      "met": selection is not None and selection >= TARGETS["selection"]},
        "test_size": {"target": f">= {TARGETS['test_size']} test samples per task", "measured": test_size,
                      "met": test_size >= TARGETS["test_size"]},
    }  # fmt: skip
    if oracle is not None:
        gap = round(oracle["metrics"]["avg"] - modalprompt["metrics"]["avg"], 2)
        out["oracle_gap"] = {"target": f"ModalPrompt's avg within {TARGETS['oracle_gap']} points of the oracle's",
                             "measured": gap, "met": abs(gap) <= TARGETS["oracle_gap"]}  # fmt: skip
    return out


def method_results(results: Path) -> dict:
    methods = sorted(p.name for p in results.iterdir() if (p / "metrics.json").is_file())
    tasks, zero = read_matrix(results / "zero_shot" / "matrix.csv") if "zero_shot" in methods else ([], {})
    out = {}
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
        out[method] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="run in this folder (kept) instead of a temporary one")
    parser.add_argument("--rebuild", action="store_true", help="time rebuilding the base instead of the DAG")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="minicoin-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    report = rebuild_report(args, folder) if args.rebuild else dag_report(args, folder)
    if args.out:
        write_results(args.out, report)


def rebuild_report(args: argparse.Namespace, folder: Path) -> dict:
    raw = yaml.safe_load(args.config.read_text())
    with Measurement() as measured:
        rebuild = rebuild_base(raw, folder / "rebuild")
    print(f"rebuilding the base: {rebuild['seconds']}; weights equal the shipped ones: "
          f"{rebuild['weights_equal_the_shipped_ones']}")  # fmt: skip
    return {**measured.record(), "config": relative(args.config), "pretrain": raw["model"]["pretrain"],
            "rebuild_base": rebuild}  # fmt: skip


def dag_report(args: argparse.Namespace, folder: Path) -> dict:
    with Measurement() as measured:
        results, wall, raw, scheduler_cpu = run_dag(args.config, args.cores, folder)
    log = (folder / "snakemake.log").read_text()
    report: dict = {
        **measured.record(),
        "config": relative(args.config),
        "cores_used": args.cores,
        "dag_wall_seconds": round(wall, 1),
        "scheduler_cpu_seconds": scheduler_cpu,  # Snakemake's own process, its jobs not counted
        "profile_scheduler": profile_scheduler(),
        "base": "shipped" if "installing it" in log else "pretrained in the DAG",
        "job_seconds": job_seconds(results),
        "methods": method_results(results),
    }
    report["targets"] = targets(report["methods"], wall, raw["benchmark"]["test_size"])

    print(f"DAG: {wall / 60:.1f} min on {args.cores} cores ({report['base']} base); Snakemake's own CPU: "
          f"{scheduler_cpu} s")  # fmt: skip
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
    return report


if __name__ == "__main__":
    main()
