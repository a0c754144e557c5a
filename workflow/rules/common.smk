# Settings and paths shared by the rules. The logic lives in the package: modalprompt.experiment (the
# settings), modalprompt.jobs (each job's rerun key), modalprompt.methods (what each method trains and which
# cells it needs), modalprompt.layout (every output path). Nothing here imports torch, transformers or mlflow.
import functools
import json
from pathlib import Path

from modalprompt import layout, methods
from modalprompt.config import ConfigError, Generator, ModelSource, job_to_json
from modalprompt.experiment import experiment_from_dict, resolve_paths
from modalprompt.jobs import eval_job, job_settings, train_job
from modalprompt.tracking import unreachable

CONFIG_FILE = Path((list(workflow.overwrite_configfiles) or ["config.yaml"])[-1]).resolve()
EXP = resolve_paths(experiment_from_dict(dict(config), str(CONFIG_FILE)), CONFIG_FILE.parent)
RESULTS = EXP.results_dir
# pipeline.seeds: every method's stages and evaluations once per seed, each seed's run in seed-<s>/ ({seed}
# in the rules' paths); without seeds one run, in RESULTS itself
SEEDS = list(EXP.pipeline.seeds) if EXP.pipeline.seeds else None
RUN = layout.run_dir(RESULTS, "{seed}" if SEEDS else None)  # the rules' output paths start here
RUN_SEEDS = SEEDS or [None]  # the runs, as `seed` values for layout.run_dir
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
    str(layout.method_dir(layout.run_dir(RESULTS, seed), m) / name)
    for seed in RUN_SEEDS
    for m in SELECTING
    for name in layout.CONFUSION_FILES
]
REPORT_VIEWS += [str(COMPARISON_DIR / name) for name in layout.COMPARISON_FILES] if METHODS else []
# the tasks' shared answers, set against each method's forgetting (beside its final matrix)
REPORT_VIEWS += [
    str(layout.method_dir(RESULTS, m) / name) for m in METHOD_NAMES for name in layout.OVERLAP_FILES
]


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
    seed=r"\d+",
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


def seed_of(w):
    """The job's seed (the {seed} wildcard), or None without pipeline.seeds."""
    return int(w.seed) if SEEDS else None


def run_of(w):
    """The folder of the job's run: RESULTS/seed-<s>/, or RESULTS."""
    return layout.run_dir(RESULTS, seed_of(w))


def stage_files(root, method, stages):
    return [str(f) for s in stages for f in layout.checkpoint_files(root, method, s)]


def stage_folders(root, method, stages):
    return [checkpoint_folder(root, method, s) for s in stages]


# Snakemake asks every job's inputs and params on each invocation, the no-op check included: with 32 tasks,
# thousands of jobs share a few hundred distinct answers, so the ones that build paths or settings are cached.
@functools.cache
def checkpoint_folder(root, method, stage):
    return str(layout.checkpoint_dir(root, method, stage))


@functools.cache
def eval_settings(task, method):
    """An evaluation's rerun key: the settings of `method` evaluated on `task` (the same at every stage)."""
    return job_settings(eval_job(EXP, task, method))


@functools.cache
def train_settings(stage, method, seed):
    """A training stage's rerun key."""
    return job_settings(train_job(EXP, task_of(stage).name, method, seed))


@functools.cache
def max_samples_of(task):
    return EXP.evaluation_for(task).max_samples or 0


# Each job reads every stage folder its method says (params), but names as inputs only the stages that no
# other of them was trained from (Method.dag_inputs): the others are upstream of those, so a change to any
# still reruns the job, and the DAG keeps one edge per job instead of one per stage it reads.


def training_checkpoints(w):
    """The stage files training stage s of a method depends on: its method's latest earlier stage it reads."""
    method = methods.get(w.method)
    return stage_files(run_of(w), w.method, method.dag_inputs(method.training_inputs(int(w.stage))))


def training_folders(w):
    """The checkpoint folders training stage s reads (its own earlier stages, as the method says)."""
    return stage_folders(run_of(w), w.method, methods.get(w.method).training_inputs(int(w.stage)))


def evaluation_checkpoints(w):
    """The stage files an evaluation of `method` after stage s depends on: the latest of the stages it loads
    (of the method whose stages it uses; none for a method without any, or at stage 0)."""
    method = methods.get(w.method)
    if method.prompts_of is None:
        return []
    owner = methods.get(method.prompts_of)
    return stage_files(run_of(w), owner.name, owner.dag_inputs(method.evaluation_inputs(int(w.stage))))


def evaluation_folders(w):
    """The checkpoint folders an evaluation of `method` after stage s loads, as the method says."""
    method = methods.get(w.method)
    if method.prompts_of is None:
        return []
    return stage_folders(run_of(w), method.prompts_of, method.evaluation_inputs(int(w.stage)))


def earlier_train_files(w):
    """The train files of tasks 1..s-1, for a method that trains on their records too (replay, multitask)."""
    if not methods.get(w.method).reads_earlier_tasks:
        return []
    return [task.train_file for task in EXP.tasks[: int(w.stage) - 1]]


def cell_method(method, stage):
    """Row 0 is the base model without prompts, whichever method's matrix it belongs to."""
    return layout.cell_method(method, stage)


def score_files(method, seed=None):
    """The score files of `method`'s matrix (of one seed's run): the cells it needs (row 0 lives under
    zero_shot/, in the first seed's run)."""
    cells = methods.get(method).cells(TASKS, EXP.pipeline.zero_shot)
    return [
        str(
            layout.score_file(
                layout.run_dir(RESULTS, layout.cell_seed(seed, SEEDS, s)),
                layout.cell_method(method, s),
                s,
                task,
            )
        )
        for s, task in cells
    ]


def trained_stage_files(method, seed=None):
    """The stage.json of every stage `method`'s matrix rows come from (of one seed's run): they record what
    training cost; none for a method that trains nothing."""
    trainer = methods.get(method).prompts_of
    if trainer is None:
        return []
    return [str(layout.checkpoint_files(layout.run_dir(RESULTS, seed), trainer, s)[0]) for s in STAGES]


def summary_files(method, seed=None):
    """A method's matrix files (of one seed's run)."""
    return [
        str(layout.method_dir(layout.run_dir(RESULTS, seed), method) / name) for name in layout.SUMMARY_FILES
    ]


def final_files(method):
    """What a method ends with: its matrix files, or with seeds its files over the seeds."""
    if not SEEDS:
        return summary_files(method)
    return [str(layout.method_dir(RESULTS, method) / name) for name in layout.AGGREGATE_FILES]


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
