"""The experiment as config.yaml holds it: the sections every experiment has (config.py) and each
registered method's own (lora, l2p, ...), put together here, above the methods, so that config.py needs no
method and a method module no list of sections. Also its loading, its checks across sections, and the JSON
Schema of config.yaml (`json_schema`, which `modalprompt schema` prints).
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modalprompt import methods
from modalprompt.config import (
    TASK_NAME_PATTERN,
    BenchmarkConfig,
    ConfigError,
    DataConfig,
    EngineConfig,
    EvaluationConfig,
    Generator,
    MethodConfig,
    ModelConfig,
    ModelFamily,
    ModelSource,
    PathsConfig,
    PreemptionConfig,
    ProgressConfig,
    ResourcesConfig,
    TaskConfig,
    TrackingConfig,
    TrainingConfig,
    _help,
    from_dict,
    object_schema,
)
from modalprompt.errors import PluginError

# The registered methods, by name (pipeline.methods; the method a job runs).
MethodName = enum.StrEnum("MethodName", {name.upper(): name for name in methods.REGISTRY})

# The methods' own sections, by their key in config.yaml (each job carries those its method reads).
METHOD_SECTIONS: dict[str, type] = {key: section.settings for key, section in methods.sections().items()}


@dataclass(frozen=True)
class PipelineConfig:
    zero_shot: bool = _help(
        "Also evaluate the base model without prompts (row 0) and each stage on the next task (for fwt).",
        default=True,
    )
    methods: tuple[MethodName, ...] = _help(
        "Methods to run side by side: "
        + "; ".join(f"{m.name}: {m.summary}" for m in methods.REGISTRY.values())
        + ".",
        default=(MethodName("modalprompt"),),
    )
    seeds: tuple[int, ...] | None = _help(
        "Seeds as a dimension of the DAG: every method's stages and evaluations run once per seed (each seed "
        "replaces training.seed and method.prompt_init_seed), in <results>/<experiment>/seed-<s>/, and each "
        "method's metrics are reported as mean and standard deviation over the seeds. null: one run with the "
        "configured seeds, in <results>/<experiment>/.",
        default=None,
    )
    generate_data: Generator = _help(
        "Write the task files as a pipeline step: none (given), toy (the demo) or minicoin.",
        default=Generator.NONE,
    )
    warm_start: bool = _help(
        "Local runs: each train and evaluate job runs in a process forked from a local server that has "
        "imported torch and transformers once (modalprompt/run/warm.py), instead of paying the imports "
        "itself; jobs inside Slurm allocations always start on their own. Changing it reruns nothing.",
        default=True,
    )


@dataclass(frozen=True)
class _SectionsBeforeTheMethods:
    """config.yaml's sections that come before the methods' own."""

    experiment: str = _help(
        "Experiment name (a folder under paths.results).", default="modalprompt", pattern=TASK_NAME_PATTERN
    )
    paths: PathsConfig = _help("Where models, data and results live.", default_factory=PathsConfig)
    model: ModelConfig = _help("The frozen base models.", default_factory=ModelConfig)
    method: MethodConfig = _help("ModalPrompt's knobs.", default_factory=MethodConfig)
    training: TrainingConfig = _help("Training defaults for every task.", default_factory=TrainingConfig)


@dataclass(frozen=True)
class _SectionsAfterTheMethods:
    """config.yaml's sections that come after the methods' own."""

    evaluation: EvaluationConfig = _help(
        "Evaluation defaults for every task.", default_factory=EvaluationConfig
    )
    data: DataConfig = _help("Validation of the task files.", default_factory=DataConfig)
    tasks: tuple[TaskConfig, ...] = _help("The task sequence, in training order.", default=())
    benchmark: BenchmarkConfig = _help(
        "The generated benchmark (pipeline.generate_data).", default_factory=BenchmarkConfig
    )
    pipeline: PipelineConfig = _help(
        "What the pipeline runs besides the stages.", default_factory=PipelineConfig
    )
    resources: ResourcesConfig = _help("Cluster resources per job kind.", default_factory=ResourcesConfig)
    preemption: PreemptionConfig = _help(
        "Mid-stage states of training jobs, for time limits, preemption and crashes.",
        default_factory=PreemptionConfig,
    )
    engine: EngineConfig = _help(
        "How training steps run over the processes: plain data parallel or DeepSpeed ZeRO.",
        default_factory=EngineConfig,
    )
    progress: ProgressConfig = _help(
        "How often running jobs report progress in their logs.", default_factory=ProgressConfig
    )
    tracking: TrackingConfig = _help("Where MLflow records the runs.", default_factory=TrackingConfig)
    source: str = _help(
        "The file this config was read from (set by the loader).", default="<dict>", internal=True
    )


class _ExperimentLookups:
    """What ExperimentConfig answers besides its sections."""

    def task(self, name: str) -> TaskConfig:
        for task in self.tasks:
            if task.name == name:
                return task
        known = ", ".join(t.name for t in self.tasks)
        raise ConfigError(f"{self.source}: no task named {name!r} in `tasks` (known: {known})")

    def stage_of(self, name: str) -> int:
        """1-based position of a task in the sequence."""
        return [t.name for t in self.tasks].index(self.task(name).name) + 1

    def training_for(self, name: str) -> TrainingConfig:
        task = self.task(name)
        merged = {**dataclasses.asdict(self.training), **task.training}
        return from_dict(
            TrainingConfig, merged, f"{self.source}: tasks[{task.name}].training (with overrides)"
        )

    def evaluation_for(self, name: str) -> EvaluationConfig:
        task = self.task(name)
        merged = {**dataclasses.asdict(self.evaluation), **task.evaluation}
        return from_dict(
            EvaluationConfig, merged, f"{self.source}: tasks[{task.name}].evaluation (with overrides)"
        )

    @property
    def results_dir(self) -> Path:
        return Path(self.paths.results) / self.experiment

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{(self.results_dir / 'mlflow.db').resolve()}"


def _fields_of(template: type) -> list[tuple[str, Any, dataclasses.Field]]:
    """A template's fields, each a new field with the same default and help."""
    hints = typing.get_type_hints(template)
    return [
        (f.name, hints[f.name], dataclasses.field(default=f.default, default_factory=f.default_factory,
                                                  metadata=f.metadata))
        for f in dataclasses.fields(template)
    ]  # fmt: skip


def _method_section_fields(taken: set[str]) -> list[tuple[str, Any, dataclasses.Field]]:
    """A field per method section, its help naming the methods that read it."""
    fields = []
    for key, section in methods.sections().items():
        readers = methods.readers(key)
        if key in taken:
            raise PluginError(f"the config section {key!r} of method(s) {readers} clashes with a section every "
                              "experiment has: give it another key")  # fmt: skip
        who = f"{'methods' if len(readers) > 1 else 'method'} {', '.join(readers)}"
        help_text = f"{section.about} ({who})."
        fields.append((key, section.settings, _help(help_text, default_factory=section.settings)))
    return fields


def _experiment_class() -> type:
    """ExperimentConfig: the sections every experiment has, with the registered methods' own between
    `training` and `evaluation`, where config.yaml and the generated reference (docs/configuration.md) list
    them."""
    before, after = _fields_of(_SectionsBeforeTheMethods), _fields_of(_SectionsAfterTheMethods)
    common = {name for name, _, _ in before + after}
    return dataclasses.make_dataclass(
        "ExperimentConfig",
        [*before, *_method_section_fields(common), *after],
        bases=(_ExperimentLookups,),
        frozen=True,
        namespace={
            "__module__": __name__,
            "__doc__": "The whole experiment as read from config.yaml; paths resolved by `load_experiment`.",
        },
    )


ExperimentConfig = _experiment_class()


def _under(base: Path, value: str) -> str:
    return str((base / value).resolve()) if value else value


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read config.yaml, validate it, and resolve its paths (see PathsConfig)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist: pass --config with the path of your config.yaml"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return resolve_paths(experiment_from_dict(raw, str(path)), path.resolve().parent)


def resolve_paths(cfg: ExperimentConfig, config_dir: Path) -> ExperimentConfig:
    """paths.* relative to the config's folder; model folders under paths.models; task files under paths.data."""
    paths = PathsConfig(
        *(_under(config_dir, getattr(cfg.paths, f.name)) for f in dataclasses.fields(PathsConfig))
    )
    models, data = Path(paths.models), Path(paths.data)
    model = dataclasses.replace(
        cfg.model,
        llava=_under(models, cfg.model.llava),
        clip=_under(models, cfg.model.clip),
        original_llava=_under(models, cfg.model.original_llava),
    )
    tasks = tuple(
        dataclasses.replace(
            t,
            train_file=_under(data, t.train_file),
            eval_file=_under(data, t.eval_file),
            image_root=_under(data, t.image_root),
            answers_file=_under(data, t.answers_file),
        )
        for t in cfg.tasks
    )
    return dataclasses.replace(cfg, paths=paths, model=model, tasks=tasks)


def experiment_from_dict(raw: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    cfg = from_dict(ExperimentConfig, {**raw, "source": source}, f"{source}:")
    seen: set[str] = set()
    for i, task in enumerate(cfg.tasks):
        if task.name in seen:
            raise ConfigError(
                f"{source}: tasks[{i}].name = {task.name!r} appears twice: task names must be unique"
            )
        seen.add(task.name)
        for key in ("train_file", "eval_file", "image_root"):
            if not getattr(task, key):
                raise ConfigError(
                    f"{source}: tasks[{i}].{key} is missing: give the task's {key.replace('_', ' ')}"
                )
    if cfg.engine.offload and cfg.engine.zero_stage != 3:
        raise ConfigError(
            f"{source}: engine.offload is true but engine.zero_stage is {cfg.engine.zero_stage}: offloading "
            "the base's shards needs zero_stage 3 (or set offload: false)"
        )
    if cfg.model.source in (ModelSource.ORIGINAL, ModelSource.PRETRAIN) and cfg.model.family not in (
        ModelFamily.AUTO,
        ModelFamily.LLAVA,
    ):
        raise ConfigError(
            f"{source}: model.source is {cfg.model.source.value!r}, which makes a LLaVA-1.5 base, but model.family "
            f"is {cfg.model.family.value!r}: set model.family to auto or llava"
        )
    seeds = cfg.pipeline.seeds
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ConfigError(
            f"{source}: pipeline.seeds = {list(seeds)}: give distinct seeds, at least one (or null for one run)"
        )
    if cfg.model.source == ModelSource.ORIGINAL and not cfg.model.original_llava:
        raise ConfigError(
            f"{source}: model.source is 'original' but model.original_llava is empty: give its folder"
        )
    return cfg


def json_schema() -> dict[str, Any]:
    """The JSON Schema of config.yaml, derived from ExperimentConfig."""
    schema = object_schema(ExperimentConfig, with_defaults=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "modalprompt experiment configuration (generated by modalprompt.experiment.json_schema)",
            **schema}  # fmt: skip
