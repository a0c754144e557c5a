"""Snakemake's own CPU time while it runs a DAG of many short jobs, under the default profile's scheduling
settings and without each of them. A stand-in, labelled as one: a generated Snakefile of --jobs independent
jobs that each only sleep --sleep seconds, so the CPU measured is Snakemake's (scheduling passes, job
start-up), none of it a job's work and none of it this package's code.

    python benchmarks/scheduler.py --out benchmarks/results/scheduler-cpu-2core.json

Each variant runs the same DAG from nothing with `--cores N`: Snakemake with the greedy scheduler and
otherwise its own defaults, then that plus one of the profile's scheduling settings, then the default profile
itself (profiles/default/config.yaml, every setting). Per variant: the wall time, Snakemake's own CPU seconds
(its process, sampled from /proc, the jobs not counted: record.run_sampled) and the time the sleeps alone
would take on N cores. The wall time includes Snakemake's exit, which waits for its last scheduling timer
(up to one `max-jobs-per-timespan` timespan). About 5 minutes on 2 idle cores; run it with nothing else on
the machine. Writes JSON with how it was measured (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from record import PROFILE, Measurement, jobs_env, profile_scheduler, relative, run_sampled, write_results

SNAKEFILE = """\
rule all:
    input: expand("out/{{i}}.txt", i=range({jobs}))

rule sleep:
    output: "out/{{i}}.txt"
    shell: "sleep {sleep}; touch {{output}}"
"""
# name -> Snakemake's flags besides --cores (the last: the default profile, every setting it has)
VARIANTS = {
    "greedy": ["--scheduler", "greedy"],
    "greedy, scheduler-subsample 50": ["--scheduler", "greedy", "--scheduler-subsample", "50"],
    "greedy, max-jobs-per-timespan 1000/10s": [
        "--scheduler",
        "greedy",
        "--max-jobs-per-timespan",
        "1000/10s",
    ],
    "the default profile": ["--profile", str(PROFILE)],
}


def run_variant(flags: list[str], jobs: int, sleep: float, cores: int, folder: Path) -> dict:
    """The generated DAG from nothing in `folder` under `flags`: its wall and Snakemake's own CPU seconds."""
    folder.mkdir(parents=True)
    (folder / "Snakefile").write_text(SNAKEFILE.format(jobs=jobs, sleep=sleep))
    command = [sys.executable, "-m", "snakemake", "-s", str(folder / "Snakefile"), "--directory", str(folder),
               *flags, "--cores", str(cores), "--quiet", "all"]  # fmt: skip
    start = time.perf_counter()
    done, cpu = run_sampled(command, cwd=folder, env=jobs_env())
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"snakemake {' '.join(flags)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    recorded = [relative(flag) if flag == str(PROFILE) else flag for flag in flags]  # no machine's paths
    return {"flags": recorded, "wall_seconds": round(wall, 1), "snakemake_cpu_seconds": cpu}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="results JSON to write")
    parser.add_argument("--jobs", type=int, default=400, help="jobs in the generated DAG")
    parser.add_argument("--sleep", type=float, default=0.3, help="seconds each job sleeps")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    with Measurement() as measured, tempfile.TemporaryDirectory() as scratch:
        variants = {}
        for index, (name, flags) in enumerate(VARIANTS.items()):
            variants[name] = run_variant(flags, args.jobs, args.sleep, args.cores, Path(scratch) / str(index))
            print(f"{name}: {variants[name]}", file=sys.stderr)
    report = {
        **measured.record(None if argv is None else [__file__, *argv]),
        "stand_in": "generated Snakefile of sleeping jobs: Snakemake's own cost, not this package's jobs",
        "jobs": args.jobs,
        "sleep_seconds": args.sleep,
        "cores": args.cores,
        "sleeps_alone_seconds": round(args.jobs * args.sleep / args.cores, 1),
        "profile_scheduler": profile_scheduler(),
        "variants": variants,
    }
    write_results(args.out, report)


if __name__ == "__main__":
    main()
