"""Every MLflow call of the project. MLflow records what the pipeline's files say; it never decides what runs.

`sync_method` makes the MLflow experiment match the files of one method's results: a run per stage
(settings as params, per-step curves, samples/s, peak memory, checkpoint path, git commit, versions) and a
summary run (the accuracy matrix as `acc/<task>` with step = stage, the metrics, what the method cost as
`cost_<train|eval|total>_<field>` and per stage `cost/<train|eval>_<field>` with step = stage (cost.json),
the matrix files and the heatmap as artifacts). Each run carries a key tag and a hash of the files it
came from: a rerun that finds the same hash keeps the run, a changed hash replaces it, so reruns never
duplicate. With seeds (pipeline.seeds) every seed's stage and summary runs carry the seed in their key and
tags (its summary runs are `kind=seed_summary`), and the method's `kind=summary` run holds the metrics
over the seeds: the mean under each metric's name and the standard deviation as `<metric>_std`.

Every experiment the project creates or uses carries two experiment tags for MLflow's UI: the experiment
kind of model training (`mlflow.experimentKind`), and a saved runs-table view, "summary metrics", of the
summary runs with `avg`, `bwt`, `forgetting` and `selection_accuracy` as columns. MLflow 3.17's UI picks
its GenAI or model-training layout from its sidebar switch (remembered by the browser) or the URL's
`workflowType`, not from the tag, so `runs_table_url` is the link that opens the experiment as training
runs with that view.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from modalprompt import layout
from modalprompt.cost import cost_metrics
from modalprompt.scoring.metrics import SUMMARY_METRICS

KEY_TAG = "modalprompt.key"
HASH_TAG = "modalprompt.hash"
LIVE_TAG = "modalprompt.live"  # opened by the training job while it trained (LiveRun)
IDENTITY_TAG = (
    "modalprompt.identity"  # the version of the stage a live run records (stage.json's run_identity)
)
MAX_PARAM_LENGTH = 500  # MLflow's limit for one param value
# The experiment kind MLflow's UI knows an experiment by (its kind selector writes the same tag); the other
# value is "genai_development"
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
# What a user compares across methods: the columns of the runs table's saved view (logged on every summary
# run under these names, at step 0)
TABLE_METRICS = ("avg", "bwt", "forgetting", "selection_accuracy")
TABLE_COST = "cost_total_device_hours"  # and what the run cost (cost.json's total, cost.cost_metrics)
VIEW_ID = "summary-metrics"  # the view's key: the URL's viewStateShareKey
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"  # where MLflow's UI keeps a saved view of the runs table
VIEW_NAME = "summary metrics"
VIEW_STATE = {  # the runs table's search and columns, as MLflow's UI saves them
    "searchFilter": "tags.kind = 'summary'",
    "orderByKey": "metrics.`avg`",
    "orderByAsc": False,
    "startTime": "ALL",
    "lifecycleFilter": "Active",
    "datasetsFilter": [],
    "modelVersionFilter": "All Runs",
    "selectedColumns": [f"metrics.`{name}`" for name in (*TABLE_METRICS, TABLE_COST)],
}


def missing_experiment_tags(tags: dict[str, str]) -> dict[str, str]:
    """The experiment tags to set on an experiment that has `tags`: the kind where it has none (a kind the
    user chose stays), the saved view where it is missing or another view (an older one of the project's)."""
    out = {} if tags.get(EXPERIMENT_KIND_TAG) else {EXPERIMENT_KIND_TAG: TRAINING_KIND}
    try:
        saved = json.loads(tags[VIEW_TAG])
        current = saved["name"] == VIEW_NAME and json.loads(saved["state"]) == VIEW_STATE
    except (KeyError, TypeError, ValueError):
        current = False
    if not current:
        now = int(time.time() * 1000)
        envelope = {"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(VIEW_STATE)}
        out[VIEW_TAG] = json.dumps(envelope)
    return out


def runs_table_url(ui: str, experiment_id: str) -> str:
    """The MLflow UI's page (`ui`: e.g. http://127.0.0.1:5000) of the experiment's runs as training runs,
    in the "summary metrics" view: the summary runs with the metrics of TABLE_METRICS as columns."""
    query = f"workflowType=machine_learning&viewStateShareKey={VIEW_ID}"
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def runs_table_address(results: Path, ui: str = "http://127.0.0.1:5000") -> str:
    """runs_table_url of the experiment whose results are in `results`, once its track step has recorded the
    experiment's id (tracking.json); the UI's front page before that."""
    try:
        experiment_id = json.loads(layout.tracking_file(results).read_text()).get("experiment_id")
    except (OSError, ValueError):
        experiment_id = None
    return runs_table_url(ui, experiment_id) if experiment_id else ui


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list | bool) or value is None else str(value)
    return out


def _hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()[:16]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


class Tracker:
    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None and found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        if found is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_location, tags=missing_experiment_tags({})
            )
        else:
            self.experiment_id = found.experiment_id
            for key, value in missing_experiment_tags(found.tags).items():
                self.client.set_experiment_tag(self.experiment_id, key, value)

    def runs_with_key(self, key: str) -> list[Any]:
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'")

    def replace_run(
        self, key: str, content_hash: str, name: str, tags: dict[str, str], identity: str | None = None
    ) -> tuple[str, bool]:
        """The run for `key` with this content hash: (run id, True) if it is to be (re)logged, (id, False) if
        kept as it is. A live run of the same stage version (`identity`), opened by the training job, is
        completed rather than replaced; every other run of the key is deleted."""
        existing = self.runs_with_key(key)
        for run in existing:
            if run.data.tags.get(HASH_TAG) == content_hash and run.info.status == "FINISHED":
                return run.info.run_id, False
        live = [r for r in existing if identity and _is_live(r) and r.data.tags.get(IDENTITY_TAG) == identity]
        for run in existing:
            if not live or run.info.run_id != live[0].info.run_id:
                self.client.delete_run(run.info.run_id)
        if live:
            run_id = live[0].info.run_id
            for tag, value in {HASH_TAG: content_hash, **tags}.items():
                self.client.set_tag(run_id, tag, value)
            return run_id, True
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={KEY_TAG: key, HASH_TAG: content_hash, **tags}
        )
        return run.info.run_id, True

    def logged_steps(self, run_id: str, name: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, name)}

    def log(self, run_id: str, params: dict[str, str], metrics: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        param_list = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in sorted(params.items())]
        metric_list = [Metric(k, float(v), now, step) for k, v, step in metrics if v is not None]
        for i in range(0, len(param_list), 100):
            self.client.log_batch(run_id, params=param_list[i : i + 100])
        for i in range(0, len(metric_list), 1000):
            self.client.log_batch(run_id, metrics=metric_list[i : i + 1000])

    def finish(self, run_id: str, artifacts: list[Path] = ()) -> None:
        for path in artifacts:
            if path.is_file():
                self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, "FINISHED")


_CURVES = ("loss", "ce", "align_image", "align_text", "lr", "samples_per_s", "peak_memory_mb")


def _is_live(run: Any) -> bool:
    """A run the training job opened and the `track` step has not completed yet."""
    return run.data.tags.get(LIVE_TAG) == "true" and HASH_TAG not in run.data.tags


def _seeded(method: str, seed: int | None) -> str:
    return method if seed is None else f"{method}/seed-{seed}"


def stage_key(method: str, stage: int, seed: int | None = None) -> str:
    """The key tag of a stage's run: the training job's live run and the `track` step's are the same run."""
    return f"{_seeded(method, seed)}/stage-{stage}"


def stage_tags(method: str, stage: int, task: str, seed: int | None = None) -> dict[str, str]:
    tags = {"method": method, "stage": str(stage), "task": task, "kind": "train"}
    return tags if seed is None else {**tags, "seed": str(seed)}


class LiveRun:
    """A training stage's per-step metrics, sent to its MLflow run while it trains.

    Everything MLflow does happens in a background thread fed by a queue, so a slow or vanished tracking
    server never stalls or fails training: the first error is reported once (`warn`) and later metrics are
    dropped; the `track` step logs whatever the run misses from the stage's history.jsonl. The run is the
    one `track` completes (same key tag, same metric names and steps). A resumed attempt of the same stage
    version (`identity`) continues its live run; any other run of the key is from an older version and is
    deleted."""

    def __init__(self, uri: str, experiment: str, method: str, stage: int, task: str, identity: str,
                 warn=print, seed: int | None = None):  # fmt: skip
        import queue
        import threading

        self.uri, self.warn, self.failed = uri, warn, False
        self.queue: queue.Queue = queue.Queue()
        self.opened = threading.Event()
        self.thread = threading.Thread(
            target=self._work, args=(experiment, method, stage, task, identity, seed), daemon=True
        )
        self.thread.start()

    def log_step(self, metrics: Any) -> None:
        """Queue one step's metrics (a StepMetrics or a dict with `step`); returns at once."""
        row = metrics if isinstance(metrics, dict) else metrics.__dict__
        if not self.failed:
            self.queue.put(dict(row))

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued, waiting at most `timeout` seconds; the run stays open for `track`."""
        self.queue.put(None)
        self.thread.join(timeout)
        if self.thread.is_alive():
            self._fail(f"still busy after {timeout:.0f} s")

    def _fail(self, reason: str) -> None:
        if not self.failed:
            self.failed = True
            self.warn(f"modalprompt: warning: live curves to MLflow at {self.uri} stopped ({reason}); the "
                      "stage trains on, and the `track` step records its curves from history.jsonl")  # fmt: skip

    def _work(self, experiment, method, stage, task, identity, seed) -> None:
        try:
            reason = unreachable(self.uri)
            if reason:
                raise ConnectionError(reason)
            tracker = _tracker(self.uri, experiment)
            key = stage_key(method, stage, seed)
            run_id = None
            for run in tracker.runs_with_key(key):
                if _is_live(run) and run.data.tags.get(IDENTITY_TAG) == identity and run_id is None:
                    run_id = run.info.run_id  # a resumed attempt continues its run
                else:
                    tracker.client.delete_run(run.info.run_id)
            if run_id is None:
                tags = {
                    KEY_TAG: key,
                    LIVE_TAG: "true",
                    IDENTITY_TAG: identity,
                    **stage_tags(method, stage, task, seed),
                }
                run_id = tracker.client.create_run(tracker.experiment_id, run_name=_stage_run_name(key, task),
                                                   tags=tags).info.run_id  # fmt: skip
        except Exception as err:  # MLflow or the network: never the training's problem
            self._fail(f"{type(err).__name__}: {err}")
            return
        finally:
            self.opened.set()
        while (row := self.queue.get()) is not None:
            rows = [row]
            while not self.queue.empty() and rows[-1] is not None:
                rows.append(self.queue.get())
            done = rows[-1] is None
            metrics = [
                (name, r[name], r["step"]) for r in rows if r is not None for name in _CURVES if name in r
            ]
            try:
                tracker.log(run_id, {}, metrics)
            except Exception as err:
                self._fail(f"{type(err).__name__}: {err}")
                return
            if done:
                return


def _stage_run_name(key: str, task: str) -> str:
    method, stage = key.split("/stage-")
    return f"{method} stage {stage}: {task}"


def unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """Why an http(s) tracking server does not answer (its /health endpoint), or None when it does or the
    store is local (SQLite, files)."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as answer:
            return None if answer.status == 200 else f"HTTP {answer.status}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def sync_all(
    uri: str,
    experiment: str,
    results: Path,
    methods: list[str],
    tasks: list[str],
    seeds: list[int] | None = None,
) -> dict[str, Any]:
    """Every method's runs (with `seeds`: each seed's, and each method's over the seeds); when the server is
    down or fails, {"pending": true, ...} instead of an error: the results are complete on disk, and the next
    `snakemake` run tracks them (it reruns `track`)."""
    reason = unreachable(uri)
    if reason is None:
        try:
            if seeds:
                summary: dict[str, Any] = {
                    f"{m}/seed-{s}": sync_method(uri, experiment, layout.run_dir(results, s), m, tasks, s)
                    for s in seeds
                    for m in methods
                }
                summary.update({m: sync_aggregate(uri, experiment, results, m, tasks) for m in methods})
            else:
                summary = {m: sync_method(uri, experiment, results, m, tasks) for m in methods}
            summary["comparison"] = sync_comparison(uri, experiment, results, methods)
            summary["experiment_id"] = _tracker(uri, experiment).experiment_id  # for the runs table's address
            return summary
        except Exception as err:  # any MLflow or network failure while the server is gone: pending
            if uri.startswith(("http://", "https://")) and unreachable(uri):
                reason = f"{type(err).__name__}: {err}"
            else:
                raise
    return {"pending": True, "uri": uri, "error": reason}


def _tracker(uri: str, experiment: str) -> Tracker:
    """A SQLite store keeps its artifacts in mlartifacts/ beside the database file (the default store is
    <results>/mlflow.db), not in ./mlruns of whatever folder a job ran in; a server decides for itself.
    MLflow creates and migrates a SQLite store's tables on first use, and two jobs doing it at once
    (parallel training jobs opening their live runs) corrupt the file for good (duplicate columns, an
    alembic version no later process can migrate): a SQLite store is opened, and its experiment created,
    one process at a time, under a lock file beside it."""
    if not uri.startswith("sqlite:///"):
        return Tracker(uri, experiment)
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return Tracker(uri, experiment, (database.parent / "mlartifacts").resolve().as_uri())


def sync_method(
    uri: str, experiment: str, results: Path, method: str, tasks: list[str], seed: int | None = None
) -> dict[str, Any]:
    """Make MLflow match the files of `method` under `results` (one seed's run folder with `seed`); returns
    the run ids and what was (re)logged."""
    tracker = _tracker(uri, experiment)
    summary: dict[str, Any] = {
        "experiment": experiment,
        "uri": uri,
        "method": method,
        "runs": {},
        "logged": [],
    }
    for stage, task in enumerate(tasks, start=1):
        checkpoint = layout.checkpoint_dir(results, method, stage)
        meta_file, history_file = checkpoint / layout.META_FILE, layout.history_file(results, method, stage)
        if not meta_file.is_file():
            continue
        key = stage_key(method, stage, seed)
        meta = json.loads(meta_file.read_text())
        extra = meta.get("extra", {})
        run_id, new = tracker.replace_run(key, _hash_files([meta_file, history_file]), _stage_run_name(key, task),
                                          stage_tags(method, stage, task, seed), extra.get("run_identity"))  # fmt: skip
        summary["runs"][key] = run_id
        if not new:
            continue
        params = _flatten("", extra.get("settings", {}), {})
        params.update({"checkpoint": str(checkpoint.resolve()), "git_commit": extra.get("git_commit", "unknown"),
                       "torch_version": meta["torch_version"], "modalprompt_version": meta["package_version"],
                       "transformers_version": extra.get("transformers_version", "unknown"),
                       "base_fingerprint": meta["base_fingerprint"]})  # fmt: skip
        params.update(_flatten("env", extra.get("environment", {}), {}))  # GPU, driver, versions, dtype, ...
        history = _read_jsonl(history_file)
        logged = {name: tracker.logged_steps(run_id, name) for name in _CURVES}  # live ones are not repeated
        metrics = [(name, row[name], row["step"]) for row in history for name in _CURVES
                   if name in row and row["step"] not in logged[name]]  # fmt: skip
        metrics += [("stage_seconds", extra.get("seconds"), 0), ("stage_samples", extra.get("samples"), 0)]
        tracker.log(run_id, params, metrics)
        tracker.finish(run_id)
        summary["logged"].append(key)

    folder = layout.method_dir(results, method)
    files = [folder / name for name in layout.SUMMARY_FILES]
    files += [folder / name for name in layout.CONFUSION_FILES if (folder / name).is_file()]
    if (folder / "metrics.json").is_file():
        key = f"{_seeded(method, seed)}/summary"
        tags = {"method": method, "kind": "summary"} if seed is None else {
            "method": method, "kind": "seed_summary", "seed": str(seed)}  # fmt: skip
        run_id, new = tracker.replace_run(key, _hash_files(files), f"{_seeded(method, seed)} summary", tags)
        summary["runs"][key] = run_id
        if new:
            tracker.log(run_id, {"method": method, "tasks": ",".join(tasks)}, _summary_metrics(folder, tasks))
            tracker.finish(run_id, files)
            summary["logged"].append(key)
    return summary


def sync_aggregate(uri: str, experiment: str, results: Path, method: str, tasks: list[str]) -> dict[str, Any]:
    """The method over its seeds: a `kind=summary` run with each metric's mean and `<metric>_std`, the mean
    matrix as `acc/<task>` (step = stage) and the aggregate files as artifacts."""
    folder = layout.method_dir(results, method)
    files = [folder / name for name in layout.AGGREGATE_FILES]
    if not (folder / "metrics.json").is_file():
        return {}
    tracker = _tracker(uri, experiment)
    key = f"{method}/summary"
    run_id, new = tracker.replace_run(key, _hash_files(files), f"{method} summary over seeds",
                                      {"method": method, "kind": "summary"})  # fmt: skip
    if new:
        metrics = json.loads((folder / "metrics.json").read_text())
        values = _summary_metrics(folder, tasks)
        values += [(f"{name}_std", value, 0) for name, value in metrics["std"].items() if value is not None]
        params = {"method": method, "tasks": ",".join(tasks), "seeds": ",".join(map(str, metrics["seeds"]))}
        tracker.log(run_id, params, values)
        tracker.finish(run_id, files)
    return {"runs": {key: run_id}, "logged": [key] if new else []}


def sync_comparison(uri: str, experiment: str, results: Path, methods: list[str]) -> dict[str, Any]:
    """One run with the methods side by side: forgetting curves and the metrics table (the summary runs
    carry the same metric names, so MLflow's compare page shows them too)."""
    folder = Path(results) / "comparison"
    files = [folder / name for name in layout.COMPARISON_FILES]
    if not all(f.is_file() for f in files):
        return {}
    tracker = _tracker(uri, experiment)
    run_id, new = tracker.replace_run(
        "comparison",
        _hash_files(files),
        "methods compared",
        {"kind": "comparison", "methods": ",".join(methods)},
    )
    if new:
        tracker.log(run_id, {"methods": ",".join(methods)}, [])
        tracker.finish(run_id, files)
    return {"run": run_id, "logged": new}


def _summary_metrics(folder: Path, tasks: list[str]) -> list[tuple[str, float, int]]:
    """avg, bwt, ..., selection_accuracy at step 0 (metrics.json); acc/<task> and selection/<task> with
    step = stage; the cost metrics of cost.json (cost.cost_metrics), where there is one."""
    from modalprompt.scoring.metrics import read_matrix

    metrics = json.loads((folder / "metrics.json").read_text())
    out = [(name, metrics[name], 0) for name in SUMMARY_METRICS if metrics.get(name) is not None]
    _, accuracy = read_matrix(folder / "matrix.csv")
    out += _cells("acc", tasks, accuracy)
    if (folder / "selection.csv").is_file():
        _, selection = read_matrix(folder / "selection.csv")
        out += _cells("selection", tasks, selection)
    if (folder / layout.COST_FILE).is_file():
        out += cost_metrics(json.loads((folder / layout.COST_FILE).read_text()))
    return out


def _cells(
    prefix: str, tasks: list[str], matrix: dict[int, list[float | None]]
) -> list[tuple[str, float, int]]:
    return [(f"{prefix}/{task}", value, stage) for stage, row in sorted(matrix.items())
            for task, value in zip(tasks, row, strict=False) if value is not None]  # fmt: skip
