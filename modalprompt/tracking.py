"""Every MLflow call of the project. MLflow records what the pipeline's files say; it never decides what runs.

`sync_method` makes the MLflow experiment match the files of one method's results: a run per stage
(settings as params, per-step curves, samples/s, peak memory, checkpoint path, git commit, versions) and a
summary run (the accuracy matrix as `acc/<task>` with step = stage, the metrics, the matrix files and the
heatmap as artifacts). Each run carries a key tag and a hash of the files it came from: a rerun that finds
the same hash keeps the run, a changed hash replaces it, so reruns never duplicate.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from modalprompt import layout
from modalprompt.scoring.metrics import SUMMARY_METRICS

KEY_TAG = "modalprompt.key"
HASH_TAG = "modalprompt.hash"
MAX_PARAM_LENGTH = 500  # MLflow's limit for one param value


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
                experiment, artifact_location=artifact_location
            )
        else:
            self.experiment_id = found.experiment_id

    def runs_with_key(self, key: str) -> list[Any]:
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'")

    def replace_run(self, key: str, content_hash: str, name: str, tags: dict[str, str]) -> tuple[str, bool]:
        """The run for `key` with this content hash: (run id, True) if it is new, (id, False) if kept."""
        existing = self.runs_with_key(key)
        for run in existing:
            if run.data.tags.get(HASH_TAG) == content_hash and run.info.status == "FINISHED":
                return run.info.run_id, False
        for run in existing:
            self.client.delete_run(run.info.run_id)
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={KEY_TAG: key, HASH_TAG: content_hash, **tags}
        )
        return run.info.run_id, True

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
    uri: str, experiment: str, results: Path, methods: list[str], tasks: list[str]
) -> dict[str, Any]:
    """Every method's runs; when the server is down or fails, {"pending": true, ...} instead of an error:
    the results are complete on disk, and the next `snakemake` run tracks them (it reruns `track`)."""
    reason = unreachable(uri)
    if reason is None:
        try:
            summary = {m: sync_method(uri, experiment, results, m, tasks) for m in methods}
            summary["comparison"] = sync_comparison(uri, experiment, results, methods)
            return summary
        except Exception as err:  # any MLflow or network failure while the server is gone: pending
            if uri.startswith(("http://", "https://")) and unreachable(uri):
                reason = f"{type(err).__name__}: {err}"
            else:
                raise
    return {"pending": True, "uri": uri, "error": reason}


def _tracker(uri: str, experiment: str, results: Path) -> Tracker:
    # A local store keeps its artifacts beside it, not in ./mlruns of whatever folder the job ran in.
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    return Tracker(uri, experiment, (Path(results) / "mlartifacts").resolve().as_uri() if local else None)


def sync_method(uri: str, experiment: str, results: Path, method: str, tasks: list[str]) -> dict[str, Any]:
    """Make MLflow match the files of `method` under `results`; returns the run ids and what was (re)logged."""
    tracker = _tracker(uri, experiment, results)
    summary: dict[str, Any] = {
        "experiment": experiment,
        "uri": uri,
        "method": method,
        "runs": {},
        "logged": [],
    }
    for stage, task in enumerate(tasks, start=1):
        checkpoint = layout.checkpoint_dir(results, method, stage)
        meta_file, history_file = checkpoint / "stage.json", layout.history_file(results, method, stage)
        if not meta_file.is_file():
            continue
        key = f"{method}/stage-{stage}"
        run_id, new = tracker.replace_run(
            key, _hash_files([meta_file, history_file]), f"{method} stage {stage}: {task}",
            {"method": method, "stage": str(stage), "task": task, "kind": "train"},
        )  # fmt: skip
        summary["runs"][key] = run_id
        if not new:
            continue
        meta = json.loads(meta_file.read_text())
        extra = meta.get("extra", {})
        params = _flatten("", extra.get("settings", {}), {})
        params.update({"checkpoint": str(checkpoint.resolve()), "git_commit": extra.get("git_commit", "unknown"),
                       "torch_version": meta["torch_version"], "modalprompt_version": meta["package_version"],
                       "transformers_version": extra.get("transformers_version", "unknown"),
                       "base_fingerprint": meta["base_fingerprint"]})  # fmt: skip
        history = _read_jsonl(history_file)
        metrics = [(name, row[name], row["step"]) for row in history for name in _CURVES if name in row]
        metrics += [("stage_seconds", extra.get("seconds"), 0), ("stage_samples", extra.get("samples"), 0)]
        tracker.log(run_id, params, metrics)
        tracker.finish(run_id)
        summary["logged"].append(key)

    folder = layout.method_dir(results, method)
    files = [folder / name for name in layout.SUMMARY_FILES]
    files += [folder / name for name in layout.CONFUSION_FILES if (folder / name).is_file()]
    if (folder / "metrics.json").is_file():
        key = f"{method}/summary"
        run_id, new = tracker.replace_run(
            key, _hash_files(files), f"{method} summary", {"method": method, "kind": "summary"}
        )
        summary["runs"][key] = run_id
        if new:
            tracker.log(run_id, {"method": method, "tasks": ",".join(tasks)}, _summary_metrics(folder, tasks))
            tracker.finish(run_id, files)
            summary["logged"].append(key)
    return summary


def sync_comparison(uri: str, experiment: str, results: Path, methods: list[str]) -> dict[str, Any]:
    """One run with the methods side by side: forgetting curves and the metrics table (the summary runs
    carry the same metric names, so MLflow's compare page shows them too)."""
    folder = Path(results) / "comparison"
    files = [folder / name for name in layout.COMPARISON_FILES]
    if not all(f.is_file() for f in files):
        return {}
    tracker = _tracker(uri, experiment, results)
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
    step = stage."""
    from modalprompt.scoring.metrics import read_matrix

    metrics = json.loads((folder / "metrics.json").read_text())
    out = [(name, metrics[name], 0) for name in SUMMARY_METRICS if metrics.get(name) is not None]
    _, accuracy = read_matrix(folder / "matrix.csv")
    out += _cells("acc", tasks, accuracy)
    if (folder / "selection.csv").is_file():
        _, selection = read_matrix(folder / "selection.csv")
        out += _cells("selection", tasks, selection)
    return out


def _cells(
    prefix: str, tasks: list[str], matrix: dict[int, list[float | None]]
) -> list[tuple[str, float, int]]:
    return [(f"{prefix}/{task}", value, stage) for stage, row in sorted(matrix.items())
            for task, value in zip(tasks, row, strict=False) if value is not None]  # fmt: skip
