"""Answers that tasks share, set against forgetting (no torch).

Answer words shared across tasks make forgetting look smaller than it is (UCo-VQA, CVPR 2026): after
training a task whose answers are also an earlier task's, the model keeps giving those answers whatever
else it forgot. The answer overlap of cell (i, j) is the share (%) of task j's test answers that occur
among task i's training answers, both normalised as task j's scorer normalises answers
(scorers.normalise_answer). The forgetting of cell (i, j), i > j, is task j's best accuracy after stages
j..i-1 minus its accuracy after stage i; `overlap_against_forgetting` pairs the two over those cells and
gives their Pearson correlation.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from modalprompt.data.validation import load_records
from modalprompt.errors import DataError
from modalprompt.files import atomic_write_bytes, atomic_write_text
from modalprompt.scoring.metrics import Matrix, read_matrix
from modalprompt.scoring.scorers import normalise_answer

CORNER = "train_answers_of"  # answer_overlap.csv's first header cell: its rows are the training answers


def training_answers(train_file: Path) -> list[str]:
    """Every answer (gpt turn) of a CoIN train.json."""
    records = load_records(Path(train_file))
    return [turn["value"] for record in records for turn in record.get("conversations", [])
            if turn.get("from") == "gpt"]  # fmt: skip


def _reference_answer(record: dict[str, Any]) -> str:
    """A test question's answer: its `answer`, or the most common of its `answers` (VQA's ten)."""
    answer = record.get("answer")
    if isinstance(answer, str):
        return answer
    answers = record.get("answers")
    if isinstance(answers, list) and answers:
        return Counter(answers).most_common(1)[0][0]
    return json.dumps(answer)  # a box: as written


def eval_answers(eval_file: Path, max_samples: int | None = None) -> list[str]:
    """The answer of each test question the evaluation scores (the first `max_samples`; None: all)."""
    records = load_records(Path(eval_file))
    if not isinstance(records, list) or not records:
        raise DataError(f"{eval_file}: expected a non-empty JSON list of test records")
    return [_reference_answer(record) for record in records[:max_samples]]


def answer_overlap(
    train: dict[str, list[str]], test: dict[str, list[str]], scorers: dict[str, str]
) -> list[list[float]]:
    """overlap[i][j] (%): the share of task j's test answers that occur among task i's training answers,
    both normalised by task j's scorer; tasks in the order of `train`."""
    tasks = list(train)
    # each distinct training answer normalised once per scorer (a CoIN task repeats "yes" thousands of times)
    known = {(i, scorer): {normalise_answer(scorer, a) for a in set(train[i])}
             for i in tasks for scorer in set(scorers.values())}  # fmt: skip
    tested = {j: [normalise_answer(scorers[j], a) for a in test[j]] for j in tasks}
    return [[100.0 * sum(a in known[i, scorers[j]] for a in tested[j]) / len(tested[j]) for j in tasks]
            for i in tasks]  # fmt: skip


def forgetting_cells(matrix: Matrix) -> dict[tuple[int, int], float]:
    """(i, j) -> the forgetting of task j after stage i (1-based, i > j): its best accuracy after stages
    j..i-1 minus its accuracy after stage i; only cells whose accuracies were all evaluated."""
    stages = sorted(s for s in matrix if s >= 1)
    cells = {}
    for i in stages:
        for j in range(1, i):
            earlier = [matrix.get(k, [None] * j)[j - 1] for k in range(j, i)]
            now = matrix[i][j - 1]
            if now is not None and None not in earlier:
                cells[(i, j)] = max(earlier) - now
    return cells


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's correlation coefficient; None for fewer than two points or when either has no spread."""
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:
        return None


def overlap_against_forgetting(
    tasks: list[str], overlap: list[list[float]], matrix: Matrix
) -> dict[str, Any]:
    """Each cell (i, j), i > j, with its answer overlap and forgetting, and their Pearson correlation."""
    forgetting = forgetting_cells(matrix)
    cells = [{"stage": i, "trained": tasks[i - 1], "tested": tasks[j - 1], "overlap": overlap[i - 1][j - 1],
              "forgetting": value} for (i, j), value in sorted(forgetting.items())]  # fmt: skip
    r = pearson([c["overlap"] for c in cells], [c["forgetting"] for c in cells])
    return {"tasks": tasks, "correlation": "pearson", "pearson_r": r, "cells": cells}


# ------------------------------------------------------------------------------------------ files


def format_overlap(tasks: list[str], overlap: list[list[float]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([CORNER, *tasks])
    for task, row in zip(tasks, overlap, strict=True):
        writer.writerow([task, *(f"{v:.4f}" for v in row)])
    return out.getvalue()


def read_overlap(path: Path) -> tuple[list[str], list[list[float]]]:
    rows = [r for r in csv.reader(io.StringIO(Path(path).read_text())) if r]
    if not rows or rows[0][0] != CORNER or [r[0] for r in rows[1:]] != rows[0][1:]:
        raise DataError(f"{path}: expected a header {CORNER},<tasks> and one row per task in the same order")
    return rows[0][1:], [[float(v) for v in r[1:]] for r in rows[1:]]


def write_answer_overlap(
    out: Path,
    tasks: list[str],
    train_files: list[Path],
    eval_files: list[Path],
    scorers: list[str],
    max_samples: list[int | None],
) -> list[list[float]]:
    """answer_overlap.csv of tasks given in training order, each with its files, scorer and the number of
    test questions its evaluation scores (None: all). Returns the overlap."""
    if not len(tasks) == len(train_files) == len(eval_files) == len(scorers) == len(max_samples):
        raise DataError("give one train file, eval file, scorer and max-samples per task, in task order")
    train = {t: training_answers(f) for t, f in zip(tasks, train_files, strict=True)}
    test = {t: eval_answers(f, n) for t, f, n in zip(tasks, eval_files, max_samples, strict=True)}
    overlap = answer_overlap(train, test, dict(zip(tasks, scorers, strict=True)))
    atomic_write_text(Path(out), format_overlap(tasks, overlap))
    return overlap


def write_overlap_forgetting(
    out_dir: Path, overlap_csv: Path, matrix_csv: Path, title: str
) -> dict[str, Any]:
    """A method's answer_overlap.png (the overlap beside its cells' forgetting) and overlap_forgetting.json
    (layout.OVERLAP_FILES) from answer_overlap.csv and its matrix.csv. Returns the JSON."""
    from modalprompt.scoring.plots import overlap_png

    tasks, overlap = read_overlap(overlap_csv)
    matrix_tasks, matrix = read_matrix(Path(matrix_csv))
    if matrix_tasks != tasks:
        raise DataError(f"{matrix_csv}: tasks {matrix_tasks}, but {overlap_csv} has {tasks}")
    result = overlap_against_forgetting(tasks, overlap, matrix)
    points = [(f"{c['tested']} after {c['stage']}", c["overlap"], c["forgetting"]) for c in result["cells"]]
    out = Path(out_dir)
    atomic_write_bytes(
        out / "answer_overlap.png", overlap_png(tasks, overlap, points, result["pearson_r"], title)
    )
    atomic_write_text(out / "overlap_forgetting.json", json.dumps(result, indent=1) + "\n")
    return result
