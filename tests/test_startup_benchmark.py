"""benchmarks/startup.py reads Python's import times and a DAG's benchmark files and job logs correctly."""

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


def test_job_split_takes_the_work_a_job_reports_from_its_wall_time(tmp_path):
    results = tmp_path / "results"
    for stage, (wall, load, work) in enumerate([(3.0, 0.5, 0.5), (5.0, 1.0, 1.0)], start=1):
        tsv = results / "benchmarks" / "modalprompt" / f"evaluate-stage-{stage}-colors.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text(f"s\th:m:s\tmax_rss\n{wall}\t0:00:0{int(wall)}\t100\n")
        log = results / "logs" / "modalprompt" / f"evaluate-stage-{stage}-colors.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("progress line\n" + json.dumps({"seconds": work, "load_seconds": load}) + "\n")
    split = startup._job_split(results, "evaluate")
    assert split["count"] == 2 and split["reported"] == 2 and split["wall_s"] == 8.0
    assert split["startup_share"] == round((8.0 - 3.0) / 8.0, 3) and split["mean_startup_s"] == 2.5


def test_the_snakemake_floor_is_a_finished_dag_of_about_the_real_size(tmp_path):
    """The stand-in has about as many jobs as asked, every one present and recorded: its no-op check plans
    nothing (otherwise it would time planning, not the no-op)."""
    checkout = startup.Checkout("after", ROOT)
    floor = startup.snakemake_floor(checkout, jobs=40, stages=3, folder=tmp_path / "floor", repeats=1)
    assert floor["nothing_to_do"] and floor["real_dag_jobs"] == 40
    assert abs(floor["jobs"] - 40) <= 6  # 3 training stages + 2 x 3 x evals + all
    assert (tmp_path / "floor" / "s3" / "e5.score").is_file()
