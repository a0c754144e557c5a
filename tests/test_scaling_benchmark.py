"""benchmarks/scaling.py runs (small) and reports what the README quotes, with how it was measured: a script,
not a timed test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_results_files import problems

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_scaling_benchmark_reports_latency_per_t_and_dag_times(tmp_path):
    out = tmp_path / "scaling.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--tasks", "1", "3", "4",
                           "--repeats", "3", "--hidden", "64", "--dag-tasks", "3", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert problems(report) == [], problems(report)
    rows = {(r["tasks"], r["method"]): r for r in report["latency"]}
    assert (
        rows[(4, "modalprompt")]["prefix_tokens"] == 30
        and rows[(4, "naive_all_prompts")]["prefix_tokens"] == 40
    )
    for r in rows.values():
        ms = r["ms_per_sample"]
        assert (
            0 < ms["p10"] <= ms["q25"] <= ms["median"] <= ms["q75"] <= ms["p90"]
            and 0 < r["selection_share"] < 1
        )
    ratio = report["ratios"]["modalprompt_T4_vs_T1"]
    low, high = ratio["bootstrap_95"]
    assert low <= ratio["of_medians"] <= high and ratio["paired"]["median"] > 0
    assert "modalprompt_T4_vs_T3" in report["ratios"] and report["repeats"] == 3
    assert report["target"]["verdict"] in ("met", "not met", "undecided")
    assert report["dag_3_tasks_jobs"] > 3 * 4 and report["dag_3_tasks_seconds"] > 0
