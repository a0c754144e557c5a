"""What MLflow's UI is given to open an experiment as model training: the experiment-kind tag, the saved
runs-table view of the summary runs and its columns, and the summary runs carrying those metrics (a real
SQLite store in tmp_path, as the pipeline's default)."""

from __future__ import annotations

import json

import pytest

from modalprompt import layout
from modalprompt.scoring.metrics import format_matrix
from modalprompt.scoring.report import aggregate_metrics, method_metrics
from modalprompt.tracking import (
    EXPERIMENT_KIND_TAG,
    TABLE_METRICS,
    TRAINING_KIND,
    VIEW_ID,
    VIEW_TAG,
    Tracker,
    runs_table_url,
    sync_aggregate,
    sync_method,
)

TASKS = ["colors", "shapes", "count"]
ACCURACY = {1: [80.0, None, None], 2: [60.0, 70.0, None], 3: [50.0, 65.0, 90.0]}
SELECTION = {1: [100.0, None, None], 2: [90.0, 80.0, None], 3: [85.0, 75.0, 95.0]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (MLflow builds its tables once: seconds on two cores)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return uri, MlflowClient(uri)


def _method_files(results, accuracy=ACCURACY) -> dict:
    folder = layout.method_dir(results, "modalprompt")
    folder.mkdir(parents=True)
    metrics = method_metrics(TASKS, accuracy, SELECTION)
    (folder / "matrix.csv").write_text(format_matrix(TASKS, accuracy))
    (folder / "selection.csv").write_text(format_matrix(TASKS, SELECTION))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def _experiment(client, name):
    return client.get_experiment_by_name(name)


def test_a_new_experiment_is_tagged_as_model_training_with_the_summary_view(store, tmp_path):
    uri, client = store
    _method_files(tmp_path)
    sync_method(uri, "fresh", tmp_path, "modalprompt", TASKS)
    tags = _experiment(client, "fresh").tags
    assert tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND == "custom_model_development"
    view = json.loads(tags[VIEW_TAG])  # MLflow's saved-view envelope: name, createdAt (ms), state (JSON)
    assert view["name"] and isinstance(view["createdAt"], int)
    state = json.loads(view["state"])
    assert state["selectedColumns"] == ["metrics.`avg`", "metrics.`bwt`", "metrics.`forgetting`",
                                        "metrics.`selection_accuracy`", "metrics.`cost_total_device_hours`"]  # fmt: skip
    assert state["searchFilter"] == "tags.kind = 'summary'"
    # the view's filter is a valid search that finds the summary run, and only it
    found = client.search_runs([_experiment(client, "fresh").experiment_id], state["searchFilter"])
    assert [r.info.run_name for r in found] == ["modalprompt summary"]


def test_an_existing_experiment_without_the_tags_gets_them_once_and_a_chosen_kind_stays(store):
    uri, client = store
    bare = client.create_experiment("made-before")  # as earlier versions of the project created it
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    Tracker(uri, "made-before")
    Tracker(uri, "chosen")
    first = client.get_experiment(bare).tags
    assert first[EXPERIMENT_KIND_TAG] == TRAINING_KIND and VIEW_TAG in first
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"  # the user's
    Tracker(uri, "made-before")
    assert client.get_experiment(bare).tags[VIEW_TAG] == first[VIEW_TAG]  # kept, not rewritten each time
    client.set_experiment_tag(bare, VIEW_TAG, "not a view")
    Tracker(uri, "made-before")
    assert json.loads(json.loads(client.get_experiment(bare).tags[VIEW_TAG])["state"])["selectedColumns"]


def test_summary_runs_carry_the_table_metrics_under_their_short_names(store, tmp_path):
    uri, client = store
    metrics = _method_files(tmp_path)
    assert all(metrics[name] is not None for name in TABLE_METRICS)
    sync_method(uri, "summary-metrics", tmp_path, "modalprompt", TASKS)
    experiment = _experiment(client, "summary-metrics").experiment_id
    (run,) = client.search_runs([experiment], "tags.kind = 'summary'")
    for name in TABLE_METRICS:
        assert run.data.metrics[name] == pytest.approx(metrics[name]), name
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [0], name


def test_the_summary_over_seeds_carries_the_table_metrics_as_means(store, tmp_path):
    uri, client = store
    other = {1: [70.0, None, None], 2: [40.0, 75.0, None], 3: [30.0, 55.0, 85.0]}
    per_seed = {1: _method_files(tmp_path / "seed-1"), 2: _method_files(tmp_path / "seed-2", other)}
    folder = layout.method_dir(tmp_path, "modalprompt")
    folder.mkdir()
    (folder / "matrix.csv").write_text(format_matrix(TASKS, ACCURACY))
    (folder / "metrics.json").write_text(json.dumps(aggregate_metrics(per_seed)))
    sync_aggregate(uri, "seeds", tmp_path, "modalprompt", TASKS)
    (run,) = client.search_runs([_experiment(client, "seeds").experiment_id], "tags.kind = 'summary'")
    assert {name: run.data.metrics[name] for name in TABLE_METRICS} == pytest.approx(
        {name: (per_seed[1][name] + per_seed[2][name]) / 2 for name in TABLE_METRICS}
    )


def test_the_runs_table_link_opens_the_training_view_with_the_saved_view():
    url = runs_table_url("http://127.0.0.1:5000/", "7")
    assert url == ("http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
                   f"&viewStateShareKey={VIEW_ID}")  # fmt: skip
