# Settings and paths shared by the rules. The logic lives in the package: modalprompt.config (settings and
# each job's rerun key), modalprompt.methods (what each method trains and which cells it needs),
# modalprompt.layout (every output path). Nothing here imports torch, transformers or mlflow.
import json
from pathlib import Path

from modalprompt import layout, methods
from modalprompt.config import (
    ConfigError,
    Generator,
    ModelSource,
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
METHODS = [methods.get(m) for m in dict.fromkeys(EXP.pipeline.methods)]  # run side by side
METHOD_NAMES = [m.name for m in METHODS]
# methods whose stages are trained: whose checkpoints the listed methods evaluate
TRAINED = sorted({m.prompts_of for m in METHODS} - {None})
SELECTING = [m.name for m in METHODS if m.selects]  # they get a selection confusion matrix
TASKS = [task.name for task in EXP.tasks]
STAGES = list(range(1, len(TASKS) + 1))
TRACKING_FILE = str(layout.tracking_file(RESULTS))
COMPARISON_DIR = layout.comparison_dir(RESULTS)
REPORT_VIEWS = [
    str(layout.method_dir(RESULTS, m) / name) for m in SELECTING for name in layout.CONFUSION_FILES
]
REPORT_VIEWS += [str(COMPARISON_DIR / name) for name in layout.COMPARISON_FILES] if METHODS else []


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
    method="|".join(methods.REGISTRY),
    task="|".join(TASKS) or "no-tasks",
    stage=r"\d+",


def _check_inputs_exist():
    """Clear messages at DAG build time for files no rule makes."""
    missing = []
    if EXP.model.source == ModelSource.HF:
        missing += [
            (f"model.{key}", f) for key, f in zip(("llava", "clip"), BASE_FILES) if not Path(f).is_file()
        ]
    if (
        EXP.model.source == ModelSource.ORIGINAL
        and not Path(EXP.model.original_llava, "config.json").is_file()
    ):
        missing.append(("model.original_llava", f"{EXP.model.original_llava}/config.json"))
    if EXP.pipeline.generate_data == Generator.NONE:
        for i, task in enumerate(EXP.tasks):
            missing += [
                (f"tasks[{i}].{key}", getattr(task, key))
                for key in ("train_file", "eval_file", "answers_file")
                if getattr(task, key) and not Path(getattr(task, key)).is_file()
            ]
    if missing:
        lines = "\n".join(f"  {key}: {path} does not exist" for key, path in missing)
        raise WorkflowError(f"{CONFIG_FILE}: files missing before the pipeline can start:\n{lines}")


_check_inputs_exist()


def task_of(stage):
    return EXP.tasks[int(stage) - 1]


def checkpoint_files(method, last_stage):
    """What an evaluation of `method` after stage s (or training stage s + 1) depends on: the stage files of
    stages 1..s of the method whose prompts it uses (none for a method without prompts, or at stage 0)."""
    trainer = methods.get(method).prompts_of
    if trainer is None:
        return []
    return [
        str(f) for s in range(1, int(last_stage) + 1) for f in layout.checkpoint_files(RESULTS, trainer, s)
    ]


def folders_of(files):
    """The folders of the given files, first-seen order (stage order for checkpoint files)."""
    return list(dict.fromkeys(str(Path(f).parent) for f in files))


def cell_method(method, stage):
    """Row 0 is the base model without prompts, whichever method's matrix it belongs to."""
    return layout.cell_method(method, stage)


def score_files(method):
    """The score files of `method`'s matrix: the cells it needs (row 0 lives under zero_shot/)."""
    cells = methods.get(method).cells(TASKS, EXP.pipeline.zero_shot)
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


def progress_resources():
    """How often a job writes a progress line, and whether it starts warm: resources, not params, so that
    changing them reruns nothing."""
    return {
        "progress_steps": EXP.progress.every_steps,
        "progress_seconds": str(EXP.progress.every_seconds),
        "warm": "yes" if EXP.pipeline.warm_start else "no",
    }


def evaluate_resources():
    return {**slurm_resources("evaluate"), **progress_resources()}


def train_resources():
    """Training jobs also carry their mid-stage save interval, their engine, where their live curves go, and
    on Slurm a warning signal before the time limit: resources, not params, so that changing them reruns
    nothing."""
    out = {
        **slurm_resources("train"),
        **progress_resources(),
        "save_every_steps": EXP.preemption.save_every_steps,
    }
    out["tracking_uri"] = EXP.tracking_uri
    out["tracking_experiment"] = EXP.tracking.experiment or EXP.experiment
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
    return [
        "python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={gpus}",
        "-m",
        "modalprompt",
    ]
