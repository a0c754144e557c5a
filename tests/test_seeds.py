"""Seeds as a dimension of the experiment (pipeline.seeds): each job's seed, the method over its seeds (mean
and standard deviation of matrices and metrics), the printed table; and the baselines' config sections in
each job's rerun key."""

import json
import statistics
from pathlib import Path

import pytest
import yaml

from modalprompt import layout
from modalprompt.cli import main
from modalprompt.config import ConfigError, job_to_json
from modalprompt.experiment import experiment_from_dict
from modalprompt.jobs import eval_job, train_job
from modalprompt.scoring.report import summary_text, write_comparison, write_method_summary
from modalprompt.tracking import runs_table_address

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["a", "b"]


def _config(**changes) -> dict:
    raw = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def _experiment(**changes):
    return experiment_from_dict(_config(**changes), "config.yaml")


def test_seeds_must_be_distinct_and_not_empty():
    for bad in ([], [0, 0]):
        with pytest.raises(ConfigError, match=r"pipeline\.seeds"):
            _experiment(pipeline={"seeds": bad})
    assert _experiment(pipeline={"seeds": [2, 0]}).pipeline.seeds == (2, 0)


def test_a_seed_replaces_the_training_seed_and_the_prompt_seed_and_no_evaluation_setting():
    cfg = _experiment(pipeline={"seeds": [0, 7]})
    job = train_job(cfg, "colors", "modalprompt", seed=7)
    assert job.training.seed == 7 and job.method.prompt_init_seed == 7
    assert train_job(cfg, "colors", "modalprompt") == train_job(cfg, "colors", "modalprompt", seed=None)
    assert job_to_json(train_job(cfg, "colors", "lora_ft", seed=0)) != job_to_json(
        train_job(cfg, "colors", "lora_ft", seed=7)
    )


def test_method_sections_reach_only_their_methods_jobs_and_training_only_fields_no_evaluation():
    base = _experiment()
    changed = _experiment(replay={"buffer_size": 7}, l2p={"pull_weight": 0.5})
    assert job_to_json(train_job(base, "shapes", "replay")) != job_to_json(
        train_job(changed, "shapes", "replay")
    )
    assert job_to_json(train_job(base, "shapes", "lora_ft")) == job_to_json(
        train_job(changed, "shapes", "lora_ft")
    )
    assert job_to_json(train_job(base, "shapes", "l2p")) != job_to_json(train_job(changed, "shapes", "l2p"))
    for method in ("replay", "l2p", "modalprompt"):  # buffer size and pull weight: training only
        assert job_to_json(eval_job(base, "shapes", method)) == job_to_json(
            eval_job(changed, "shapes", method)
        )
    bigger = _experiment(l2p={"pool_size": 20})  # the pool's shape: evaluation reads it
    assert job_to_json(eval_job(base, "shapes", "l2p")) != job_to_json(eval_job(bigger, "shapes", "l2p"))


def test_replay_and_multitask_jobs_name_the_earlier_tasks_others_do_not():
    cfg = _experiment()
    assert [t.name for t in train_job(cfg, "count", "replay").earlier_tasks] == ["colors", "shapes"]
    assert [t.name for t in train_job(cfg, "count", "multitask").earlier_tasks] == ["colors", "shapes"]
    assert train_job(cfg, "count", "lora_ft").earlier_tasks == ()
    assert (
        train_job(cfg, "count", "replay").earlier_tasks[0].eval_file == ""
    )  # training reads train files only


def test_lora_training_overrides_apply_to_the_lora_methods_only():
    cfg = _experiment(lora={"training": {"lr": 0.0002}})
    assert train_job(cfg, "colors", "lora_ft").training.lr == 0.0002
    assert train_job(cfg, "colors", "modalprompt").training.lr == cfg.training.lr
    with pytest.raises(ConfigError, match=r"lora\.training"):
        _experiment(lora={"training": {"no_such_key": 1}})


def _seed_run(folder: Path, cells: dict[tuple[int, str], float]) -> Path:
    """One seed's method folder, written from score files in the shape `score` writes them."""
    scores = []
    for (stage, task), accuracy in cells.items():
        path = folder / "scores" / f"{stage}-{task}.score.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"task": task, "stage": stage, "accuracy": accuracy,
                                    "accuracy_published": accuracy - 1, "selection_accuracy": None}))  # fmt: skip
        scores.append(path)
    write_method_summary(folder, TASKS, scores, "t")
    return folder


SEED_CELLS = {
    3: {(0, "a"): 10.0, (0, "b"): 20.0, (1, "a"): 80.0, (1, "b"): 30.0, (2, "a"): 60.0, (2, "b"): 90.0},
    5: {(0, "a"): 10.0, (0, "b"): 20.0, (1, "a"): 70.0, (1, "b"): 40.0, (2, "a"): 40.0, (2, "b"): 100.0},
}


def test_a_method_over_its_seeds_is_the_mean_and_sample_deviation_of_each_seed(tmp_path, capsys):
    runs = {s: _seed_run(tmp_path / f"seed-{s}" / "m", cells) for s, cells in SEED_CELLS.items()}
    out = tmp_path / "m"
    args = ["aggregate", "--seeds", "3", "5", "--folders", *map(str, runs.values()), "--out-dir", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(layout.AGGREGATE_FILES)
    assert (out / "matrix.csv").read_text().splitlines()[3] == "2,50.0000,95.0000"
    assert (out / "matrix_std.csv").read_text().splitlines()[
        3
    ] == f"2,{statistics.stdev([60, 40]):.4f},7.0711"
    metrics = json.loads((out / "metrics.json").read_text())
    per_seed = [json.loads((r / "metrics.json").read_text()) for r in runs.values()]
    assert per_seed[0]["avg"] == 75.0 and per_seed[1]["avg"] == 70.0
    assert metrics["avg"] == pytest.approx(72.5) and metrics["std"]["avg"] == pytest.approx(
        statistics.stdev([75, 70])
    )
    assert metrics["seeds"] == [3, 5] and metrics["per_seed"]["5"]["avg"] == 70.0
    assert metrics["selection_accuracy"] is None and metrics["std"]["selection_accuracy"] is None
    published = json.loads((out / "metrics_published.json").read_text())
    assert published["avg"] == pytest.approx(71.5)
    short = ["aggregate", "--seeds", "3", "--folders", *map(str, runs.values()), "--out-dir", str(out)]
    assert main(short) != 0
    assert "give one folder per seed" in capsys.readouterr().err


def test_the_comparison_and_the_printed_table_carry_the_deviation(tmp_path):
    results = tmp_path / "results"
    for method in ("x", "y"):
        runs = {s: _seed_run(results / f"seed-{s}" / method, cells) for s, cells in SEED_CELLS.items()}
        args = ["aggregate", "--seeds", "3", "5", "--folders", *map(str, runs.values())]
        assert main([*args, "--out-dir", str(results / method)]) == 0
    write_comparison(results, ["x", "y"], results / "comparison", "t")
    header, row = (results / "comparison" / "metrics.csv").read_text().splitlines()[:2]
    assert "avg_std" in header.split(",") and row.startswith("x,72.5000")
    text = summary_text(results, ["x", "y"], "sqlite:///db")
    assert "72.50+-3.54" in text and "mean over seeds [3, 5]" in text
    assert (results / "comparison" / "forgetting.png").read_bytes()[:4] == b"\x89PNG"


def test_the_summary_of_a_partial_run_names_the_unfinished_methods(tmp_path):
    """`snakemake --until ...` ends with the closing summary too: methods without results are named, not read."""
    results = tmp_path / "results"
    runs = {s: _seed_run(results / f"seed-{s}" / "x", cells) for s, cells in SEED_CELLS.items()}
    assert main(["aggregate", "--seeds", "3", "5", "--folders", *map(str, runs.values()),
                 "--out-dir", str(results / "x")]) == 0  # fmt: skip
    text = summary_text(results, ["x", "y"], "sqlite:///db")
    assert "a part of the DAG was run): y" in text and "72.50+-3.54" in text
    assert "open http://127.0.0.1:5000)" in text
    assert runs_table_address(results) == "http://127.0.0.1:5000"  # no experiment id recorded yet
    (results / "tracking.json").write_text('{"experiment_id": "4"}')
    assert runs_table_address(results).endswith("/#/experiments/4/runs?workflowType=machine_learning"
                                                "&viewStateShareKey=summary-metrics")  # fmt: skip
    assert "open http://example:1/#/x)" in summary_text(
        results, ["x"], "sqlite:///db", "http://example:1/#/x"
    )
