"""Typed settings: the sections every experiment has, and how settings are read, checked and written.

Every field carries one line of help (`_help`) and, where it has one, its allowed range. `from_dict`
rejects unknown keys, wrong types and out-of-range values with a message naming the file, the key path and
what is expected; `object_schema` gives a class's JSON Schema. The methods define their own sections
(modalprompt/methods/), and modalprompt/experiment.py puts both together as config.yaml's ExperimentConfig:
this module knows no method. Defaults reproduce the reference (method.md).
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
from typing import Any

from modalprompt import plugins

T = typing.TypeVar("T")

TASK_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"


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


class ModelSource(enum.StrEnum):
    HF = "hf"  # model.llava is a llava-hf folder, used as it is
    ORIGINAL = "original"  # model.original_llava is converted once into model.llava by the pipeline
    TINY = "tiny"  # the pipeline builds tiny random models into model.llava / model.clip (the demo)
    PRETRAIN = "pretrain"  # the pipeline pretrains a small base on mini-CoIN's generic corpus (CPU benchmark)


def _open_enum(name: str, built_in: dict[str, str], group: str) -> type[enum.StrEnum]:
    """An enum of the built-in values and the names of the installed packages' entry points of `group`
    (their registry loads them, and reports a name that clashes with a built-in one)."""
    installed = {value.upper(): value for value in plugins.names(group) if value not in built_in.values()}
    return enum.StrEnum(name, {**built_in, **installed})


# model.family: modalprompt.bases, one adapter per family (bases/backbone.py ADAPTERS), and installed ones
ModelFamily = _open_enum(
    "ModelFamily",
    {
        "AUTO": "auto",  # from the model_type in model.llava's config.json
        "LLAVA": "llava",  # LlavaForConditionalGeneration (LLaVA-1.5)
        "LLAVA_NEXT": "llava_next",  # LlavaNextForConditionalGeneration (LLaVA-NeXT / 1.6, any-resolution tiles)
        "QWEN2_5_VL": "qwen2_5_vl",  # Qwen2_5_VLForConditionalGeneration
    },
    plugins.BASES,
)


class Generator(enum.StrEnum):
    NONE = "none"  # the task files are given
    TOY = "toy"  # three toy tasks under <paths.data>/toy (the quick demo)
    MINICOIN = "minicoin"  # mini-CoIN's tasks under <paths.data>/minicoin (modalprompt.bench.minicoin)


class Query(enum.StrEnum):
    """What a prompt-pool method matches its keys against (a frozen encoder's feature of the sample)."""

    IMAGE = "image"  # the CLIP image feature, as the papers' frozen image encoder; text-only samples: the text one
    TEXT = "text"  # the CLIP text feature of the instruction (method.text_feature)


# tasks[].scorer: modalprompt.scoring.scorers.SCORERS, and installed ones
Scorer = _open_enum(
    "Scorer",
    {
        "OPTION_LETTER": "option_letter",  # the option letter an answer names (ScienceQA)
        "VQA_SOFT": "vqa_soft",  # VQA soft accuracy over the human answers (TextVQA)
        "EXACT_MATCH": "exact_match",  # case-insensitive, trailing periods dropped (GQA)
        "EXACT_MATCH_STRICT": "exact_match_strict",  # case-insensitive, nothing else dropped (VizWiz, VQAv2, OCR-VQA)
        "CONTAINS": "contains",  # the class name occurs in the answer (ImageNet)
        "BOX_IOU": "box_iou",  # IoU > 0.5 with the reference box (Grounding)
    },
    plugins.SCORERS,
)


def _help(text: str, **kwargs: Any) -> Any:
    """A field with help text; bounds (minimum, maximum, exclusive_minimum, exclusive_maximum), `pattern`
    and `overrides` (the class whose keys a dict may override) go to metadata, the rest to `field`."""
    meta_keys = (
        "minimum",
        "maximum",
        "exclusive_minimum",
        "exclusive_maximum",
        "pattern",
        "overrides",
        "internal",
        "training_only",
        "evaluation_only",
    )
    metadata = {"help": text, **{k: kwargs.pop(k) for k in meta_keys if k in kwargs}}
    return field(metadata=metadata, **kwargs)


@dataclass(frozen=True)
class BenchmarkConfig:
    seed: int = _help("Seed of the generated tasks (pipeline.generate_data: minicoin).", default=0)
    train_size: int = _help("Training records per generated task.", default=200, minimum=1)
    test_size: int = _help("Test records per generated task.", default=200, minimum=1)
    generic_size: int = _help(
        "Records of the generic corpus the base is pretrained on (source: pretrain).", default=3000, minimum=1
    )
    generic_grounding_weight: int = _help(
        "Image records of the generic corpus showing one shape to ground (box, position, size), as a multiple "
        "of each other kind's (1: as many as each). A box takes more examples to learn than a word.",
        default=1,
        minimum=1,
    )


@dataclass(frozen=True)
class PretrainConfig:
    hidden: int = _help("LLM hidden size.", default=128, minimum=8)
    layers: int = _help("LLM layers.", default=4, minimum=1)
    vision_hidden: int = _help("Vision tower hidden size.", default=64, minimum=8)
    feature: int = _help("CLIP feature size (also the CLIP text hidden size).", default=64, minimum=8)
    clip_steps: int = _help("Contrastive CLIP steps.", default=200, minimum=1)
    caption_steps: int = _help("LLaVA steps on the generic corpus.", default=1200, minimum=1)
    batch_size: int = _help("Pretraining batch size.", default=32, minimum=1)
    lr: float = _help("Pretraining learning rate.", default=3e-3, exclusive_minimum=0.0)
    seed: int = _help("Pretraining seed.", default=0)
    vision_feature_layer: int = _help(
        "Hidden state of the 2-layer vision tower that LLaVA reads, counted from the end: -1 its last layer, "
        "-2 the one before (what LLaVA-1.5 reads), -3 the patch embeddings. Lower ones keep where things are; "
        "the last is shaped for CLIP's pooled output.",
        default=-2,
        minimum=-3,
        maximum=-1,
    )


@dataclass(frozen=True)
class PathsConfig:
    models: str = _help(
        "Folder that relative model paths are under (relative to the config file).", default="models"
    )
    data: str = _help("Folder that relative task files and image roots are under.", default="data")
    results: str = _help(
        "Folder of all outputs; each experiment writes to <results>/<experiment>/.", default="results"
    )


@dataclass(frozen=True)
class ModelConfig:
    source: ModelSource = _help(
        "How model.llava comes to be: hf (given), original (converted), tiny (built).", default=ModelSource.HF
    )
    llava: str = _help(
        "Folder of the base model in the transformers layout (a llava-hf LLaVA-1.5 or LLaVA-NeXT folder, or a "
        "Qwen2.5-VL folder; the key keeps its first name).",
        default="",
    )
    family: ModelFamily = _help(
        "Model family of model.llava: auto (detected from its config.json), llava, llava_next or qwen2_5_vl. "
        "With source: tiny, the family of the tiny model built (auto: llava).",
        default=ModelFamily.AUTO,
    )
    clip: str = _help("Folder of the CLIP model (text tower and projections) used for selection.", default="")
    original_llava: str = _help("Folder of an original-layout LLaVA-1.5 (source: original only).", default="")
    dtype: DType = _help(
        "Dtype of the frozen base model; trainable tensors are always float32.", default=DType.AUTO
    )
    attention: Attention = _help("Attention kernel of the LLM.", default=Attention.AUTO)
    device: str = _help("'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'.", default="auto")
    pretrain: PretrainConfig = _help(
        "The small base the pipeline pretrains (source: pretrain).", default_factory=PretrainConfig
    )


@dataclass(frozen=True)
class MethodConfig:
    prefix_length: int = _help("Prompt length L: rows of each task's prompt.", default=10, minimum=1)
    transfer_num: int = _help(
        "K: prompts selected per sample (current + K-1 previous in training).",
        default=3,
        minimum=1,
        maximum=64,
    )
    lam: float = _help(
        "Weight of the image term in the selection score (1 - lam on the text term).",
        default=0.5,
        minimum=0.0,
        maximum=1.0,
    )
    image_loss_weight: float = _help("w_v: weight of the image-key alignment loss.", default=1.0, minimum=0.0)
    text_loss_weight: float = _help("w_q: weight of the text-key alignment loss.", default=1.0, minimum=0.0)
    text_feature: TextFeature = _help("CLIP text feature for the text query.", default=TextFeature.POOLED)
    key_hidden_size: int | None = _help(
        "Hidden size of the key network; null = the LLM hidden size.", default=None, minimum=1
    )
    prompt_init_seed: int = _help("Seed of the prompt and key-network initialisation (per stage).", default=0)

    def structure(self) -> dict[str, Any]:
        """The settings that define what a stage file's tensors mean; loading refuses a mismatch."""
        return {
            "prefix_length": self.prefix_length,
            "key_hidden_size": self.key_hidden_size,
            "text_feature": str(self.text_feature),
        }


@dataclass(frozen=True)
class TrainingConfig:
    epochs: float = _help(
        "Passes over the task's training set (fractions allowed).", default=10.0, exclusive_minimum=0.0
    )
    batch_size: int = _help("Samples per micro-step on each process.", default=16, minimum=1)
    grad_accum_steps: int = _help("Micro-steps accumulated per optimizer step.", default=1, minimum=1)
    lr: float = _help("Peak AdamW learning rate.", default=2e-4, exclusive_minimum=0.0)
    weight_decay: float = _help("AdamW weight decay.", default=0.0, minimum=0.0)
    adam_betas: tuple[float, float] = _help("AdamW betas.", default=(0.9, 0.999))
    schedule: Schedule = _help("Learning-rate schedule after warm-up.", default=Schedule.CONSTANT)
    warmup_ratio: float = _help(
        "Share of optimizer steps spent in linear warm-up.", default=0.03, minimum=0.0, exclusive_maximum=1.0
    )
    max_grad_norm: float | None = _help(
        "Gradient clipping norm; null disables clipping.", default=1.0, exclusive_minimum=0.0
    )
    max_length: int = _help(
        "Maximum LLM tokens per sample before the prompt is inserted.", default=2048, minimum=8
    )
    max_steps: int | None = _help(
        "Stop after this many optimizer steps (null: run all epochs).", default=None, minimum=1
    )
    gradient_checkpointing: bool = _help(
        "Recompute LLM activations in backward to save memory.", default=False
    )
    seed: int = _help("Seed of data order and everything random in training.", default=0)
    num_workers: int = _help("DataLoader worker processes.", default=0, minimum=0)
    group_by_length: bool = _help(
        "Batch samples of similar token length together (less padding, faster on GPU); the order stays "
        "seeded and identical for any number of processes.",
        default=False,
    )


# ----------------------------------------------------------------------------- the methods' own sections
# A method defines its own section (methods.Section: a dataclass of `_help` fields) and names the sections it
# reads (methods.Method.sections); its jobs carry exactly those. Fields marked training_only are held at
# their defaults in evaluation jobs (inference never reads them).


def training_overrides(who: str) -> Any:
    """A section's `training` field: overrides of `training` keys for the methods that read it."""
    return _help(
        f"Overrides of `training` keys for {who} (applied after the task's own overrides).",
        default_factory=dict,
        overrides=TrainingConfig,
        training_only=True,
    )


def for_evaluation(section: T) -> T:
    """The section with its training-only fields at their defaults: what inference reads."""
    return _at_defaults(section, "training_only")


def for_training(section: T) -> T:
    """The section with its evaluation-only fields (inference knobs) at their defaults: what training reads."""
    return _at_defaults(section, "evaluation_only")


def _at_defaults(section: T, marker: str) -> T:
    defaults = type(section)()
    kept = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(section) if f.metadata.get(marker)}
    return dataclasses.replace(section, **kept)


@dataclass(frozen=True)
class EvaluationConfig:
    batch_size: int = _help("Samples per generation batch.", default=16, minimum=1)
    max_new_tokens: int = _help(
        "Greedy decoding stops after this many new tokens (or at EOS).", default=128, minimum=1
    )
    max_samples: int | None = _help(
        "Evaluate only the first N samples of the eval file (null: all).", default=None, minimum=1
    )


@dataclass(frozen=True)
class DataConfig:
    skip_bad_records: bool = _help(
        "Skip records that fail validation and report them, instead of stopping before the job starts.",
        default=False,
    )
    check_images: bool = _help("Open every distinct image (header only) during validation.", default=True)


@dataclass(frozen=True)
class TaskConfig:
    name: str = _help(
        "Task name: letters, digits, '-' and '_' only (used in paths).", default="", pattern=TASK_NAME_PATTERN
    )
    train_file: str = _help("CoIN train.json (LLaVA conversation format), under paths.data.", default="")
    eval_file: str = _help("CoIN test.json / val.json, under paths.data.", default="")
    image_root: str = _help("Folder the records' image paths are relative to, under paths.data.", default="")
    scorer: Scorer = _help("Scorer for this task's predictions.", default=Scorer.EXACT_MATCH)
    answers_file: str = _help(
        "File with every question's reference answers, when the eval file holds only one (CoIN scores TextVQA "
        "against the 10 human answers of TextVQA_0.5.1_val.json): {'data': [{question_id, answers}]} or a "
        "list of such records, joined on question_id; under paths.data. Empty: the eval file's answers.",
        default="",
    )
    training: dict[str, Any] = _help(
        "Overrides of `training` keys for this task only.", default_factory=dict, overrides=TrainingConfig
    )
    evaluation: dict[str, Any] = _help(
        "Overrides of `evaluation` keys for this task only.", default_factory=dict, overrides=EvaluationConfig
    )


@dataclass(frozen=True)
class JobResources:
    gpus: int = _help("GPUs per job (Slurm --gpus); ignored by local runs.", default=0, minimum=0)
    cpus: int = _help("CPU cores per job (threads locally, Slurm --cpus-per-task).", default=1, minimum=1)
    mem_mb: int = _help("Memory per job in MB (Slurm --mem).", default=4000, minimum=1)
    runtime: int = _help("Wall-time limit per job in minutes (Slurm -t).", default=60, minimum=1)


@dataclass(frozen=True)
class ResourcesConfig:
    train: JobResources = _help("Resources of each stage's training job.", default_factory=JobResources)
    evaluate: JobResources = _help("Resources of each evaluation job.", default_factory=JobResources)
    prepare: JobResources = _help(
        "Resources of base-model preparation (conversion, tiny models).", default_factory=JobResources
    )


@dataclass(frozen=True)
class PreemptionConfig:
    save_every_steps: int = _help(
        "Training saves a resumable mid-stage state every N optimizer steps (0: only when signalled). "
        "Changing it reruns nothing.",
        default=100,
        minimum=0,
    )
    signal_seconds: int = _help(
        "On Slurm, a training job gets SIGUSR1 this many seconds before its time limit, saves its state "
        "and stops; the retry continues from it (0: no warning signal).",
        default=300,
        minimum=0,
    )


@dataclass(frozen=True)
class EngineConfig:
    zero_stage: int | None = _help(
        "null: plain data parallel (each trained tensor's gradient summed over the processes). 3: DeepSpeed "
        "ZeRO-3 shards the frozen base over the GPUs, for bases that do not fit one. 0-2: DeepSpeed holds "
        "the trained tensors (1-2 partition their optimizer state; no mid-stage states). Needs the "
        "`deepspeed` extra. Changing it reruns nothing.",
        default=None,
        minimum=0,
        maximum=3,
    )
    offload: bool = _help(
        "With zero_stage 3: keep the base's shards in CPU memory (ZeRO-Offload), gathered to the GPU layer by "
        "layer.",
        default=False,
    )


@dataclass(frozen=True)
class ProgressConfig:
    every_steps: int = _help(
        "Job logs get a progress line every N optimizer steps (training) or generation batches (evaluation); "
        "0: only the time trigger. Changing it reruns nothing.",
        default=10,
        minimum=0,
    )
    every_seconds: float = _help(
        "... and at least every S seconds; 0: only the step trigger. A terminal shows a bar instead.",
        default=60.0,
        minimum=0.0,
    )


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = _help(
        "MLflow tracking URI; null = SQLite file <results>/<experiment>/mlflow.db.", default=None
    )
    experiment: str | None = _help(
        "MLflow experiment name; null = the config's experiment name.", default=None
    )


def job_to_json(job: Any) -> str:
    """Canonical JSON (sorted keys): equal settings give equal strings, so Snakemake params compare well."""
    return json.dumps(to_jsonable(job), sort_keys=True, separators=(",", ":"))


def job_from_json(cls: type[T], text: str, where: str = "--settings") -> T:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not valid JSON ({err})") from err
    return from_dict(cls, raw, where)


# ----------------------------------------------------------------------------- parsing and validation


def _bounds_error(meta: dict[str, Any], value: Any) -> str | None:
    checks = (
        ("minimum", lambda v, b: v >= b, ">="),
        ("maximum", lambda v, b: v <= b, "<="),
        ("exclusive_minimum", lambda v, b: v > b, ">"),
        ("exclusive_maximum", lambda v, b: v < b, "<"),
    )
    if all(ok(value, meta[key]) for key, ok, _ in checks if key in meta):
        return None
    return " and ".join(f"{op} {meta[key]}" for key, _, op in checks if key in meta)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise a ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(tp) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        return _coerce(options[0], value, where)
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
    expected = {bool: ("true or false", bool), int: ("an integer", int), float: ("a number", int | float),
                str: ("a string", str)}  # fmt: skip
    if tp in expected:
        text, accepted = expected[tp]
        if not isinstance(value, accepted) or (tp is not bool and isinstance(value, bool)):
            raise ConfigError(f"{where} = {value!r}: expected {text}")
        return float(value) if tp is float else value
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping; unknown keys, wrong types and bad values raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
    values = {}
    for name, value in data.items():
        key = f"{where} {name}" if where.endswith(":") else f"{where}.{name}"  # "file: a.b[0].c"
        meta = fields[name].metadata
        values[name] = _coerce(hints[name], value, key)
        if isinstance(values[name], int | float) and not isinstance(values[name], bool):
            wanted = _bounds_error(meta, values[name])
            if wanted:
                raise ConfigError(f"{key} = {value!r} is invalid: expected a number {wanted}")
        if "pattern" in meta and not re.match(meta["pattern"], values[name]):
            raise ConfigError(
                f"{key} = {value!r} is not a safe name: use letters, digits, '-' and '_' only (it is used in paths)"
            )
        if "overrides" in meta:
            from_dict(meta["overrides"], values[name], key)  # names the bad override key now
            values[name] = {k: to_jsonable(v) for k, v in values[name].items()}
    return cls(**values)


def tiny_family(family: ModelFamily) -> str:
    """The family of the tiny base that `model.source: tiny` builds: the configured one, LLaVA-1.5 for auto."""
    return ModelFamily.LLAVA.value if family == ModelFamily.AUTO else family.value


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


# ----------------------------------------------------------------------------- JSON Schema


_SCHEMA_BOUNDS = {"minimum": "minimum", "maximum": "maximum", "exclusive_minimum": "exclusiveMinimum",
                  "exclusive_maximum": "exclusiveMaximum", "pattern": "pattern"}  # fmt: skip


def _type_schema(tp: Any, with_defaults: bool) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(tp) if o is not type(None)]
        schema = _type_schema(options[0], with_defaults)
        schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        return schema
    if dataclasses.is_dataclass(tp):
        return object_schema(tp, with_defaults)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _type_schema(args[0], with_defaults)}
        return {"type": "array", "items": _type_schema(args[0], with_defaults), "minItems": len(args),
                "maxItems": len(args)}  # fmt: skip
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return {"type": simple[tp]}
    return {"type": "object"}


def object_schema(cls: type, with_defaults: bool = True) -> dict[str, Any]:
    """The JSON Schema of a settings dataclass: each field's type, help, bounds and (with_defaults) default."""
    hints = typing.get_type_hints(cls)
    properties = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        if (
            "overrides" in f.metadata
        ):  # override dicts: the overridden keys, no defaults (they would override)
            schema = object_schema(f.metadata["overrides"], with_defaults=False)
        else:
            schema = _type_schema(hints[f.name], with_defaults)
        schema["description"] = f.metadata["help"]
        schema.update({_SCHEMA_BOUNDS[k]: v for k, v in f.metadata.items() if k in _SCHEMA_BOUNDS})
        if with_defaults:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            schema["default"] = to_jsonable(default)
        properties[f.name] = schema
    return {"type": "object", "additionalProperties": False, "properties": properties}
