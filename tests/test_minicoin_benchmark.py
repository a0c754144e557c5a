"""benchmarks/minicoin.py judges its targets from the measured values, and benchmarks/record.py writes how a
results file was measured with no machine's paths in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import minicoin as bench  # noqa: E402 (a script, not a package)
import record  # noqa: E402


def _method(avg: float, gains: dict[str, float], bwt: float = 0.0, selection: float | None = None) -> dict:
    return {
        "metrics": {"avg": avg, "bwt": bwt, "selection_accuracy": selection},
        "gain_over_zero_shot": gains,
    }


def test_every_target_is_judged_from_its_measured_value():
    methods = {"modalprompt": _method(60.0, {"a": 45.0, "b": 30.0}, bwt=-4.9, selection=90.0),
               "oracle": _method(62.9, {"a": 45.0, "b": 30.0})}  # fmt: skip
    verdicts = bench.targets(methods, wall=600.0, test_size=200)
    assert {name: v["met"] for name, v in verdicts.items()} == {
        "wall_minutes": True, "gain_over_zero_shot": True, "modalprompt_bwt": True, "selection": True,
        "test_size": True, "oracle_gap": True,
    }  # fmt: skip
    methods = {"modalprompt": _method(60.0, {"a": 45.0, "b": 29.9}, bwt=-5.1, selection=89.9),
               "oracle": _method(63.1, {"a": 45.0, "b": 30.0})}  # fmt: skip
    verdicts = bench.targets(methods, wall=601.0, test_size=199)
    assert not any(v["met"] for v in verdicts.values()), verdicts
    assert verdicts["gain_over_zero_shot"]["lowest"] == 29.9 and verdicts["oracle_gap"]["measured"] == 3.1


def test_a_process_own_cpu_is_sampled_and_its_childrens_is_not():
    """What the benchmarks record as Snakemake's own CPU: the process's time, not its jobs' (its children)."""
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    done, own = record.run_sampled([sys.executable, "-c", busy + "\ntime.sleep(0.3)"], every=0.05)
    assert done.returncode == 0 and 0.4 <= own <= 1.5
    _, parent = record.run_sampled(["bash", "-c", f"{sys.executable} -c '{busy}'; sleep 0.3"], every=0.05)
    assert parent is not None and parent < 0.2


def test_the_benchmarks_run_the_dag_as_make_demo_does(tmp_path):
    """`record.snakemake_command`: the default profile (a key Snakemake does not know fails this dry run)
    on a config in a folder of its own; and the scheduler settings the results files record are the profile's."""
    raw = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
    raw["paths"] = {"models": "models", "data": "data", "results": "results"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    command = record.snakemake_command(tmp_path / "config.yaml", 1, directory=tmp_path)
    done = subprocess.run(
        [*command, "-n"], cwd=tmp_path, env=record.jobs_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--profile" in command and "This was a dry-run" in done.stdout
    profile = yaml.safe_load((record.PROFILE / "config.yaml").read_text())
    assert record.profile_scheduler() == (
        f"{profile['scheduler']}, subsample {profile['scheduler-subsample']}, "
        f"max-jobs-per-timespan {profile['max-jobs-per-timespan']}"
    )


def test_a_results_record_names_the_commit_command_machine_load_and_wall(tmp_path):
    with record.Measurement(every=0.01) as measured:
        sum(range(10**6))
    argv = [str(ROOT / "benchmarks" / "minicoin.py"), "--keep", str(tmp_path / "scratch"), "--out",
            str(ROOT / "benchmarks" / "results" / "x.json"), "--cores", "2"]  # fmt: skip
    out = measured.record(argv)
    assert set(record.REQUIRED) <= set(out)
    assert (
        out["command"]
        == "python benchmarks/minicoin.py --keep scratch --out benchmarks/results/x.json --cores 2"
    )
    assert len(out["commit"]) == 40 and isinstance(out["dirty"], bool) and out["wall_seconds"] >= 0
    assert {"cpu", "cores", "torch", "transformers"} <= set(out["machine"])
    assert {"start", "during_max", "end"} <= set(out["load"])
    path = tmp_path / "results.json"
    record.write_results(path, out)
    text = path.read_text()
    assert json.loads(text) == out and str(tmp_path) not in text and str(ROOT) not in text
