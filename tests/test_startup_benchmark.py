"""benchmarks/startup.py reads Python's import times and a job's report correctly, and its stand-in for
Snakemake's floor is a finished DAG of about the real size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import startup  # noqa: E402 (a script, not a package)


def test_import_total_sums_the_top_level_imports_only():
    stderr = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       100 |       2000 |   json.decoder",  # nested: inside the next one
        "import time:       300 |       2500 | json",
        "import time:        50 |        500 | yaml",
    ])  # fmt: skip
    assert startup.import_total_ms(stderr) == 3.0


def test_job_split_takes_the_work_a_job_reports_from_its_wall_time():
    """Start-up is the wall time less the model's loading and the work, from the job's last JSON line."""
    stdout = "a progress line\n" + json.dumps({"seconds": 1.5, "load_seconds": 0.5, "startup_seconds": 0.02})
    split = startup.job_split(4.0, stdout + "\n")
    assert split == {"load_s": 0.5, "work_s": 1.5, "reported_startup_s": 0.02, "startup_s": 2.0,
                     "startup_share": 0.5}  # fmt: skip
    assert startup.job_split(1.0, "no report\n")["startup_s"] is None


def test_the_snakemake_floor_is_a_finished_dag_of_about_the_real_size(tmp_path):
    """The stand-in has about as many jobs as asked, every one present and recorded: its no-op check plans
    nothing (otherwise it would time planning, not the no-op)."""
    floor = startup.snakemake_floor(jobs=40, stages=3, folder=tmp_path / "floor", repeats=1)
    assert floor["nothing_to_do"] and floor["real_dag_jobs"] == 40
    assert abs(floor["jobs"] - 40) <= 6  # 3 training stages + 2 x 3 x evals + all
    assert (tmp_path / "floor" / "s3" / "e5.score").is_file()
