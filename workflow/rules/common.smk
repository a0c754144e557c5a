# Settings and paths shared by the rules. The logic lives in the package (modalprompt.config, .layout).
import json
import shlex
from pathlib import Path

from modalprompt import layout
from modalprompt.metrics import SUMMARY_METRICS
from modalprompt.config import (
    TRAINED_BY,
    ConfigError,
    Generator,
    ModelSource,
    Strategy,
    eval_job,
    experiment_from_dict,
    job_to_json,
    resolve_paths,
    train_job,
)
from modalprompt.tracking import unreachable

CONFIG_FILE = Path((list(workflow.overwrite_configfiles) or ["config.yaml"])[-1]).resolve()
EXP = resolve_paths(experiment_from_dict(dict(config), str(CONFIG_FILE)), CONFIG_FILE.parent)
RESULTS = EXP.results_dir
METHODS = [str(m) for m in dict.fromkeys(EXP.pipeline.methods)]  # the methods run side by side
# methods whose stages are trained: those listed, and modalprompt when the oracle needs its prompts
TRAINED = sorted({str(TRAINED_BY[Strategy(m)]) for m in METHODS} - {"None"})
TASKS = [task.name for task in EXP.tasks]
STAGES = list(range(1, len(TASKS) + 1))
TRACKING_FILE = str(RESULTS / "tracking.json")
COMPARISON_DIR = RESULTS / "comparison"
# methods whose prompts are selected per sample: they get a selection confusion matrix
SELECTING = [m for m in METHODS if m in (Strategy.MODALPROMPT, Strategy.ORACLE)]
REPORT_VIEWS = [str(RESULTS / m / name) for m in SELECTING for name in layout.CONFUSION_FILES] + (
    [str(COMPARISON_DIR / name) for name in layout.COMPARISON_FILES] if METHODS else []
)


def check_tracking():
    """An http tracking server that does not answer stops the DAG before any job (config error). A
    tracking.json left `pending` by a run during which the server was down is removed, so that this run's
    `track` job catches up."""
    reason = unreachable(EXP.tracking_uri)
    if reason:
        raise ConfigError(
            f"{CONFIG_FILE}: tracking.uri = {EXP.tracking_uri!r} does not answer ({reason}): start the MLflow "
            "server, or set tracking.uri: null to record into the SQLite store under the results folder"
        )
    done = Path(TRACKING_FILE)
    if done.is_file() and json.loads(done.read_text() or "{}").get("pending"):
        done.unlink()


if workflow.is_main_process:  # cluster jobs parse this file again: MLflow's state must not fail them
    check_tracking()
# Jobs run `modalprompt` from the environment Snakemake runs in (PATH); envs/ pins that environment.
CONDA_ENV = "../../envs/modalprompt.yaml"
BASE_FILES = [f"{EXP.model.llava}/config.json", f"{EXP.model.clip}/config.json"]


wildcard_constraints:
    method="|".join(m for m in Strategy),
    task="|".join(TASKS) or "no-tasks",
    stage=r"\d+",


def _check_inputs_exist():
    """Clear messages at DAG build time for files no rule makes."""
    missing = []
    if EXP.model.source == ModelSource.HF:
        missing += [(f"model.{key}", f) for key, f in zip(("llava", "clip"), BASE_FILES) if not Path(f).is_file()]
    if EXP.model.source == ModelSource.ORIGINAL and not Path(EXP.model.original_llava, "config.json").is_file():
        missing.append(("model.original_llava", f"{EXP.model.original_llava}/config.json"))
    if EXP.pipeline.generate_data == Generator.NONE:
        for i, task in enumerate(EXP.tasks):
            missing += [(f"tasks[{i}].{key}", getattr(task, key)) for key in ("train_file", "eval_file", "answers_file")
                        if getattr(task, key) and not Path(getattr(task, key)).is_file()]
    if missing:
        lines = "\n".join(f"  {key}: {path} does not exist" for key, path in missing)
        raise WorkflowError(f"{CONFIG_FILE}: files missing before the pipeline can start:\n{lines}")


_check_inputs_exist()


def task_of(stage):
    return EXP.tasks[int(stage) - 1]


def checkpoint_dirs(method, last_stage):
    """Checkpoint folders of stages 1..last_stage, in order, of the method that trains `method`'s prompts."""
    trainer = TRAINED_BY[Strategy(method)]
    if trainer is None or int(last_stage) == 0:
        return []
    return [str(layout.checkpoint_dir(RESULTS, str(trainer), s)) for s in range(1, int(last_stage) + 1)]


def folders_of(files):
    """The folders of the given files, first-seen order (stage order for checkpoint files)."""
    return list(dict.fromkeys(str(Path(f).parent) for f in files))


def checkpoint_files(method, last_stage):
    """What training stage s + 1 and evaluations after stage s depend on: the chain of stage files."""
    return [f"{d}/{name}" for d in checkpoint_dirs(method, last_stage) for name in ("stage.json", "task.safetensors")]


def eval_strategy(method, stage):
    """Row 0 is the base model without prompts, whichever method's matrix it belongs to."""
    return Strategy.ZERO_SHOT if int(stage) == 0 else Strategy(method)


def score_files(method):
    """The cells of `method`'s matrix: every (stage s, task j <= s); with pipeline.zero_shot also row 0
    (evaluated once, under zero_shot/) and the (s, s + 1) cells. zero_shot itself evaluates row 0 only."""
    cells = layout.evaluation_cells(TASKS, EXP.pipeline.zero_shot or method == Strategy.ZERO_SHOT)
    if method == Strategy.ZERO_SHOT:
        cells = [(s, task) for s, task in cells if s == 0]
    return [str(layout.score_file(RESULTS, layout.cell_method(method, s), s, task)) for s, task in cells]


def summary_files(method):
    return [str(layout.method_dir(RESULTS, method) / name) for name in layout.SUMMARY_FILES]


def slurm_resources(kind):
    """Per-job resources from config.yaml (`resources.<kind>`), named as the Slurm plugin reads them."""
    res = getattr(EXP.resources, kind)
    out = {"mem_mb": res.mem_mb, "runtime": res.runtime, "cpus_per_task": res.cpus}
    if res.gpus:
        out["gpu"] = res.gpus
    return out


def train_resources():
    """Training jobs also carry their mid-stage save interval, their engine and, on Slurm, a warning signal
    before the time limit: resources, not params, so that changing them reruns nothing."""
    out = {**slurm_resources("train"), "save_every_steps": EXP.preemption.save_every_steps}
    # the engine changes how a stage runs, not what it learns: a resource too
    out["zero_stage"] = "none" if EXP.engine.zero_stage is None else str(EXP.engine.zero_stage)
    out["offload"] = "yes" if EXP.engine.offload else "no"
    if EXP.preemption.signal_seconds:  # at most half the time limit: a short job still trains first
        lead = min(EXP.preemption.signal_seconds, EXP.resources.train.runtime * 30)
        out["slurm_extra"] = f"--signal=USR1@{lead}"
    return out


def train_launcher():
    """One process per GPU: torchrun on the job's node when a training job has several GPUs."""
    gpus = EXP.resources.train.gpus
    if gpus <= 1:
        return ["modalprompt"]
    return ["python", "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", "-m", "modalprompt"]


def aligned(matrix_csv):
    """matrix.csv as an aligned table: one row per stage, one column per task, one decimal."""
    rows = [line.split(",") for line in Path(matrix_csv).read_text().splitlines()]
    cells = [rows[0]] + [[r[0]] + [f"{float(v):.1f}" if v else "." for v in r[1:]] for r in rows[1:]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells) + "\n"


def print_summary():
    print()
    for method in METHODS:
        folder = layout.method_dir(RESULTS, method)
        print(f"{method}: accuracy matrix (%), {folder / 'matrix.csv'}:\n{aligned(folder / 'matrix.csv')}")
    print(" ".join(f"{h.replace('_accuracy', ''):>11}" for h in ("method", *SUMMARY_METRICS)))
    for method in METHODS:
        folder = layout.method_dir(RESULTS, method)
        m = json.loads((folder / "metrics.json").read_text())
        values = [m.get(k) for k in SUMMARY_METRICS]
        print(" ".join([f"{method:>11}"] + [f"{v:>11.2f}" if v is not None else f"{'-':>11}" for v in values]))
    if METHODS:
        print(f"\nMethods side by side: {COMPARISON_DIR / 'metrics.csv'}, {COMPARISON_DIR / 'forgetting.png'}")
    print(f"\nBrowse the runs in MLflow (`make ui`, then open http://127.0.0.1:5000):\n"
          f"  mlflow ui --backend-store-uri {shlex.quote(EXP.tracking_uri)} --host 127.0.0.1 --port 5000")
