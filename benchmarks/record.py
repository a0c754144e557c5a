"""What every results file under benchmarks/results/ records about how it was measured, written by the
script that measured it: the commit and whether the tree was dirty, the command line, the machine (CPU
model, cores, torch and transformers versions), the 1-minute load average at the start, during the run
(sampled every `every` seconds) and at the end, and the wall time the script measured.

    with Measurement() as m:
        ...                                   # the measured work
    write_results(path, m.record() | {...})   # one atomic write of the whole file

Paths in a results file are relative to the repository (`relative`): no machine's folders.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from modalprompt.files import atomic_write_text
from modalprompt.run import environment

ROOT = Path(__file__).resolve().parents[1]
# the fields a test requires of every results file
REQUIRED = ("commit", "dirty", "command", "machine", "load", "wall_seconds")


RESULTS = "benchmarks/results"  # what the benchmarks write: not the code they measure


def git_state() -> tuple[str, bool]:
    """(HEAD's full hash, whether tracked files other than the results files differ from it): the code that
    was measured. A results file an earlier benchmark rewrote does not make the next one's tree dirty.
    Where git cannot tell: ("unknown", True), never clean."""
    return environment.git_state(ROOT, exclude=(RESULTS,), untracked=False)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(terse=True),
            "python": platform.python_version(), "torch": _version("torch"),
            "transformers": _version("transformers")}  # fmt: skip


def relative(path: str | Path) -> str:
    """A path as the results file may hold it: relative to the repository, or its name alone."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return path.name


def command_line(argv: list[str] | None = None) -> str:
    """The script's command line with repository-relative paths (a scratch folder by its name only)."""
    argv = sys.argv if argv is None else argv
    words = ["python", relative(argv[0])]
    for word in argv[1:]:
        words.append(relative(word) if os.path.isabs(word) else word)
    return shlex.join(words)


class Measurement:
    """The wall time and load averages of the work inside `with`, sampled from a background thread."""

    def __init__(self, every: float = 30.0):
        self.every = every
        self.samples: list[float] = []
        self.start = self.end = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(round(os.getloadavg()[0], 2))

    def __enter__(self) -> Measurement:
        self.commit, self.dirty = git_state()
        self.load_start = round(os.getloadavg()[0], 2)
        self.start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.end = time.perf_counter()
        self._stop.set()
        self._thread.join()
        self.load_end = round(os.getloadavg()[0], 2)

    @property
    def wall_seconds(self) -> float:
        return round((self.end or time.perf_counter()) - self.start, 3)

    def record(self, argv: list[str] | None = None) -> dict[str, Any]:
        during = self.samples or [self.load_end]
        return {
            "commit": self.commit,
            "dirty": self.dirty,
            "command": command_line(argv),
            "machine": machine(),
            "load": {
                "start": self.load_start,
                "during_max": max(during),
                "during_mean": round(sum(during) / len(during), 2),
                "during_samples": len(self.samples),  # 0: the run was shorter than `every` (during = end)
                "end": self.load_end,
                "what": "1-minute load average",
            },
            "wall_seconds": self.wall_seconds,
        }


def _own_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` itself, not of its children (Linux's /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_sampled(
    command: list[str], every: float = 1.0, **kwargs
) -> tuple[subprocess.CompletedProcess, float | None]:
    """`subprocess.run(command, capture_output=True, text=True, **kwargs)`, and the CPU seconds the process
    used itself, its children's not counted: for Snakemake, its scheduling and bookkeeping, not its jobs'.
    Sampled every `every` seconds until it exits (its last `every` seconds may be missed); None without /proc."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    cpu: list[float | None] = [None]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every):
            seconds = _own_cpu_seconds(process.pid)
            if seconds is not None:
                cpu[0] = seconds

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), (
        None if cpu[0] is None else round(cpu[0], 1)
    )


PROFILE = ROOT / "profiles" / "default"  # what `snakemake` from the repository root runs with


def jobs_env() -> dict[str, str]:
    """This environment with this interpreter's folder first on PATH: the DAG's jobs run its `modalprompt`."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def snakemake_command(config: Path, cores: int, directory: Path | None = None) -> list[str]:
    """The project's DAG as `make demo` runs it (the default profile), on CONFIG, in DIRECTORY if given."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "workflow" / "Snakefile"),
        "--profile",
        str(PROFILE),
    ]
    if directory is not None:
        command += ["--directory", str(directory)]
    return [*command, "--configfile", str(config), "--cores", str(cores)]


def profile_scheduler() -> str:
    """How the default profile has Snakemake schedule its jobs: the scheduler, how many ready jobs a pass
    considers, and the submission rate (whose timespan is also how often Snakemake re-runs a pass), each with
    Snakemake's own default where the profile does not set it."""
    import yaml

    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    return (
        f"{profile.get('scheduler', 'ilp')}, subsample {profile.get('scheduler-subsample', 'none')}, "
        f"max-jobs-per-timespan {profile.get('max-jobs-per-timespan', '100/1s')}"
    )


def write_results(path: Path, report: dict[str, Any]) -> None:
    """The whole file at once (a killed script leaves the old file or none, never half)."""
    atomic_write_text(Path(path), json.dumps(report, indent=1) + "\n")
