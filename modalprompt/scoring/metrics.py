"""Continual-learning metrics of an accuracy matrix (benchmark.md). No torch here.

A[i][j] is the accuracy in percent on task j after stage i (tasks and stages 1..T in training order);
row 0, when present, is the base model without prompts. The matrix CSV has a `stage` column and one
column per task in training order; empty cells were not evaluated.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from modalprompt.errors import DataError

Matrix = dict[int, list[float | None]]  # stage -> accuracy per task column (None = not evaluated)


def read_matrix(path: Path) -> tuple[list[str], Matrix]:
    if not path.is_file():
        raise DataError(f"{path}: matrix file not found")
    rows = list(csv.reader(io.StringIO(path.read_text())))
    if not rows or not rows[0] or rows[0][0] != "stage":
        raise DataError(
            f"{path}: the first column must be 'stage', then one column per task in training order"
        )
    tasks, matrix = rows[0][1:], {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(tasks) + 1:
            raise DataError(f"{path} line {line_no}: {len(row)} cells, expected {len(tasks) + 1}")
        try:
            stage = int(row[0])
            values = [float(cell) if cell.strip() else None for cell in row[1:]]
        except ValueError as err:
            raise DataError(f"{path} line {line_no}: {err}") from err
        if stage in matrix:
            raise DataError(f"{path} line {line_no}: stage {stage} appears twice")
        if any(v is not None and not (0.0 <= v <= 100.0) for v in values):
            raise DataError(f"{path} line {line_no}: accuracies must be percentages in [0, 100]")
        matrix[stage] = values
    return tasks, matrix


def format_matrix(tasks: list[str], matrix: Matrix) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["stage", *tasks])
    for stage in sorted(matrix):
        writer.writerow([stage, *("" if v is None else f"{v:.4f}" for v in matrix[stage])])
    return out.getvalue()


# The names every method's metrics.json, MLflow summary run and comparison table share.
SUMMARY_METRICS = ("avg", "mft", "maa", "bwt", "bwt_coin", "forgetting", "fwt", "selection_accuracy")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def compute_metrics(tasks: list[str], matrix: Matrix) -> dict[str, Any]:
    """avg, mft, maa, bwt, bwt_coin, forgetting, fwt in percent points over stages 1..T, T = last stage.

    bwt and forgetting are null for T = 1; fwt is null without row 0 or without the A[j-1][j] cells."""
    stages = sorted(s for s in matrix if s >= 1)
    if not stages:
        raise DataError("the matrix has no stage >= 1")
    T = stages[-1]
    if stages != list(range(1, T + 1)):
        raise DataError(f"stages {stages}: every stage from 1 to {T} needs a row")
    if len(tasks) < T:
        raise DataError(f"stage {T} needs at least {T} task columns, the matrix has {len(tasks)}")

    def A(i: int, j: int) -> float:  # 1-based task j
        value = matrix[i][j - 1]
        if value is None:
            raise DataError(f"cell (stage {i}, task {tasks[j - 1]}) is empty but the metrics need it")
        return value

    result: dict[str, Any] = {
        "stages": T,
        "tasks": tasks[:T],
        "avg": _mean([A(T, j) for j in range(1, T + 1)]),
        "mft": _mean([A(j, j) for j in range(1, T + 1)]),
        "maa": _mean([_mean([A(i, j) for j in range(1, i + 1)]) for i in range(1, T + 1)]),
        "bwt": None,
        "bwt_coin": sum(A(T, j) - A(j, j) for j in range(1, T)) / T,  # CoIN's code divides by T
        "forgetting": None,
        "fwt": None,
    }
    if T > 1:
        result["bwt"] = _mean([A(T, j) - A(j, j) for j in range(1, T)])
        result["forgetting"] = _mean([max(A(i, j) for i in range(j, T)) - A(T, j) for j in range(1, T)])
        zero = matrix.get(0)
        cells = [(matrix[j - 1][j - 1], None if zero is None else zero[j - 1]) for j in range(2, T + 1)]
        if all(before is not None and base is not None for before, base in cells):  # A[j-1][j] and A[0][j]
            result["fwt"] = _mean([before - base for before, base in cells])
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in result.items()}


def selection_accuracy(top_selected: list[str], task: str) -> float:
    """Percent of samples of `task` whose most similar selected prompt is the task's own."""
    if not top_selected:
        raise DataError(f"no selections for task {task!r}")
    return 100.0 * sum(name == task for name in top_selected) / len(top_selected)
