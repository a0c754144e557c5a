"""Start-up cost of this checkout's code: what a pipeline job pays before its work, and what Snakemake's no-op
check of the DAG costs next to Snakemake's own floor.

    python benchmarks/startup.py --out benchmarks/results/startup-cpu-2core.json

It measures today's code only (no other commit), run with this Python environment, in scratch folders:
1. each job command as a pipeline job runs it, for real on a tiny base and the toy tasks: train (2 steps),
   evaluate, score, matrix, each cold (its own process: how Snakemake starts score and matrix, and every
   job under Slurm). Per command: the wall time, the import time (`python -X importtime`: the sum of the
   top-level imports) and which heavy libraries it imports; for train and evaluate also the split of the
   wall time into the work the job reports (loading the model, then training or generating) and the rest,
   the start-up (interpreter, imports, parsing the settings). Once each: a cold start is ~10 s of imports
   whose spread is small next to it.
2. the evaluate command warm (`--warm yes`, how the local DAG runs evaluate and train jobs: a thin client
   hands the command to a child forked from a server that has imported torch and transformers once): the
   first call, which starts the server, then --repeats calls, split the same way (median). The server is
   this run's own (a private temporary folder) and is stopped at the end. Editing the package's files
   while it runs starts another server (recorded: `servers_started` must be 1 for the numbers to hold).
3. the no-op check (`snakemake -n` on a finished project: nothing to do) of the default config and of a
   32-task config, median of --repeats runs; a finished project is made by `snakemake --touch` over empty
   outputs (it writes the metadata a real run does).
4. Snakemake's own floor (a stand-in, labelled as one): the no-op check of a generated Snakefile with as
   many jobs as each real DAG, in a like shape (a chain of training stages, evaluations on a stage, a score
   on each evaluation), whose rules have no params, logs, resources or functions of ours: what any workflow
   of that size costs on this machine with this Snakemake; the real check can only come near it.
The no-op targets are judged on this run's numbers, beside the floor. The DAG's own wall time is not
measured here (benchmarks/minicoin.py measures it). Under 10 minutes on 2 idle cores with --repeats 3 (most
of it making the 32-task project finished and checking it); --repeats 2 saves about a minute.
Writes JSON with how it was measured (benchmarks/record.py): commit, machine, load average, wall time.
`--quick` (for tests): the toy config in place of the default and 32-task ones and one repeat; the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from record import Measurement, write_results

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"noop_default_s": 2.5, "noop_32_tasks_s": 6.0}
HEAVY = ("torch", "transformers", "mlflow", "scipy")  # libraries whose import a job's start-up pays


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}  # fmt: skip


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    """Seconds and the finished process of `args`."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env or _env(), capture_output=True, text=True)
    return time.perf_counter() - start, done


def snakemake(project: Path, *flags: str) -> tuple[float, subprocess.CompletedProcess]:
    return run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory",
                str(project), "--configfile", str(project / "config.yaml"), *flags], cwd=project)  # fmt: skip


def modalprompt(cwd: Path, *args: str, importtime: bool = False, env: dict[str, str] | None = None):
    flags = ["-X", "importtime"] if importtime else []
    return run([sys.executable, *flags, "-m", "modalprompt", *args], cwd=cwd, env=env)


def _project(folder: Path, raw: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    raw = {**raw, "paths": {"models": "models", "data": "data", "results": "results"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def _finished(project: Path) -> None:
    """Every output present and recorded in Snakemake's metadata, without running a job."""
    _, log = snakemake(project, "--touch", "--cores", "1")
    missing = re.findall(r"Output files not touched because they don't exist: (.*)", log.stdout + log.stderr)
    for path in {p.strip() for line in missing for p in line.split(", ")}:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()
    snakemake(project, "--touch", "--cores", "1")


def noop_seconds(raw: dict, folder: Path, repeats: int) -> dict:
    project = _project(folder, raw)
    _finished(project)
    return _timed_noops(lambda: snakemake(project, "-n"), repeats)


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


def planned_job_count(project: Path) -> int:
    """How many jobs the project's whole DAG has (a dry run of everything)."""
    _, done = snakemake(project, "-n", "--forceall")
    stats = (done.stdout + done.stderr).partition("Job stats:")[2]
    return int(re.search(r"^total\s+(\d+)$", stats, re.M).group(1))


def snakemake_floor(jobs: int, stages: int, folder: Path, repeats: int) -> dict:
    """The no-op check of the stand-in Snakefile with about `jobs` jobs over `stages` stages (item 4)."""
    evals = max(1, round((jobs - stages - 1) / (2 * stages)))
    folder.mkdir(parents=True)
    (folder / "Snakefile").write_text(FLOOR_SNAKEFILE.format(stages=stages, evals=evals))
    for s in range(1, stages + 1):  # every output present, then recorded by --touch
        (folder / f"s{s}").mkdir()
        for name in ["ckpt"] + [f"e{e}.{ext}" for e in range(evals) for ext in ("jsonl", "score")]:
            (folder / f"s{s}" / name).touch()
    command = [sys.executable, "-m", "snakemake", "-s", str(folder / "Snakefile"), "--directory", str(folder)]
    run([*command, "--touch", "--cores", "1"], cwd=folder)
    timed = _timed_noops(lambda: run([*command, "-n"], cwd=folder), repeats)
    return {"jobs": stages + 2 * stages * evals + 1, "real_dag_jobs": jobs, **timed}


def thirty_two_tasks() -> dict:
    """The toy config with 32 tasks."""
    raw = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
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


def job_split(wall: float, stdout: str) -> dict:
    """A job's wall time against what it reports on its last JSON line (`load_seconds`: the model,
    `seconds`: training or generation; `startup_seconds`: its process's age when its command began, which
    for a warm job is the forked child's); start-up is the wall time less load and work."""
    report = next((json.loads(line) for line in reversed(stdout.splitlines()) if line.startswith("{")), {})
    load, work = report.get("load_seconds"), report.get("seconds")
    known = load is not None and work is not None
    return {"load_s": load, "work_s": work, "reported_startup_s": report.get("startup_seconds"),
            "startup_s": round(wall - load - work, 2) if known else None,
            "startup_share": round((wall - load - work) / wall, 3) if known and wall else None}  # fmt: skip


def _commands(folder: Path) -> dict[str, list[str]]:
    """The job commands, on the tiny base and the toy tasks in `folder` (made by `_toy_project`)."""
    return {
        "train": ["train", "--config", "config.yaml", "--task", "colors", "--out", "stage-1", "--quiet"],
        "evaluate": ["evaluate", "--config", "config.yaml", "--task", "colors", "--checkpoints", "stage-1",
                     "--out", "colors.jsonl", "--quiet"],
        "score": ["score", "--scorer", "exact_match", "--predictions", "colors.jsonl", "--eval-file",
                  "data/toy/colors/test.json", "--task", "colors", "--stage", "1", "--out", "colors.score.json"],
        "matrix": ["matrix", "--tasks", "colors", "--scores", "colors.score.json", "--out-dir", "matrix"],
    }  # fmt: skip


def _toy_project(folder: Path) -> None:
    raw = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
    raw["training"].update(max_steps=2, batch_size=4)
    raw["evaluation"].update(max_new_tokens=4)
    _project(folder, raw)
    for args in (["make-tiny-base", "models/tiny/llava", "models/tiny/clip"], ["make-toy-data", "data/toy"]):
        _, done = modalprompt(folder, *args)
        if done.returncode != 0:
            raise SystemExit(f"modalprompt {args[0]} failed:\n{done.stderr[-3000:]}")


def command_costs(folder: Path) -> dict:
    """Each job command run for real, cold (a fresh process), in order (each reads the one before's files)."""
    out = {}
    for name, args in _commands(folder).items():
        seconds, done = modalprompt(folder, *args, importtime=True)
        if done.returncode != 0:
            raise SystemExit(f"modalprompt {name} failed:\n{done.stderr[-3000:]}")
        loaded = {lib: re.search(rf"\|\s+{lib}$", done.stderr, re.M) is not None for lib in HEAVY}
        out[name] = {"wall_s": round(seconds, 2), "imports_ms": import_total_ms(done.stderr), "loads": loaded}
        if name in ("train", "evaluate"):
            out[name] |= job_split(seconds, done.stdout)
    return out


def warm_evaluate(folder: Path, repeats: int) -> dict:
    """The evaluate command with --warm yes: the first call (which starts the server), then `repeats` calls;
    the server is private to this run (its own TMPDIR, so its own socket) and stopped at the end."""
    private = Path(tempfile.mkdtemp(prefix="warm-"))  # short: the socket's path has a length limit
    env = _env(TMPDIR=str(private))
    args = ["--warm", "yes", *_commands(folder)["evaluate"]]
    servers: set[str] = set()  # one socket per server: a second means the package's files changed meanwhile
    try:
        calls = []
        for _ in range(1 + repeats):
            seconds, done = modalprompt(folder, *args, env=env)
            if done.returncode != 0:
                raise SystemExit(f"modalprompt --warm yes evaluate failed:\n{done.stderr[-3000:]}")
            calls.append({"wall_s": round(seconds, 2), **job_split(seconds, done.stdout)})
            servers |= {sock.name for sock in private.glob("modalprompt-warm-*/*.sock")}
    finally:
        for sock in private.glob("modalprompt-warm-*/*.sock"):
            sock.unlink()  # the server ends once its socket file is gone
        shutil.rmtree(private, ignore_errors=True)
    later = calls[1:]

    def median(key: str) -> float | None:
        values = [c[key] for c in later if c[key] is not None]
        return round(statistics.median(values), 3) if values else None

    return {"served_warm": bool(servers), "servers_started": len(servers), "first_call": calls[0],
            "calls": later, "median_wall_s": median("wall_s"), "median_startup_s": median("startup_s"),
            "median_startup_share": median("startup_share")}  # fmt: skip


def _verdicts(report: dict) -> dict:
    verdicts = {}
    for key, size, floor in (
        ("noop_default_s", "noop_default", "default"),
        ("noop_32_tasks_s", "noop_32_tasks", "32"),
    ):
        if size in report:
            measured = report[size]["median_s"]
            verdicts[key] = {"measured": measured, "target": TARGETS[key], "met": measured <= TARGETS[key],
                             "snakemake_floor_s": report["snakemake_floor"][floor]["median_s"]}  # fmt: skip
    return verdicts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="no-op checks per project, warm calls after the first"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep the projects")
    parser.add_argument("--quick", action="store_true", help="for tests: the toy config only, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    # (name in the report, its floor's name, the config)
    sizes = ([("noop_toy", "toy", yaml.safe_load((ROOT / "config" / "toy.yaml").read_text()))] if args.quick else
             [("noop_default", "default", yaml.safe_load((ROOT / "config.yaml").read_text())),
              ("noop_32_tasks", "32", thirty_two_tasks())])  # fmt: skip

    report: dict = {}
    with Measurement() as measured, tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        _toy_project(tmp / "commands")
        report["commands"] = command_costs(tmp / "commands")
        print("commands", json.dumps(report["commands"]), flush=True)
        report["warm_evaluate"] = warm_evaluate(tmp / "commands", args.repeats)
        print("warm evaluate", json.dumps(report["warm_evaluate"]), flush=True)
        report["snakemake_floor"] = {}
        for name, floor, raw in sizes:
            report[name] = noop_seconds(raw, tmp / name, args.repeats)
            jobs = planned_job_count(tmp / name)
            report["snakemake_floor"][floor] = snakemake_floor(jobs, len(raw["tasks"]), tmp / "floor" / floor,
                                                               args.repeats)  # fmt: skip
            print(
                name,
                json.dumps(report[name]),
                "floor",
                json.dumps(report["snakemake_floor"][floor]),
                flush=True,
            )
    report = {**measured.record(None if argv is None else [__file__, *argv]), "quick": args.quick,
              "repeats": args.repeats, **report, "targets": _verdicts(report)}  # fmt: skip
    print(json.dumps(report["targets"], indent=1))
    if args.out:
        write_results(args.out, report)


if __name__ == "__main__":
    main()
