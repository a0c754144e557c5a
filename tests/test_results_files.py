"""Every results file under benchmarks/results/ says how it was measured (benchmarks/record.py): the commit
and whether the tree was dirty, the command line, the machine, the load average at the start, during and at
the end, and the wall time; and it holds no path of the machine it was measured on. Each benchmark script's
recording path, run on a tiny setting into a scratch folder, writes a file that passes the same check."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import record.py as their neighbour

import record  # noqa: E402 (a script, not a package)

# an absolute path of a machine's folders, alone or inside a command line or URI; or a virtualenv's
MACHINE_PATH = re.compile(
    r"(?:^|[\s=:'\"(,]|//)(?:/work|/tmp|/home|/root|/Users|/private|/scratch|/mnt)(?:/|$)|/\.venv/"
)


def _strings(value):
    """Every string in a JSON value, dictionary keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def problems(report: dict) -> list[str]:
    """What a results file lacks of how it was measured, or the machine paths it holds (empty: none)."""
    found = [f"no {field!r}" for field in record.REQUIRED if field not in report]
    commit = report.get("commit")
    if "commit" in report and not (isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}", commit)):
        found.append(f"commit {commit!r} is not a full 40-hex git hash")
    if "dirty" in report and not isinstance(report["dirty"], bool):
        found.append(f"dirty {report['dirty']!r} is not true or false")
    if "command" in report and not (isinstance(report["command"], str) and report["command"].strip()):
        found.append(f"command {report['command']!r} is not a command line")
    machine = report.get("machine")
    if "machine" in report:
        if not isinstance(machine, dict):
            found.append(f"machine {machine!r} is not an object")
        else:
            found += [
                f"machine has no {k!r}"
                for k in ("cpu", "cores", "torch", "transformers")
                if not machine.get(k)
            ]
    load = report.get("load")
    if "load" in report:
        if not isinstance(load, dict):
            found.append(f"load {load!r} is not an object")
        else:  # the 1-minute load average: at the start, during (periodic samples: max and mean), at the end
            found += [f"load has no {k!r}" for k in ("start", "during_max", "during_mean", "end")
                      if not _number(load.get(k))]  # fmt: skip
    wall = report.get("wall_seconds")
    if "wall_seconds" in report and not (_number(wall) and wall > 0):
        found.append(f"wall_seconds {wall!r} is not a positive number")
    found += [f"a machine path: {text!r}" for text in _strings(report) if MACHINE_PATH.search(text)]
    return found


def _files() -> list[Path]:
    return sorted(RESULTS.glob("*.json"))


def test_there_are_results_files():
    assert _files(), f"no results file under {RESULTS}: the folder or the pattern changed"


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_every_results_file_says_how_it_was_measured(path):
    found = problems(json.loads(path.read_text()))
    assert not found, f"{path.relative_to(ROOT)}: " + "; ".join(found) + " (re-measure it with its script)"


def test_the_check_names_each_missing_field_and_every_machine_path():
    good = {"commit": "0" * 40, "dirty": False, "command": "python benchmarks/x.py --out benchmarks/results/x.json",
            "machine": {"cpu": "AMD EPYC", "cores": 2, "torch": "2.0", "transformers": "5.0"},
            "load": {"start": 0.1, "during_max": 0.5, "during_mean": 0.3, "end": 0.2}, "wall_seconds": 1.5,
            "data": {"platform": "Linux-6.1-x86_64", "rate": "3/s", "folder": "results/x"}}  # fmt: skip
    assert problems(good) == []
    for field in record.REQUIRED:
        assert problems({k: v for k, v in good.items() if k != field}) == [f"no {field!r}"]
    assert problems(good | {"commit": "abc1234"}) and problems(good | {"dirty": "no"})
    assert problems(good | {"wall_seconds": 0}) and problems(good | {"machine": {"cpu": "x", "cores": 2}})
    assert problems(good | {"load": {"start": 0.1, "end": 0.2}})
    for path in ("/work/main/x", "/tmp/x.json", "/home/u/runs", "/root/x", "python /tmp/a.py --out b",
                 "sqlite:////work/m/mlflow.db", "env/.venv/bin/python"):  # fmt: skip
        assert problems(good | {"data": {"where": path}}) == [f"a machine path: {path!r}"], path
    assert problems(good | {"data": {"/tmp/x": 1}})  # a key is a string too


def _script(name: str):
    """benchmarks/<name>.py as a module (its `main(argv)` is what its command line runs)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _written(path: Path) -> dict:
    report = json.loads(path.read_text())
    assert problems(report) == [], problems(report)
    assert report["command"].startswith("python benchmarks/") and report["command"].endswith(path.name)
    return report


def test_core_writes_a_results_file_that_says_how_it_was_measured(tmp_path):
    out = tmp_path / "core.json"
    _script("core").main(["--quick", "--out", str(out)])
    report = _written(out)
    assert report["quick"] and len(report["stages"]) == 3 and report["generation"]["samples_per_s"] > 0
    assert report["machine"]["threads"] >= 1


def test_scaling_writes_a_results_file_that_says_how_it_was_measured(tmp_path):
    out = tmp_path / "scaling.json"
    _script("scaling").main(["--quick", "--out", str(out)])
    report = _written(out)
    assert report["quick"] and {r["tasks"] for r in report["latency"]} == {1, 2}
    assert "modalprompt_T2_vs_T1" in report["ratios"] and report["machine"]["device"] == "cpu"


def test_validate_writes_a_results_file_that_says_how_it_was_measured(tmp_path):
    out = tmp_path / "validate.json"
    _script("validate").main(["--records", "60", "--images", "6", "--bad", "2", "--out", str(out)])
    report = _written(out)
    assert report["records"] == 60 and len(report["runs"]) == 4


def test_methods_table_writes_a_results_file_and_its_table(tmp_path, monkeypatch, capsys):
    """The run is measured around `run_dag` (here a stand-in that writes what a finished run writes); the
    file holds the methods over the seeds, and --table prints the file's table."""
    methods_table = _script("methods_table")
    config = tmp_path / "all.yaml"
    raw = (ROOT / "config" / "ci-all.yaml").read_text().replace("../data/ci", "data").replace("../", "")
    config.write_text(raw)
    cfg = methods_table.load_experiment(config)

    from modalprompt import layout, methods

    tasks = [t.name for t in cfg.tasks]

    def finished_run(config_path, cores):
        for method in cfg.pipeline.methods:
            folder = cfg.results_dir / str(method)
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps({"avg": 50.0, "std": {"avg": 1.5}}))
            (folder / "cost.json").write_text(json.dumps({"total": {"device_hours": 0.25, "device": "cpu"}}))
            if methods.get(str(method)).trains:  # what budgets() reads of the first seed's stages
                for stage in (1, len(tasks)):
                    extra = {"trained_values": 1000 + stage, "environment": {"device": "cpu"}}
                    if str(method) == "replay" and stage > 1:
                        extra["records_per_task"] = {tasks[-1]: 32, tasks[0]: 8, tasks[1]: 8}
                    meta = layout.checkpoint_dir(layout.run_dir(cfg.results_dir, 0), str(method), stage)
                    meta.mkdir(parents=True)
                    (meta / layout.META_FILE).write_text(json.dumps({"extra": extra}))
        bench = cfg.results_dir / "seed-0" / "benchmarks" / "modalprompt" / "train-stage-1.tsv"
        bench.parent.mkdir(parents=True)
        bench.write_text("s\th:m:s\n2.5\t0:00:02\n")
        return {"train": 1, "total": 1}, 42.0

    monkeypatch.setattr(methods_table, "run_dag", finished_run)
    out = tmp_path / "all-methods.json"
    methods_table.main(["--config", str(config), "--out", str(out)])
    report = _written(out)
    assert report["config"] == "all.yaml" and report["seeds"] == [0, 1, 2] and report["jobs"]["train"] == 1
    assert report["methods"]["modalprompt"]["avg"] == 50.0 and report["job_seconds"] == {"train": 2.5}
    budgets = report["budgets"]
    assert budgets["modalprompt"]["prefix_tokens"] == cfg.method.prefix_length * cfg.method.transfer_num
    assert budgets["lora_ft"]["prefix_tokens"] == 0 and budgets["lora_ft"]["trained_values"] == 1001
    assert budgets["oracle"]["trains"] == "modalprompt" and budgets["zero_shot"] == {
        "prefix_tokens": 0,
        "trains": None,
    }
    assert budgets["replay"]["last_stage_records"] == {"own": 32, "earlier": 16}
    assert (
        budgets["lora_ft"]["lr"] == cfg.lora.training["lr"] and report["cost"]["ewc"]["device_hours"] == 0.25
    )
    assert (
        report["scheduler_cpu_seconds"] == 42.0
        and report["profile_scheduler"] == "greedy, subsample 50, max-jobs-per-timespan 1000/10s"
    )
    run_table = _script("tables").methods_run(report)
    assert "| train jobs | 0 min | 1 of them, summed |" in run_table
    assert (
        "| Snakemake itself (CPU) | 1 min | scheduler: greedy, subsample 50, max-jobs-per-timespan 1000/10s |"
        in run_table
    )
    docs_table = _script("tables").methods_over_seeds(report)
    assert "| replay | 50.0 ± 1.5 |" in docs_table and "+16 (50% of a task)" in docs_table
    capsys.readouterr()
    methods_table.main(["--table", str(out)])
    assert "| modalprompt | 50.0 +- 1.5 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists"):  # a second run would time only what is left to do
        methods_table.main(["--config", str(config), "--out", str(out)])


def test_gpu_llava7b_writes_a_results_file_that_says_how_it_was_measured(tmp_path):
    out = tmp_path / "gpu.json"
    _script("gpu_llava7b").main(["--tiny-shape", "--device", "cpu", "--attention", "sdpa", "--steps", "1",
                                 "--warmup", "0", "--gen-batch", "2", "--new-tokens", "2", "--out", str(out)])  # fmt: skip
    report = _written(out)
    assert report["device_type"] == "cpu" and report["results"]["sdpa"]["package"]["step_time_s"] > 0


@pytest.mark.slow
def test_startup_writes_a_results_file_that_says_how_it_was_measured(tmp_path):
    """The whole script on the toy config, one repeat: every cold command, the warm evaluate, the no-op
    check and Snakemake's floor (about a minute and a half on 2 cores)."""
    out = tmp_path / "startup.json"
    _script("startup").main(["--quick", "--out", str(out)])
    report = _written(out)
    assert set(report["commands"]) == {"train", "evaluate", "score", "matrix"}
    assert (
        report["commands"]["evaluate"]["loads"]["torch"] and not report["commands"]["score"]["loads"]["torch"]
    )
    assert report["commands"]["evaluate"]["startup_s"] > 0 and report["warm_evaluate"]["servers_started"] >= 1
    assert report["noop_toy"]["nothing_to_do"] and report["snakemake_floor"]["toy"]["nothing_to_do"]


@pytest.mark.slow
def test_scheduler_writes_a_results_file_that_says_how_it_was_measured(tmp_path):
    """The whole script on a DAG of 8 short jobs: every variant run, Snakemake's own CPU recorded for each."""
    out = tmp_path / "scheduler.json"
    script = _script("scheduler")
    script.main(["--jobs", "8", "--sleep", "0.05", "--out", str(out)])
    report = _written(out)
    assert list(report["variants"]) == list(script.VARIANTS) and report["sleeps_alone_seconds"] == 0.2
    assert all(v["snakemake_cpu_seconds"] > 0 and v["wall_seconds"] > 0 for v in report["variants"].values())
    table = _script("tables").scheduler(report)
    assert (
        "(stand-in)" in table
        and "| the default profile |" in table
        and "| the sleeps alone, 2 cores |" in table
    )


def test_a_rewritten_results_file_leaves_the_tree_clean_and_an_edit_does_not(tmp_path):
    """git_state: what the records' `dirty` and stage.json's git_commit rest on."""
    from modalprompt.run.environment import git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "results" / "r.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    head, dirty = git_state(tmp_path, exclude=("results",))
    assert len(head) == 40 and not dirty
    (tmp_path / "results" / "r.json").write_text('{"rewritten": true}\n')
    assert git_state(tmp_path, exclude=("results",)) == (head, False)
    assert git_state(tmp_path) == (head, True)
    (tmp_path / "new.py").write_text("")
    assert git_state(tmp_path, exclude=("results",), untracked=False) == (head, False)
    assert git_state(tmp_path, exclude=("results",)) == (head, True)
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_state(tmp_path, exclude=("results",), untracked=False) == (head, True)
    assert git_state(tmp_path.parent / "not-a-repository-here") == ("unknown", True)
