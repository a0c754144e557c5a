"""The report of an experiment, from its files (no torch): each method's accuracy and selection matrices,
metrics and cost from its score and stage files, the same over seeds (mean and standard deviation), the
selection confusion, the methods side by side (accuracy against cost too), and the end-of-run summary that
`snakemake` prints.

Selection accuracy has one definition, `metrics.selection_accuracy` (per task and stage: the share of
samples whose most similar selected prompt is the task's own); a method's single number is
`mean_selection` of its last stage's row.
"""

from __future__ import annotations

import json
import shlex
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modalprompt import layout
from modalprompt.cost import mean_cost, method_cost
from modalprompt.errors import DataError
from modalprompt.files import atomic_write_bytes, atomic_write_text
from modalprompt.scoring.metrics import SUMMARY_METRICS, Matrix, compute_metrics, format_matrix, read_matrix

# ------------------------------------------------------------------------------------- one method


@dataclass
class Matrices:
    """A method's matrices, each stage -> one value per task column."""

    accuracy: Matrix
    selection: Matrix  # percent of samples whose top selected prompt is their task's (None: no selection)
    published: Matrix  # accuracy as the published evaluation code scores the same predictions


def matrices_from_scores(tasks: list[str], score_files: list[Path], repeat_base: bool) -> Matrices:
    """The matrices of a method from its score files (each names its stage and task). With `repeat_base`
    (a method that is the base model at every stage) row 0 stands for stages 1..T."""
    found = Matrices({}, {}, {})
    for path in score_files:
        record = json.loads(Path(path).read_text())
        if record.get("task") not in tasks or not isinstance(record.get("stage"), int):
            raise DataError(
                f"{path}: needs 'task' (one of {tasks}) and an integer 'stage' (score with --stage)"
            )
        column, stage = tasks.index(record["task"]), record["stage"]
        published = record.get("accuracy_published", record["accuracy"])
        values = (record["accuracy"], record["selection_accuracy"], published)
        for matrix, value in zip((found.accuracy, found.selection, found.published), values, strict=True):
            matrix.setdefault(stage, [None] * len(tasks))[column] = value
    if repeat_base:
        if 0 not in found.accuracy:
            raise DataError("a method that repeats the base model needs row 0's score files")
        for stage in range(1, len(tasks) + 1):
            found.accuracy[stage], found.published[stage] = list(found.accuracy[0]), list(found.published[0])
            found.selection[stage] = [None] * len(tasks)
    return found


def mean_selection(row: list[float | None] | None) -> float | None:
    """A method's selection accuracy at one stage: the mean over the tasks that report one."""
    values = [v for v in row or [] if v is not None]
    return sum(values) / len(values) if values else None


def method_metrics(tasks: list[str], accuracy: Matrix, selection: Matrix) -> dict[str, Any]:
    """The metrics of metrics.compute_metrics, plus the selection accuracy at the last stage."""
    result = compute_metrics(tasks, accuracy)
    mean = mean_selection(selection.get(result["stages"]))
    result["selection_accuracy"] = None if mean is None else round(mean, 6)
    return result


def cost_from_files(score_files: list[Path], stage_files: list[Path]) -> dict[str, Any]:
    """cost.json of a method (cost.method_cost): each evaluation's cost from its score file (`cost`), each
    training stage's from its stage.json (`extra.cost`); files written before costs were recorded have
    none."""
    evals: dict[int, list[dict[str, Any] | None]] = {}
    for path in score_files:
        record = json.loads(Path(path).read_text())
        evals.setdefault(record["stage"], []).append(record.get("cost"))
    train = {}
    for path in stage_files:
        meta = json.loads(Path(path).read_text())
        train[meta["stage"]] = meta.get("extra", {}).get("cost")
    return method_cost(train, evals)


def write_method_summary(
    out_dir: Path,
    tasks: list[str],
    score_files: list[Path],
    title: str,
    repeat_base: bool = False,
    stage_files: list[Path] = (),
) -> dict[str, Any]:
    """matrix.csv, selection.csv, metrics.json and heatmap.png of one method, its matrix and metrics as the
    published evaluation code scores them, and cost.json from its score files and the stage.json of the
    stages its rows come from (layout.SUMMARY_FILES). Returns the metrics."""
    from modalprompt.scoring.plots import heatmap_png

    found = matrices_from_scores(tasks, score_files, repeat_base)
    metrics = method_metrics(tasks, found.accuracy, found.selection)
    published = method_metrics(tasks, found.published, found.selection)
    trained = {s: r for s, r in found.selection.items() if s > 0}
    out = Path(out_dir)
    atomic_write_text(out / "matrix.csv", format_matrix(tasks, found.accuracy))
    atomic_write_text(out / "selection.csv", format_matrix(tasks, trained))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    atomic_write_bytes(out / "heatmap.png", heatmap_png(tasks, found.accuracy, title))
    atomic_write_text(out / "matrix_published.csv", format_matrix(tasks, found.published))
    atomic_write_text(out / "metrics_published.json", json.dumps(published, indent=1) + "\n")
    cost = cost_from_files(score_files, list(stage_files))
    atomic_write_text(out / layout.COST_FILE, json.dumps(cost, indent=1) + "\n")
    return metrics


def metrics_of_files(matrix_csv: Path, selection_csv: Path | None = None) -> dict[str, Any]:
    """The metrics of a matrix CSV, with selection accuracy when a selection CSV is given."""
    tasks, accuracy = read_matrix(matrix_csv)
    if selection_csv is None:
        return compute_metrics(tasks, accuracy)
    _, selection = read_matrix(selection_csv)
    result = method_metrics(tasks, accuracy, selection)
    if result["stages"] not in selection:
        raise DataError(f"{selection_csv}: no row for stage {result['stages']}")
    last = selection[result["stages"]]
    result["selection_accuracy_by_task"] = {t: v for t, v in zip(tasks, last, strict=False) if v is not None}
    return result


# ------------------------------------------------------------------------------------- over seeds


def mean_and_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); the deviation is None for fewer than two values."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _cellwise(matrices: list[Matrix]) -> tuple[Matrix, Matrix]:
    """The mean and standard deviation of each cell over matrices of the same shape (empty stays empty)."""
    mean: Matrix = {}
    spread: Matrix = {}
    for stage in sorted(matrices[0]):
        columns = range(len(matrices[0][stage]))
        cells = [[m[stage][j] for m in matrices if stage in m and m[stage][j] is not None] for j in columns]
        pairs = [mean_and_std(values) if len(values) == len(matrices) else (None, None) for values in cells]
        mean[stage] = [a for a, _ in pairs]
        spread[stage] = [b for _, b in pairs]
    return mean, spread


def aggregate_metrics(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Each summary metric's mean over the seeds (null if any seed has none), its standard deviation under
    `std`, the seeds and each seed's values."""
    first = next(iter(per_seed.values()))
    out: dict[str, Any] = {"stages": first.get("stages"), "tasks": first.get("tasks")}
    std: dict[str, float | None] = {}
    for name in SUMMARY_METRICS:
        values = [m.get(name) for m in per_seed.values()]
        mean, spread = (
            mean_and_std([v for v in values if v is not None]) if None not in values else (None, None)
        )
        out[name] = None if mean is None else round(mean, 6)
        std[name] = None if spread is None else round(spread, 6)
    out["std"] = std
    out["seeds"] = list(per_seed)
    out["per_seed"] = {str(seed): {k: m.get(k) for k in SUMMARY_METRICS} for seed, m in per_seed.items()}
    return out


def write_seed_summary(out_dir: Path, seed_dirs: dict[int, Path], title: str) -> dict[str, Any]:
    """A method over its seeds (layout.AGGREGATE_FILES) from each seed's method folder: matrix.csv is the
    mean matrix, matrix_std.csv each cell's standard deviation, selection.csv the mean selection,
    metrics.json and metrics_published.json each metric's mean with `std`, `seeds` and `per_seed`, heatmap.png
    the mean, cost.json the cost of one seed's run (the mean over the seeds). Returns the metrics."""
    from modalprompt.scoring.plots import heatmap_png

    tasks, accuracy, selection = [], [], []
    per_seed, published, costs = {}, {}, {}
    for seed, folder in seed_dirs.items():
        tasks, matrix = read_matrix(Path(folder) / "matrix.csv")
        accuracy.append(matrix)
        selection.append(read_matrix(Path(folder) / "selection.csv")[1])
        per_seed[seed] = json.loads((Path(folder) / "metrics.json").read_text())
        published[seed] = json.loads((Path(folder) / "metrics_published.json").read_text())
        costs[seed] = json.loads((Path(folder) / layout.COST_FILE).read_text())
    mean, spread = _cellwise(accuracy)
    metrics = aggregate_metrics(per_seed)
    out = Path(out_dir)
    atomic_write_text(out / "matrix.csv", format_matrix(tasks, mean))
    atomic_write_text(out / "matrix_std.csv", format_matrix(tasks, spread))
    atomic_write_text(out / "selection.csv", format_matrix(tasks, _cellwise(selection)[0]))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    atomic_write_text(
        out / "metrics_published.json", json.dumps(aggregate_metrics(published), indent=1) + "\n"
    )
    atomic_write_bytes(
        out / "heatmap.png", heatmap_png(tasks, mean, f"{title} (mean of {len(seed_dirs)} seeds)")
    )
    atomic_write_text(out / layout.COST_FILE, json.dumps(mean_cost(costs), indent=1) + "\n")
    return metrics


# ------------------------------------------------------------------------------------- selection confusion


def confusion_counts(tasks: list[str], prediction_files: list[Path]) -> list[list[int]]:
    """counts[i][j]: samples of task i whose prompt ranked first was task j's (the last of `selected`, which
    is in ascending score order). One predictions file per task, in task order."""
    if len(prediction_files) != len(tasks):
        raise DataError(
            f"{len(prediction_files)} predictions files for {len(tasks)} tasks (one per task, in order)"
        )
    counts = [[0] * len(tasks) for _ in tasks]
    for row, path in enumerate(prediction_files):
        for line in Path(path).read_text().splitlines():
            selected = json.loads(line).get("selected") or []
            if selected and selected[-1] in tasks:
                counts[row][tasks.index(selected[-1])] += 1
    return counts


def write_confusion(out_dir: Path, tasks: list[str], prediction_files: list[Path], title: str) -> None:
    from modalprompt.scoring.plots import confusion_png

    counts = confusion_counts(tasks, prediction_files)
    table = [["true \\ selected", *tasks]] + [[t, *map(str, c)] for t, c in zip(tasks, counts, strict=True)]
    out = Path(out_dir)
    atomic_write_text(out / "selection_confusion.csv", "\n".join(",".join(r) for r in table) + "\n")
    atomic_write_bytes(out / "selection_confusion.png", confusion_png(tasks, counts, title))


# ------------------------------------------------------------------------------------- methods side by side


def comparison(results: Path, methods: list[str]) -> dict[str, dict[str, float | None]]:
    """Each method's summary metrics (metrics.SUMMARY_METRICS) from its metrics.json, in the given order
    (over seeds: their means)."""
    table = {}
    for method in methods:
        metrics = json.loads((layout.method_dir(results, method) / "metrics.json").read_text())
        table[method] = {k: metrics.get(k) for k in SUMMARY_METRICS}
    return table


def comparison_std(results: Path, methods: list[str]) -> dict[str, dict[str, float | None]] | None:
    """Each method's standard deviations over seeds, or None when the results are one run."""
    spreads = {}
    for method in methods:
        metrics = json.loads((layout.method_dir(results, method) / "metrics.json").read_text())
        if "std" not in metrics:
            return None
        spreads[method] = {k: metrics["std"].get(k) for k in SUMMARY_METRICS}
    return spreads


def accuracy_and_cost(
    results: Path, methods: list[str]
) -> dict[str, tuple[float | None, dict[str, Any] | None]]:
    """Each method's final average accuracy (`avg`) and total cost (cost.json's `total`; None: none
    recorded), from its folder (over seeds: the means)."""
    found = {}
    for method in methods:
        folder = layout.method_dir(results, method)
        metrics = json.loads((folder / "metrics.json").read_text())
        found[method] = (metrics.get("avg"), json.loads((folder / layout.COST_FILE).read_text())["total"])
    return found


def write_comparison(results: Path, methods: list[str], out_dir: Path, title: str) -> None:
    """forgetting.png (each task across stages, a line per method; over seeds, the mean with a band of one
    standard deviation), metrics.csv (over seeds, `<metric>_std` columns too) and accuracy_cost.png (each
    method's `avg` against its total device-hours) (layout.COMPARISON_FILES)."""
    from modalprompt.scoring.plots import accuracy_cost_png, forgetting_png

    matrices, spreads, tasks = {}, {}, []
    for method in methods:
        folder = layout.method_dir(results, method)
        tasks, matrices[method] = read_matrix(folder / "matrix.csv")
        if (folder / "matrix_std.csv").is_file():
            spreads[method] = _read_spread(folder / "matrix_std.csv")
    out = Path(out_dir)
    atomic_write_bytes(out / "forgetting.png", forgetting_png(tasks, matrices, title, spreads or None))
    table, stds = comparison(results, methods), comparison_std(results, methods)
    header = ["method", *SUMMARY_METRICS] + ([f"{k}_std" for k in SUMMARY_METRICS] if stds else [])
    rows = [header]
    for method, metrics in table.items():
        values = list(metrics.values()) + (list(stds[method].values()) if stds else [])
        rows.append([method, *("" if v is None else f"{v:.4f}" for v in values)])
    atomic_write_text(out / "metrics.csv", "\n".join(",".join(r) for r in rows) + "\n")
    atomic_write_bytes(out / "accuracy_cost.png", accuracy_cost_png(accuracy_and_cost(results, methods)))


def _read_spread(path: Path) -> Matrix:
    """A matrix of standard deviations (same layout as matrix.csv; read without the [0, 100] check)."""
    import csv
    import io

    rows = list(csv.reader(io.StringIO(Path(path).read_text())))
    return {int(r[0]): [float(c) if c.strip() else None for c in r[1:]] for r in rows[1:] if r}


# ------------------------------------------------------------------------------------- end of a run


def aligned_matrix(matrix_csv: Path) -> str:
    """matrix.csv as an aligned table: one row per stage, one column per task, one decimal, '.' if empty."""
    tasks, matrix = read_matrix(matrix_csv)
    cells = [["stage", *tasks]] + [
        [str(s), *("." if v is None else f"{v:.1f}" for v in matrix[s])] for s in sorted(matrix)
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells) + "\n"


def summary_text(
    results: Path, methods: list[str], tracking_uri: str, address: str = "http://127.0.0.1:5000"
) -> str:
    """What a finished `snakemake` prints: every method's matrix (over seeds: the mean), their metrics table
    (over seeds: mean +- standard deviation), and where to look (`address`: the MLflow UI's page to open). A
    method without results yet (a run asked for part of the DAG) is named, not shown."""
    lines = [""]
    unfinished = [m for m in methods if not (layout.method_dir(results, m) / "metrics.json").is_file()]
    if unfinished:
        lines.append(f"Not finished in {results} (a part of the DAG was run): {', '.join(unfinished)}")
        methods = [m for m in methods if m not in unfinished]
    stds = comparison_std(results, methods) if methods else None
    for method in methods:
        matrix = layout.method_dir(results, method) / "matrix.csv"
        over = ""
        if stds is not None:
            seeds = json.loads((matrix.parent / "metrics.json").read_text())["seeds"]
            over = f", mean over seeds {seeds}"
        lines.append(f"{method}: accuracy matrix (%){over}, {matrix}:\n{aligned_matrix(matrix)}")
    width = 15 if stds else 11
    lines.append(" ".join(f"{h.replace('_accuracy', ''):>{width}}" for h in ("method", *SUMMARY_METRICS)))
    for method, metrics in comparison(results, methods).items():
        values = []
        for name, v in metrics.items():
            spread = stds[method][name] if stds else None
            text = "-" if v is None else f"{v:.2f}" + ("" if spread is None else f"+-{spread:.2f}")
            values.append(f"{text:>{width}}")
        lines.append(" ".join([f"{method:>{width}}", *values]))
    if methods:
        folder = layout.comparison_dir(results)
        lines.append(f"\nMethods side by side: {folder / 'metrics.csv'}, {folder / 'forgetting.png'}")
    lines.append(
        f"\nBrowse the runs in MLflow (`make ui`, then open {address}):\n"
        f"  mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --host 127.0.0.1 --port 5000"
    )
    return "\n".join(lines)
