"""Where each output of an experiment lives. The Snakemake rules and `modalprompt run` both use these,
so the files, the contract between jobs, have one definition.

    <results>/<experiment>/<method>/stage-<s>/checkpoint/{task.safetensors, stage.json}
    <results>/<experiment>/<method>/stage-<s>/history.jsonl         per-step training metrics
    <results>/<experiment>/<method>/stage-<s>/eval/<task>.jsonl      predictions (stage 0: no prompts)
    <results>/<experiment>/<method>/stage-<s>/eval/<task>.score.json
    <results>/<experiment>/<method>/{matrix.csv, selection.csv, metrics.json, heatmap.png}
    <results>/<experiment>/<method>/{matrix_published.csv, metrics_published.json}  as the published code scores
    <results>/<experiment>/<method>/selection_confusion.{csv,png}   (methods that select prompts)
    <results>/<experiment>/comparison/{forgetting.png, metrics.csv}  (all methods side by side)
    <results>/<experiment>/{tracking.json, mlflow.db, logs/, benchmarks/}
"""

from __future__ import annotations

from pathlib import Path

METHOD = "modalprompt"
BASE_METHOD = "zero_shot"  # row 0 (the base model without prompts) is evaluated once, under this method


def cell_method(method: str, stage: int) -> str:
    """Whose folder holds the cell (stage, task) of `method`'s matrix: row 0 is shared by all methods."""
    return BASE_METHOD if int(stage) == 0 else method


def stage_dir(results: Path, method: str, stage: int) -> Path:
    return Path(results) / method / f"stage-{stage}"


def checkpoint_dir(results: Path, method: str, stage: int) -> Path:
    return stage_dir(results, method, stage) / "checkpoint"


def history_file(results: Path, method: str, stage: int) -> Path:
    return stage_dir(results, method, stage) / "history.jsonl"


def predictions_file(results: Path, method: str, stage: int, task: str) -> Path:
    return stage_dir(results, method, stage) / "eval" / f"{task}.jsonl"


def score_file(results: Path, method: str, stage: int, task: str) -> Path:
    return stage_dir(results, method, stage) / "eval" / f"{task}.score.json"


def evaluation_cells(tasks: list[str], zero_shot: bool) -> list[tuple[int, str]]:
    """(stage, task) pairs to evaluate: every task seen so far after each stage; with `zero_shot`, also the
    base model on every task (row 0) and each stage on the next task, the cells forward transfer needs."""
    cells = [(s, task) for s in range(1, len(tasks) + 1) for task in tasks[:s]]
    if zero_shot:
        cells = [(0, task) for task in tasks] + cells + [(s, tasks[s]) for s in range(1, len(tasks))]
    return cells


def method_dir(results: Path, method: str) -> Path:
    return Path(results) / method


# the same matrix and metrics with every cell scored as the published evaluation code scores it (bugs included)
PUBLISHED_FILES = ("matrix_published.csv", "metrics_published.json")
SUMMARY_FILES = ("matrix.csv", "selection.csv", "metrics.json", "heatmap.png", *PUBLISHED_FILES)
CONFUSION_FILES = ("selection_confusion.csv", "selection_confusion.png")  # methods that select prompts
COMPARISON_FILES = ("forgetting.png", "metrics.csv")  # <results>/<experiment>/comparison/: all methods
