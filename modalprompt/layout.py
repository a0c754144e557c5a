"""Where each output of an experiment lives. The Snakemake rules and `modalprompt run` both use these,
so the files, the contract between jobs, have one definition.

    <results>/<experiment>/<method>/stage-<s>/checkpoint/{task.safetensors, stage.json}
    <results>/<experiment>/<method>/stage-<s>/history.jsonl         per-step training metrics
    <results>/<experiment>/<method>/stage-<s>/resume/               mid-stage state while it trains
    <results>/<experiment>/<method>/stage-<s>/eval/<task>.jsonl      predictions (stage 0: no prompts)
    <results>/<experiment>/<method>/stage-<s>/eval/<task>.cost.json  what the evaluation cost
    <results>/<experiment>/<method>/stage-<s>/eval/<task>.score.json
    <results>/<experiment>/<method>/{matrix.csv, selection.csv, metrics.json, heatmap.png, cost.json}
    <results>/<experiment>/<method>/{matrix_published.csv, metrics_published.json}  as the published code scores
    <results>/<experiment>/<method>/selection_confusion.{csv,png}   (methods that select prompts)
    <results>/<experiment>/<method>/{answer_overlap.png, overlap_forgetting.json}  overlap against forgetting
    <results>/<experiment>/comparison/{forgetting.png, metrics.csv, accuracy_cost.png}  (all methods)
    <results>/<experiment>/answer_overlap.csv                       the tasks' shared answers
    <results>/<experiment>/{tracking.json, mlflow.db, logs/, benchmarks/}

With seeds as a dimension of the DAG (pipeline.seeds), each seed's run has the layout above under
<results>/<experiment>/seed-<s>/ (its own logs/ and benchmarks/ too), row 0 (the base model, which no seed
changes) is evaluated once under the first seed's zero_shot/, and each method's results over the seeds sit
in <results>/<experiment>/<method>/ (AGGREGATE_FILES: the mean matrix, its standard deviation, metrics as
mean and standard deviation); comparison/, tracking.json and mlflow.db stay in <results>/<experiment>/.

Functions take the stage and method as values or as Snakemake wildcards ("{stage}", "{method}"): the rules
build their outputs here too.
"""

from __future__ import annotations

from pathlib import Path

TENSORS_FILE = "task.safetensors"  # a stage checkpoint's trained tensors
META_FILE = "stage.json"  # and its metadata, written last
BASE_METHOD = "zero_shot"  # row 0 (the base model without prompts) is evaluated once, under this method


def run_dir(results: Path, seed: int | str | None) -> Path:
    """The folder of one seed's run: <results>/<experiment>/seed-<s>/, or the experiment's folder itself
    without pipeline.seeds. `seed` may be a Snakemake wildcard ("{seed}")."""
    return Path(results) if seed is None else Path(results) / f"seed-{seed}"


def cell_seed(seed: int | None, seeds: list[int] | None, stage: int) -> int | None:
    """Whose run holds cell (stage, task) of seed `seed`'s matrix: row 0 is evaluated once, in the first
    seed's run (None without seeds)."""
    return seeds[0] if seeds and int(stage) == 0 else seed


def cell_method(method: str, stage: int) -> str:
    """Whose folder holds the cell (stage, task) of `method`'s matrix: row 0 is shared by all methods."""
    return BASE_METHOD if int(stage) == 0 else method


def stage_dir(results: Path, method: str, stage: int) -> Path:
    return Path(results) / method / f"stage-{stage}"


def checkpoint_dir(results: Path, method: str, stage: int) -> Path:
    return stage_dir(results, method, stage) / "checkpoint"


def checkpoint_files(results: Path, method: str, stage: int) -> list[Path]:
    """The two files of a stage checkpoint, metadata first."""
    folder = checkpoint_dir(results, method, stage)
    return [folder / META_FILE, folder / TENSORS_FILE]


def history_file(results: Path, method: str, stage: int) -> Path:
    return stage_dir(results, method, stage) / "history.jsonl"


def predictions_file(results: Path, method: str, stage: int, task: str) -> Path:
    return stage_dir(results, method, stage) / "eval" / f"{task}.jsonl"


def score_file(results: Path, method: str, stage: int, task: str) -> Path:
    return stage_dir(results, method, stage) / "eval" / f"{task}.score.json"


def cost_file_of(predictions: Path) -> Path:
    """What an evaluation cost, beside its predictions: eval/<task>.cost.json."""
    return Path(predictions).with_suffix(".cost.json")


def eval_cost_file(results: Path, method: str, stage: int, task: str) -> Path:
    return cost_file_of(predictions_file(results, method, stage, task))


def evaluation_cells(tasks: list[str], zero_shot: bool) -> list[tuple[int, str]]:
    """(stage, task) pairs to evaluate: every task seen so far after each stage; with `zero_shot`, also the
    base model on every task (row 0) and each stage on the next task, the cells forward transfer needs."""
    cells = [(s, task) for s in range(1, len(tasks) + 1) for task in tasks[:s]]
    if zero_shot:
        cells = [(0, task) for task in tasks] + cells + [(s, tasks[s]) for s in range(1, len(tasks))]
    return cells


def method_dir(results: Path, method: str) -> Path:
    return Path(results) / method


def resume_dir(results: Path, method: str, stage: int) -> Path:
    """A training stage's mid-stage state: not an output of the stage, so a stopped attempt keeps it."""
    return stage_dir(results, method, stage) / "resume"


def comparison_dir(results: Path) -> Path:
    return Path(results) / "comparison"


def log_file(results: Path, method: str | None, name: str) -> Path:
    """A job's log: <results>/logs/[<method>/]<name>.log"""
    return Path(results) / "logs" / (method or "") / f"{name}.log"


def benchmark_file(results: Path, method: str | None, name: str) -> Path:
    """A job's Snakemake benchmark (time, memory): <results>/benchmarks/[<method>/]<name>.tsv"""
    return Path(results) / "benchmarks" / (method or "") / f"{name}.tsv"


def tracking_file(results: Path) -> Path:
    return Path(results) / "tracking.json"


# the same matrix and metrics with every cell scored as the published evaluation code scores it (bugs included)
PUBLISHED_FILES = ("matrix_published.csv", "metrics_published.json")
COST_FILE = "cost.json"  # a method's cost per stage and in all (modalprompt/cost.py)
SUMMARY_FILES = ("matrix.csv", "selection.csv", "metrics.json", "heatmap.png", *PUBLISHED_FILES, COST_FILE)
CONFUSION_FILES = ("selection_confusion.csv", "selection_confusion.png")  # methods that select prompts
# <results>/<experiment>/comparison/: all methods
COMPARISON_FILES = ("forgetting.png", "metrics.csv", "accuracy_cost.png")
# <results>/<experiment>/<method>/ with pipeline.seeds: the method over its seeds (the mean matrix is matrix.csv)
AGGREGATE_FILES = ("matrix.csv", "matrix_std.csv", "selection.csv", "metrics.json", "metrics_published.json",
                   "heatmap.png", COST_FILE)  # fmt: skip
# the tasks' shared answers (<results>/<experiment>/), and per method set against its forgetting (the final
# matrix's folder)
ANSWER_OVERLAP_FILE = "answer_overlap.csv"
OVERLAP_FILES = ("answer_overlap.png", "overlap_forgetting.json")
