"""Typed settings for the method, training, evaluation and the task sequence.

Every field carries one line of help. `from_dict` rejects unknown keys and wrong types with a message that
names the file, the key path and the fix. Defaults reproduce the reference (method.md).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

T = typing.TypeVar("T")

TASK_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
SCORER_NAMES = ("option_letter", "vqa_soft", "exact_match", "contains", "box_iou")  # modalprompt.scoring


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; the message names where and how to fix it."""


class TextFeature(enum.StrEnum):
    POOLED = "pooled"  # CLIP text pooler output, no projection (the reference)
    PROJECTED = "projected"  # through CLIP's text projection, the joint image-text space


class Schedule(enum.StrEnum):
    CONSTANT = "constant"  # linear warm-up, then constant (what the reference's DeepSpeed config runs)
    COSINE = "cosine"  # linear warm-up, then cosine decay to zero


class DType(enum.StrEnum):
    AUTO = "auto"  # bfloat16 on CUDA, float32 on CPU
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class Attention(enum.StrEnum):
    AUTO = "auto"  # flash_attention_2 when installed and on CUDA, else sdpa
    FLASH = "flash_attention_2"
    SDPA = "sdpa"
    EAGER = "eager"


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class ModelConfig:
    llava: str = _help("Folder of the base LLaVA in the transformers (llava-hf) layout.", default="")
    clip: str = _help("Folder of the CLIP model (text tower and projections) used for selection.", default="")
    dtype: DType = _help(
        "Dtype of the frozen base model; trainable tensors are always float32.", default=DType.AUTO
    )
    attention: Attention = _help("Attention kernel of the LLM.", default=Attention.AUTO)
    device: str = _help("'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'.", default="auto")


@dataclass(frozen=True)
class MethodConfig:
    prefix_length: int = _help("Prompt length L: rows of each task's prompt.", default=10)
    transfer_num: int = _help(
        "K: prompts selected per sample (current + K-1 previous in training).", default=3
    )
    lam: float = _help(
        "Weight of the image term in the selection score (1 - lam on the text term).", default=0.5
    )
    image_loss_weight: float = _help("w_v: weight of the image-key alignment loss.", default=1.0)
    text_loss_weight: float = _help("w_q: weight of the text-key alignment loss.", default=1.0)
    text_feature: TextFeature = _help("CLIP text feature for the text query.", default=TextFeature.POOLED)
    key_hidden_size: int | None = _help(
        "Hidden size of the key network; null = the LLM hidden size.", default=None
    )
    prompt_init_seed: int = _help("Seed of the prompt and key-network initialisation (per stage).", default=0)

    def validate(self, where: str) -> None:
        _check(self.prefix_length >= 1, where, "prefix_length", self.prefix_length, "an integer >= 1")
        _check(self.transfer_num >= 1, where, "transfer_num", self.transfer_num, "an integer >= 1")
        _check(0.0 <= self.lam <= 1.0, where, "lam", self.lam, "a number in [0, 1]")
        _check(
            self.image_loss_weight >= 0, where, "image_loss_weight", self.image_loss_weight, "a number >= 0"
        )
        _check(self.text_loss_weight >= 0, where, "text_loss_weight", self.text_loss_weight, "a number >= 0")
        if self.key_hidden_size is not None:
            _check(self.key_hidden_size >= 1, where, "key_hidden_size", self.key_hidden_size, "null or >= 1")

    def structure(self) -> dict[str, Any]:
        """The settings that define what a stage file's tensors mean; loading refuses a mismatch."""
        return {
            "prefix_length": self.prefix_length,
            "key_hidden_size": self.key_hidden_size,
            "text_feature": str(self.text_feature),
        }


@dataclass(frozen=True)
class TrainingConfig:
    epochs: float = _help("Passes over the task's training set (fractions allowed).", default=10.0)
    batch_size: int = _help("Samples per optimizer micro-step on each process.", default=16)
    grad_accum_steps: int = _help("Micro-steps accumulated per optimizer step.", default=1)
    lr: float = _help("Peak AdamW learning rate.", default=2e-4)
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    adam_betas: tuple[float, float] = _help("AdamW betas.", default=(0.9, 0.999))
    schedule: Schedule = _help("Learning-rate schedule after warm-up.", default=Schedule.CONSTANT)
    warmup_ratio: float = _help("Share of optimizer steps spent in linear warm-up.", default=0.03)
    max_grad_norm: float | None = _help("Gradient clipping norm; null disables clipping.", default=1.0)
    max_length: int = _help("Maximum LLM tokens per sample before the prompt is inserted.", default=2048)
    max_steps: int | None = _help(
        "Stop after this many optimizer steps (null: run all epochs).", default=None
    )
    gradient_checkpointing: bool = _help(
        "Recompute LLM activations in backward to save memory.", default=False
    )
    seed: int = _help("Seed of data order and everything random in training.", default=0)
    num_workers: int = _help("DataLoader worker processes.", default=0)

    def validate(self, where: str) -> None:
        _check(self.epochs > 0, where, "epochs", self.epochs, "a number > 0")
        _check(self.batch_size >= 1, where, "batch_size", self.batch_size, "an integer >= 1")
        _check(
            self.grad_accum_steps >= 1, where, "grad_accum_steps", self.grad_accum_steps, "an integer >= 1"
        )
        _check(self.lr > 0, where, "lr", self.lr, "a number > 0")
        _check(self.weight_decay >= 0, where, "weight_decay", self.weight_decay, "a number >= 0")
        _check(0 <= self.warmup_ratio < 1, where, "warmup_ratio", self.warmup_ratio, "a number in [0, 1)")
        _check(self.max_length >= 8, where, "max_length", self.max_length, "an integer >= 8")
        _check(self.num_workers >= 0, where, "num_workers", self.num_workers, "an integer >= 0")
        if self.max_steps is not None:
            _check(self.max_steps >= 1, where, "max_steps", self.max_steps, "null or an integer >= 1")
        if self.max_grad_norm is not None:
            _check(self.max_grad_norm > 0, where, "max_grad_norm", self.max_grad_norm, "null or a number > 0")


@dataclass(frozen=True)
class EvaluationConfig:
    batch_size: int = _help("Samples per generation batch.", default=16)
    max_new_tokens: int = _help("Greedy decoding stops after this many new tokens (or at EOS).", default=128)
    max_samples: int | None = _help(
        "Evaluate only the first N samples of the eval file (null: all).", default=None
    )

    def validate(self, where: str) -> None:
        _check(self.batch_size >= 1, where, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.max_new_tokens >= 1, where, "max_new_tokens", self.max_new_tokens, "an integer >= 1")
        if self.max_samples is not None:
            _check(self.max_samples >= 1, where, "max_samples", self.max_samples, "null or an integer >= 1")


@dataclass(frozen=True)
class DataConfig:
    skip_bad_records: bool = _help(
        "Skip records that fail validation and report them, instead of stopping before the job starts.",
        default=False,
    )
    check_images: bool = _help("Open every distinct image (header only) during validation.", default=True)


@dataclass(frozen=True)
class TaskConfig:
    name: str = _help("Task name: letters, digits, '-' and '_' only (used in paths).", default="")
    train_file: str = _help("CoIN train.json (LLaVA conversation format).", default="")
    eval_file: str = _help("CoIN test.json / val.json.", default="")
    image_root: str = _help("Folder the records' image paths are relative to.", default="")
    scorer: str = _help("Scorer for this task's predictions.", default="exact_match")
    training: dict[str, Any] = _help("Overrides of `training` keys for this task only.", default_factory=dict)
    evaluation: dict[str, Any] = _help(
        "Overrides of `evaluation` keys for this task only.", default_factory=dict
    )


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment as read from config.yaml; paths resolved against the file's folder."""

    experiment: str = _help("Experiment name.", default="modalprompt")
    model: ModelConfig = _help("The frozen base models.", default_factory=ModelConfig)
    method: MethodConfig = _help("ModalPrompt's knobs.", default_factory=MethodConfig)
    training: TrainingConfig = _help("Training defaults for every task.", default_factory=TrainingConfig)
    evaluation: EvaluationConfig = _help(
        "Evaluation defaults for every task.", default_factory=EvaluationConfig
    )
    data: DataConfig = _help("Validation of the task files.", default_factory=DataConfig)
    tasks: tuple[TaskConfig, ...] = _help("The task sequence, in training order.", default=())
    source: str = _help("The file this config was read from (set by the loader).", default="<dict>")

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
        where = f"{self.source}: tasks[{task.name}].training"
        merged = from_dict(TrainingConfig, {**dataclasses.asdict(self.training), **task.training}, where)
        merged.validate(where)
        return merged

    def evaluation_for(self, name: str) -> EvaluationConfig:
        task = self.task(name)
        where = f"{self.source}: tasks[{task.name}].evaluation"
        merged = from_dict(
            EvaluationConfig, {**dataclasses.asdict(self.evaluation), **task.evaluation}, where
        )
        merged.validate(where)
        return merged


def _check(ok: bool, where: str, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{where}.{key} = {value!r} is invalid: expected {expected}")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise a ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [m.value for m in tp]
        if value not in choices:
            raise ConfigError(f"{where} = {value!r} is not allowed: choose one of {choices}")
        return tp(value)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} = {value!r}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} = {value!r}: expected a list of {len(args)} items")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} = {value!r}: expected a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} = {value!r}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r}: expected a string")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
    values = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**values)


def _resolve(base: Path, value: str) -> str:
    return str((base / value).resolve()) if value else value


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read config.yaml, validate it, and resolve its paths against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist: pass --config with the path of your config.yaml"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    raw.pop("paths", None)  # pipeline-level folders; read by the workflow, not by the package
    cfg = experiment_from_dict(raw, str(path))
    base = path.resolve().parent
    model = dataclasses.replace(
        cfg.model, llava=_resolve(base, cfg.model.llava), clip=_resolve(base, cfg.model.clip)
    )
    tasks = tuple(
        dataclasses.replace(
            t,
            train_file=_resolve(base, t.train_file),
            eval_file=_resolve(base, t.eval_file),
            image_root=_resolve(base, t.image_root),
        )
        for t in cfg.tasks
    )
    return dataclasses.replace(cfg, model=model, tasks=tasks)


def experiment_from_dict(raw: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    cfg = from_dict(ExperimentConfig, {**raw, "source": source}, source)
    cfg.method.validate(f"{source}: method")
    cfg.training.validate(f"{source}: training")
    cfg.evaluation.validate(f"{source}: evaluation")
    seen: set[str] = set()
    for i, task in enumerate(cfg.tasks):
        where = f"{source}: tasks[{i}]"
        if not re.match(TASK_NAME_PATTERN, task.name):
            raise ConfigError(
                f"{where}.name = {task.name!r} is not a safe task name: use letters, digits, '-' and '_' only"
            )
        if task.scorer not in SCORER_NAMES:
            raise ConfigError(
                f"{where}.scorer = {task.scorer!r} does not exist: choose one of {list(SCORER_NAMES)}"
            )
        if task.name in seen:
            raise ConfigError(f"{where}.name = {task.name!r} appears twice: task names must be unique")
        seen.add(task.name)
        cfg.training_for(task.name)
        cfg.evaluation_for(task.name)
    return cfg


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types for a (nested) config dataclass, enums as their values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    return obj


def config_hash(obj: Any) -> str:
    """Stable short hash of a config value (key order never matters)."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
