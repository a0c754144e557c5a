"""The example method package (examples/modalprompt-example-method: one module and its entry point),
installed beside modalprompt, runs through the real Snakemake on the toy DAG: its stages train, are
evaluated and scored, its matrix and metrics are written, and MLflow records it. Without its entry point the
same config is refused before any job runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from installed import environment, install_project
from test_workflow import RESULTS, base_config, snakemake, write_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "modalprompt-example-method"
pytestmark = pytest.mark.slow


def test_the_example_method_runs_through_the_toy_dag_from_its_own_package(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    site = install_project(tmp_path / "site", EXAMPLE)
    project = tmp_path / "project"
    project.mkdir()
    raw = base_config(project)
    raw["tasks"] = raw["tasks"][:2]
    raw["training"].update(epochs=1)
    raw["pipeline"].update(methods=["prompt_replay"], warm_start=False)  # every job a fresh process
    raw["prompt_replay"] = {"records_per_task": 3}
    write_config(project, raw)
    for name, value in environment(site).items():  # the DAG and its jobs see the package installed
        monkeypatch.setenv(name, value)
    snakemake(project, "--cores", "2")

    method = project / RESULTS / "prompt_replay"
    matrix = (method / "matrix.csv").read_text().splitlines()
    assert matrix[0] == "stage,colors,shapes" and [row.split(",")[0] for row in matrix[1:]] == ["0", "1", "2"]
    assert {"avg", "bwt", "selection_accuracy"} <= set(json.loads((method / "metrics.json").read_text()))
    for stage in (1, 2):
        assert (method / f"stage-{stage}" / "eval" / "colors.score.json").is_file()
    second = json.loads((method / "stage-2" / "checkpoint" / "stage.json").read_text())
    assert second["extra"]["records_per_task"]["colors"] == 3  # its own setting, at work
    client = MlflowClient(f"sqlite:///{project / RESULTS / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny-demo").experiment_id])
    assert {r.data.tags["kind"] for r in runs if r.data.tags.get("method") == "prompt_replay"} >= {
        "train",
        "summary",
    }
    assert "Nothing to be done" in snakemake(project, "-n", "--cores", "2").stdout

    # its module on the path, but no entry point: not installed, so its section is no known key
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLE))
    refused = snakemake(project, "-n", "--cores", "2", check=False)
    assert refused.returncode != 0
    assert "unknown key(s) ['prompt_replay']" in refused.stdout + refused.stderr
