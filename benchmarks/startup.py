"""Start-up cost of the DAG and of its jobs, this checkout against an earlier commit, in one run.

    python benchmarks/startup.py --before 30e49ff --out benchmarks/results/startup-cpu-2core.json

Measures, each for this checkout ("after") and for the commit given with --before (checked out into a
scratch git worktree, run with the same Python environment):
1. the no-op check (`snakemake -n` on a finished project: nothing to do) of the default config and of a
   32-task config, median of --repeats runs; a finished project is made by `snakemake --touch` over empty
   outputs (it writes the same metadata a real run does);
2. each job command's import time (`python -X importtime`: the sum of the top-level imports) and wall time,
   run for real on a tiny base and the toy tasks: train (2 steps), evaluate, score, matrix;
3. with --dag (the slow part), the default DAG from nothing (the README's `make demo`), before and after:
   wall time, and every evaluate and train job's time split into start-up and work. With --prepared DIR
   both versions start from DIR's models/ and data/ (a finished default run's: the pretrained mini-CoIN
   base and the generated tasks, copied with their times, so Snakemake plans neither), and the DAG is the
   rest: every training stage, evaluation, score and summary; the base's pretraining (over an hour on
   2 cores, the same code in both versions) is then left out of both walls. The job's time is
   Snakemake's benchmark file; its work is what the job reports in its log (model loading and the
   generation or training loop); start-up is the rest (interpreter, imports, and for a warm job the
   client and the fork).
4. Snakemake's own floor (a stand-in, labelled as one): the no-op check of a generated Snakefile with as
   many jobs as each real DAG, in a like shape (a chain of training stages, evaluations on a stage, a score on
   each evaluation), whose rules have no params, logs, resources or functions of ours. It is what any
   workflow of that size costs on this machine with this Snakemake; the real check can only come near it.
The targets (issue 17) are checked on the numbers of this one run. The load average of the machine at the
start and end is recorded: the project's machines are shared, and a loaded machine inflates every time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"noop_default_s": 2.5, "noop_32_tasks_s": 6.0, "eval_startup_share": 1 / 3, "demo_speedup": 2.0}


class Checkout:
    """A version of the project: its Snakefile and package, run with this Python environment."""

    def __init__(self, name: str, root: Path):
        self.name, self.root = name, root
        self.env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1",
                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip

    def run(self, args: list[str], cwd: Path, **kw) -> tuple[float, subprocess.CompletedProcess]:
        start = time.perf_counter()
        done = subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True, **kw)
        return time.perf_counter() - start, done

    def snakemake(self, project: Path, *flags: str) -> tuple[float, subprocess.CompletedProcess]:
        return self.run([sys.executable, "-m", "snakemake", "-s", str(self.root / "workflow" / "Snakefile"),
                         "--directory", str(project), "--configfile", str(project / "config.yaml"), *flags],
                        cwd=project)  # fmt: skip

    def modalprompt(self, cwd: Path, *args: str, importtime: bool = False):
        flags = ["-X", "importtime"] if importtime else []
        return self.run([sys.executable, *flags, "-m", "modalprompt", *args], cwd=cwd)


def _project(folder: Path, raw: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    raw = {**raw, "paths": {"models": "models", "data": "data", "results": "results"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def _finished(checkout: Checkout, project: Path) -> None:
    """Every output present and recorded in Snakemake's metadata, without running a job."""
    _, log = checkout.snakemake(project, "--touch", "--cores", "1")
    missing = re.findall(r"Output files not touched because they don't exist: (.*)", log.stdout + log.stderr)
    for path in {p.strip() for line in missing for p in line.split(", ")}:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()
    checkout.snakemake(project, "--touch", "--cores", "1")


def noop_seconds(checkout: Checkout, raw: dict, folder: Path, repeats: int) -> dict:
    project = _project(folder, raw)
    _finished(checkout, project)
    return _timed_noops(lambda: checkout.snakemake(project, "-n"), repeats)


def _timed_noops(check, repeats: int) -> dict:
    """`check()` (a dry run: seconds and the finished process) `repeats` times: median, each run, and
    whether every run had nothing to do."""
    times, nothing = [], True
    for _ in range(repeats):
        seconds, done = check()
        times.append(seconds)
        nothing &= "Nothing to be done" in done.stdout + done.stderr
    return {"median_s": round(statistics.median(times), 2), "runs_s": [round(t, 2) for t in times],
            "nothing_to_do": nothing}  # fmt: skip


FLOOR_SNAKEFILE = """# benchmarks/startup.py's stand-in: the real DAG's job count and shape, nothing else
STAGES, EVALS = {stages}, {evals}  # training stages; evaluations (each with its score) per stage


rule all:
    input:
        [f"s{{s}}/e{{e}}.score" for s in range(1, STAGES + 1) for e in range(EVALS)],


rule train:
    input:
        lambda w: [f"s{{int(w.s) - 1}}/ckpt"] if int(w.s) > 1 else [],
    output:
        "s{{s}}/ckpt",
    shell:
        "touch {{output}}"


rule evaluate:
    input:
        "s{{s}}/ckpt",
    output:
        "s{{s}}/e{{e}}.jsonl",
    shell:
        "touch {{output}}"


rule score:
    input:
        "s{{s}}/e{{e}}.jsonl",
    output:
        "s{{s}}/e{{e}}.score",
    shell:
        "touch {{output}}"
"""


def planned_job_count(checkout: Checkout, project: Path) -> int:
    """How many jobs the project's whole DAG has (a dry run of everything)."""
    _, done = checkout.snakemake(project, "-n", "--forceall")
    stats = (done.stdout + done.stderr).partition("Job stats:")[2]
    return int(re.search(r"^total\s+(\d+)$", stats, re.M).group(1))


def snakemake_floor(checkout: Checkout, jobs: int, stages: int, folder: Path, repeats: int) -> dict:
    """The no-op check of the stand-in Snakefile with about `jobs` jobs over `stages` stages (item 4)."""
    evals = max(1, round((jobs - stages - 1) / (2 * stages)))
    folder.mkdir(parents=True)
    (folder / "Snakefile").write_text(FLOOR_SNAKEFILE.format(stages=stages, evals=evals))
    for s in range(1, stages + 1):  # every output present, then recorded by --touch
        (folder / f"s{s}").mkdir()
        for name in ["ckpt"] + [f"e{e}.{ext}" for e in range(evals) for ext in ("jsonl", "score")]:
            (folder / f"s{s}" / name).touch()
    command = [sys.executable, "-m", "snakemake", "-s", str(folder / "Snakefile"), "--directory", str(folder)]
    checkout.run([*command, "--touch", "--cores", "1"], cwd=folder)
    timed = _timed_noops(lambda: checkout.run([*command, "-n"], cwd=folder), repeats)
    return {"jobs": stages + 2 * stages * evals + 1, "real_dag_jobs": jobs, **timed}


def thirty_two_tasks(root: Path) -> dict:
    """The toy config of the checkout at `root` (each version reads its own keys) with 32 tasks."""
    raw = yaml.safe_load((root / "config" / "toy.yaml").read_text())
    toy = raw["tasks"]
    raw["tasks"] = [{**toy[i % len(toy)], "name": f"task{i:02d}"} for i in range(32)]
    return raw


def import_total_ms(stderr: str) -> float:
    """Sum of the cumulative times of the top-level imports in `python -X importtime` output."""
    total = 0
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)  # no indent: a top-level import
        if match:
            total += int(match.group(1))
    return round(total / 1000, 1)


def command_costs(checkout: Checkout, folder: Path) -> dict:
    """Each job command run for real (cold: a fresh process) on a tiny base and the toy tasks."""
    folder.mkdir(parents=True)
    raw = yaml.safe_load((checkout.root / "config" / "toy.yaml").read_text())
    raw["training"].update(max_steps=2, batch_size=4)
    raw["evaluation"].update(max_new_tokens=4)
    _project(folder, raw)
    checkout.modalprompt(folder, "make-tiny-base", "models/tiny/llava", "models/tiny/clip")
    checkout.modalprompt(folder, "make-toy-data", "data/toy")
    commands = {
        "train": ["train", "--config", "config.yaml", "--task", "colors", "--out", "stage-1", "--quiet"],
        "evaluate": ["evaluate", "--config", "config.yaml", "--task", "colors", "--checkpoints", "stage-1",
                     "--out", "colors.jsonl", "--quiet"],
        "score": ["score", "--scorer", "exact_match", "--predictions", "colors.jsonl", "--eval-file",
                  "data/toy/colors/test.json", "--task", "colors", "--stage", "1", "--out", "colors.score.json"],
        "matrix": ["matrix", "--tasks", "colors", "--scores", "colors.score.json", "--out-dir", "matrix"],
    }  # fmt: skip
    out = {}
    for name, args in commands.items():
        seconds, done = checkout.modalprompt(folder, *args, importtime=True)
        if done.returncode != 0:
            raise SystemExit(f"{checkout.name}: modalprompt {name} failed:\n{done.stderr[-3000:]}")
        loaded = {
            lib: re.search(rf"\|\s+{lib}$", done.stderr, re.M) is not None
            for lib in ("torch", "transformers", "mlflow", "scipy")
        }
        out[name] = {"wall_s": round(seconds, 2), "imports_ms": import_total_ms(done.stderr), "loads": loaded}
    return out


def dag_run(checkout: Checkout, folder: Path, prepared: Path | None = None) -> dict:
    """The default config's DAG from nothing (from `prepared`'s base and data when given): wall time, the
    jobs it ran, and the split of each evaluate and train job."""
    raw = yaml.safe_load((checkout.root / "config.yaml").read_text())
    project = _project(folder, raw)
    if prepared:
        for part in ("models", "data"):
            shutil.copytree(prepared / part, project / part, copy_function=shutil.copy2)
    seconds, done = checkout.snakemake(project, "--cores", "2")
    (project / "snakemake.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{checkout.name}: the default DAG failed, see {project / 'snakemake.log'}")
    results = project / "results" / raw["experiment"]
    # the planned jobs per rule: Snakemake's "Job stats" table, printed before the first job
    stats = (done.stdout + done.stderr).partition("Job stats:")[2].split("\n\n")[0]
    return {
        "wall_s": round(seconds, 1),
        "prepared": str(prepared) if prepared else None,
        "jobs": {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats, re.M)},
        "evaluate": _job_split(results, "evaluate"),
        "train": _job_split(results, "train"),
    }


def _job_split(results: Path, rule: str) -> dict:
    """Snakemake's benchmark time of each `rule` job against the work its log reports."""
    rows = []
    for tsv in sorted((results / "benchmarks").rglob(f"{rule}-stage-*.tsv")):
        with tsv.open() as f:
            wall = float(next(csv.DictReader(f, delimiter="\t"))["s"])
        log = results / "logs" / tsv.relative_to(results / "benchmarks").with_suffix(".log")
        report = next((json.loads(line) for line in reversed(log.read_text().splitlines())
                       if line.startswith("{")), {})  # fmt: skip
        work = report.get("seconds")
        load = report.get("load_seconds")
        rows.append({"wall_s": wall, "work_s": work, "load_s": load})
    known = [r for r in rows if r["work_s"] is not None and r["load_s"] is not None]
    wall = sum(r["wall_s"] for r in known)
    work = sum(r["work_s"] + r["load_s"] for r in known)
    return {
        "count": len(rows),
        "wall_s": round(sum(r["wall_s"] for r in rows), 1),
        "mean_wall_s": round(statistics.mean(r["wall_s"] for r in rows), 2) if rows else None,
        "startup_share": round((wall - work) / wall, 3) if known and wall else None,
        "mean_startup_s": round((wall - work) / len(known), 2) if known else None,
        "reported": len(known),  # jobs whose log reports load and work (the before code reports neither)
    }


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", default="30e49ff", help="the commit to compare against")
    parser.add_argument("--repeats", type=int, default=3, help="no-op checks timed per project")
    parser.add_argument(
        "--dag", action="store_true", help="also run the default DAG from nothing, both versions"
    )
    parser.add_argument("--prepared", type=Path, help="with --dag: start both DAGs from this folder's models/ "
                        "and data/ (a finished default run's), leaving the base's pretraining out")  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep the projects' results")
    args = parser.parse_args()

    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "commits": {"before": args.before, "after": _head()}, "load_average_start": _load()}  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        before_root = tmp / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before_root), args.before],
                       check=True, capture_output=True)  # fmt: skip
        try:
            checkouts = [Checkout("before", before_root), Checkout("after", ROOT)]
            for checkout in checkouts:
                side = report.setdefault(checkout.name, {})
                default = yaml.safe_load((checkout.root / "config.yaml").read_text())
                side["noop_default"] = noop_seconds(checkout, default, tmp / checkout.name / "noop-default",
                                                    args.repeats)  # fmt: skip
                side["noop_32_tasks"] = noop_seconds(checkout, thirty_two_tasks(checkout.root), tmp / checkout.name / "noop-32",
                                                     args.repeats)  # fmt: skip
                side["commands"] = command_costs(checkout, tmp / checkout.name / "commands")
                print(checkout.name, json.dumps(side), flush=True)
            after = checkouts[1]  # Snakemake is the same for both versions: its floor once, at each size
            report["snakemake_floor"] = {
                size: snakemake_floor(after, planned_job_count(after, tmp / "after" / f"noop-{size}"),
                                      len(raw["tasks"]), tmp / "floor" / size, args.repeats)
                for size, raw in (("default", yaml.safe_load((ROOT / "config.yaml").read_text())),
                                  ("32", thirty_two_tasks(ROOT)))
            }  # fmt: skip
            print("floor", json.dumps(report["snakemake_floor"]), flush=True)
            if args.dag:
                for checkout in checkouts:
                    report[checkout.name]["dag"] = dag_run(
                        checkout, tmp / checkout.name / "dag", args.prepared
                    )
                    print(checkout.name, "dag", json.dumps(report[checkout.name]["dag"]), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before_root)],
                           capture_output=True)  # fmt: skip
    report["load_average_end"] = _load()
    report["targets"] = _verdicts(report)
    print(json.dumps(report["targets"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


def _verdicts(report: dict) -> dict:
    after, before = report["after"], report["before"]
    verdicts = {
        "noop_default_s": {
            "measured": after["noop_default"]["median_s"],
            "target": TARGETS["noop_default_s"],
        },
        "noop_32_tasks_s": {
            "measured": after["noop_32_tasks"]["median_s"],
            "target": TARGETS["noop_32_tasks_s"],
        },
    }
    for v in verdicts.values():
        v["met"] = v["measured"] <= v["target"]
    for key, size in (("noop_default_s", "default"), ("noop_32_tasks_s", "32")):
        if size in report.get("snakemake_floor", {}):  # what Snakemake alone takes for a DAG of that size
            verdicts[key]["snakemake_floor_s"] = report["snakemake_floor"][size]["median_s"]
    if "dag" in after:
        share = after["dag"]["evaluate"]["startup_share"]
        verdicts["eval_startup_share"] = {"measured": share, "target": round(TARGETS["eval_startup_share"], 3),
                                          "met": share is not None and share <= TARGETS["eval_startup_share"]}  # fmt: skip
    if "dag" in after and "dag" in before:
        speedup = before["dag"]["wall_s"] / after["dag"]["wall_s"]
        verdicts["demo_speedup"] = {"measured": round(speedup, 2), "target": TARGETS["demo_speedup"],
                                    "met": speedup >= TARGETS["demo_speedup"]}  # fmt: skip
    else:
        verdicts["demo_speedup"] = {"measured": None, "target": TARGETS["demo_speedup"], "met": None}
    return verdicts


def _head() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip()


if __name__ == "__main__":
    main()
