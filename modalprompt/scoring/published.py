"""A finished run beside a published row: the last row of the accuracy matrix and the metrics, as we score
them and as the published evaluation code scores them, next to a paper's numbers. No torch here.

A published row is a JSON file (docs/published/*.json):
`{"method", "source", "metric", "final": {task: accuracy %}, "metrics": {"avg": ...}, ...}`; its task names
are the run's (config.yaml's `tasks[].name`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modalprompt.errors import DataError
from modalprompt.scoring.metrics import SUMMARY_METRICS, read_matrix


@dataclass
class Published:
    path: Path
    method: str
    source: str
    final: dict[str, float]  # task -> final accuracy in percent
    metrics: dict[str, float]  # e.g. avg


def load_published(path: Path) -> Published:
    if not path.is_file():
        raise DataError(
            f"{path}: published row not found (e.g. docs/published/modalprompt-coin-llava-1.5-7b.json)"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    final = raw.get("final") if isinstance(raw, dict) else None
    if not isinstance(final, dict) or not final or not all(_is_percent(v) for v in final.values()):
        raise DataError(f"{path}: field 'final' must map each task name to its final accuracy in percent")
    metrics = raw.get("metrics", {})
    if not isinstance(metrics, dict) or not all(_is_percent(v, signed=True) for v in metrics.values()):
        raise DataError(f"{path}: field 'metrics' must map metric names (avg, ...) to numbers")
    return Published(path, str(raw.get("method", "published")), str(raw.get("source", "")), final, metrics)


def _is_percent(value: Any, signed: bool = False) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and (signed or 0.0 <= value <= 100.0)


@dataclass
class Comparison:
    tasks: list[str]
    stage: int
    final: dict[
        str, tuple[float | None, float | None, float | None]
    ]  # task -> ours, ours as published, paper
    metrics: dict[str, tuple[float | None, float | None, float | None]]


def compare_run(run: Path, published: Published) -> Comparison:
    """`run`: a method's results folder (matrix.csv, metrics.json, matrix_published.csv,
    metrics_published.json), finished: its last stage is its last task."""
    tasks, ours = read_matrix(run / "matrix.csv")
    _, as_published = read_matrix(_needed(run / "matrix_published.csv"))
    stage = max(ours)
    if stage != len(tasks):
        raise DataError(
            f"{run / 'matrix.csv'}: the last row is stage {stage} of {len(tasks)}: the published row is the final "
            "accuracy after the last stage; finish the run (snakemake) first"
        )
    unknown = [t for t in published.final if t not in tasks]
    if unknown:
        raise DataError(
            f"{published.path}: task(s) {unknown} are not in {run / 'matrix.csv'} (tasks: {tasks}): name them "
            "as the run's config does"
        )
    last, last_published = (
        dict(zip(tasks, ours[stage], strict=True)),
        dict(zip(tasks, as_published[stage], strict=True)),
    )
    final = {t: (last[t], last_published[t], published.final.get(t)) for t in tasks}
    metrics_ours = json.loads(_needed(run / "metrics.json").read_text())
    metrics_published = json.loads(_needed(run / "metrics_published.json").read_text())
    names = [*SUMMARY_METRICS, *(m for m in published.metrics if m not in SUMMARY_METRICS)]
    metrics = {m: (metrics_ours.get(m), metrics_published.get(m), published.metrics.get(m)) for m in names}
    return Comparison(tasks, stage, final, metrics)


def _needed(path: Path) -> Path:
    if not path.is_file():
        raise DataError(
            f"{path} not found: the run's matrix step writes it (snakemake, or modalprompt matrix)"
        )
    return path


def format_comparison(comparison: Comparison, published: Published) -> str:
    """An aligned table: one row per task (final accuracy), then the metrics."""
    header = ["", "ours", "ours, CoIN's scoring", f"{published.method} (published)"]
    rows = [[task, *map(_cell, values)] for task, values in comparison.final.items()]
    rows.append(["", "", "", ""])
    rows += [[name, *map(_cell, values)] for name, values in comparison.metrics.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]  # fmt: skip
    note = (
        f"final accuracy (%) after stage {comparison.stage}; published: {published.source} ({published.path})"
    )
    return "\n".join([note, *(line.rstrip() for line in lines)]) + "\n"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
