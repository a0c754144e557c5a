"""Typed settings: the experiment as read from config.yaml, and the per-job settings the pipeline passes.

Every field carries one line of help and, where it has one, its allowed range. `from_dict` rejects unknown
keys, wrong types and out-of-range values with a message naming the file, the key path and what is
expected. `json_schema()` derives `workflow/schemas/config.schema.yaml` from these classes (a test keeps the
committed file equal to it). Defaults reproduce the reference (method.md).
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

from modalprompt import methods

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


class ModelFamily(enum.StrEnum):  # modalprompt.bases: one adapter per family
    AUTO = "auto"  # from the model_type in model.llava's config.json
    LLAVA = "llava"  # LlavaForConditionalGeneration (LLaVA-1.5)
    LLAVA_NEXT = "llava_next"  # LlavaNextForConditionalGeneration (LLaVA-NeXT / 1.6, any-resolution tiles)
    QWEN2_5_VL = "qwen2_5_vl"  # Qwen2_5_VLForConditionalGeneration


class Generator(enum.StrEnum):
    NONE = "none"  # the task files are given
    TOY = "toy"  # three toy tasks under <paths.data>/toy (the quick demo)
    MINICOIN = "minicoin"  # mini-CoIN's tasks under <paths.data>/minicoin (modalprompt.bench.minicoin)


# The methods of modalprompt.methods, by name (pipeline.methods; the method a job runs).
MethodName = enum.StrEnum("MethodName", {name.upper(): name for name in methods.REGISTRY})


class Query(enum.StrEnum):
    """What a prompt-pool method matches its keys against (a frozen encoder's feature of the sample)."""

    IMAGE = "image"  # the CLIP image feature, as the papers' frozen image encoder; text-only samples: the text one
    TEXT = "text"  # the CLIP text feature of the instruction (method.text_feature)


class Scorer(enum.StrEnum):  # modalprompt.scoring.scorers.SCORERS
    OPTION_LETTER = "option_letter"  # the option letter an answer names (ScienceQA)
    VQA_SOFT = "vqa_soft"  # VQA soft accuracy over the human answers (TextVQA)
    EXACT_MATCH = "exact_match"  # case-insensitive, trailing periods dropped (GQA)
    EXACT_MATCH_STRICT = (
        "exact_match_strict"  # case-insensitive, nothing else dropped (VizWiz, VQAv2, OCR-VQA)
    )
    CONTAINS = "contains"  # the class name occurs in the answer (ImageNet)
    BOX_IOU = "box_iou"  # IoU > 0.5 with the reference box (Grounding)


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


# ----------------------------------------------------------------------------- the baselines' own settings
# Each method names the sections it reads (methods.Method.sections); its jobs carry exactly those. Fields
# marked training_only are held at their defaults in evaluation jobs (inference never reads them).


def _training_overrides(who: str) -> Any:
    return _help(
        f"Overrides of `training` keys for {who} (applied after the task's own overrides).",
        default_factory=dict,
        overrides=TrainingConfig,
        training_only=True,
    )


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on every linear layer of the LLM (lora_ft, replay, multitask). Defaults: CoIN's LoRA scripts
    (`--lora_r 128 --lora_alpha 256`) and LLaVA's train.py (lora_dropout 0.05, all linear layers of the LLM)."""

    rank: int = _help("LoRA rank r.", default=128, minimum=1)
    alpha: float = _help(
        "LoRA alpha: the update is scaled by alpha / r.", default=256.0, exclusive_minimum=0.0
    )
    dropout: float = _help(
        "Dropout on the LoRA branch's input while training.", default=0.05, minimum=0.0, exclusive_maximum=1.0,
        training_only=True,
    )  # fmt: skip
    target_modules: tuple[str, ...] = _help(
        "Names of the LLM's linear layers that get LoRA (LLaMA's names: every linear layer of the LLM).",
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    )
    training: dict[str, Any] = _training_overrides("the LoRA methods (e.g. their learning rate)")

    def structure(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "target_modules": list(self.target_modules)}


@dataclass(frozen=True)
class ReplayConfig:
    buffer_size: int = _help(
        "Training records of earlier tasks replayed with each stage, split evenly over those tasks; each task's "
        "share is a seeded prefix of a fixed permutation of its records (training.seed).",
        default=1000,
        minimum=0,
        training_only=True,
    )


@dataclass(frozen=True)
class L2PConfig:
    """L2P (Wang et al., CVPR 2022): one shared pool of prompts with keys; the top-k keys by cosine to the
    query pick the prompts. Defaults: the paper and its official code (pool 10, length 5, top 5, pull 0.1)."""

    pool_size: int = _help("M: prompts in the pool.", default=10, minimum=1)
    prompt_length: int = _help("L_p: rows per prompt.", default=5, minimum=1)
    top_k: int = _help("N: prompts selected per sample.", default=5, minimum=1)
    pull_weight: float = _help(
        "lambda: weight of the surrogate loss pulling the selected keys to the query.", default=0.1,
        minimum=0.0, training_only=True,
    )  # fmt: skip
    query: Query = _help("The feature keys are matched against.", default=Query.IMAGE)
    training: dict[str, Any] = _training_overrides("l2p")

    def structure(self) -> dict[str, Any]:
        return {"pool_size": self.pool_size, "prompt_length": self.prompt_length}


@dataclass(frozen=True)
class DualPromptConfig:
    """DualPrompt (Wang et al., ECCV 2022): a G-prompt shared by all tasks and one E-prompt with a key per
    task (chosen by the query at inference). Defaults: the official code (G length 5, E length 5, pull 1.0)."""

    g_length: int = _help("L_g: rows of the shared G-prompt.", default=5, minimum=1)
    e_length: int = _help("L_e: rows of each task's E-prompt.", default=5, minimum=1)
    pull_weight: float = _help(
        "lambda: weight of the matching loss pulling the task's key to the query.", default=1.0, minimum=0.0,
        training_only=True,
    )  # fmt: skip
    query: Query = _help("The feature keys are matched against.", default=Query.IMAGE)
    training: dict[str, Any] = _training_overrides("dualprompt")

    def structure(self) -> dict[str, Any]:
        return {"g_length": self.g_length, "e_length": self.e_length}


@dataclass(frozen=True)
class CodaPromptConfig:
    """CODA-Prompt (Smith et al., CVPR 2023): prompt components with keys and attention vectors, summed with
    weights cos(query * A_m, K_m); each task adds its own components. Defaults: the official code (100
    components over 10 tasks = 10 per task, length 8, orthogonality weight 0)."""

    components_per_task: int = _help("Prompt components each task adds.", default=10, minimum=1)
    prompt_length: int = _help("L_p: rows of the weighted prompt.", default=8, minimum=1)
    ortho_weight: float = _help(
        "Weight of the orthogonality penalty on the current components (0 in the official code).", default=0.0,
        minimum=0.0, training_only=True,
    )  # fmt: skip
    query: Query = _help("The feature keys are matched against.", default=Query.IMAGE)
    training: dict[str, Any] = _training_overrides("coda_prompt")

    def structure(self) -> dict[str, Any]:
        return {"components_per_task": self.components_per_task, "prompt_length": self.prompt_length}


# the config sections of the baselines, by the name a method lists in `sections`
METHOD_SECTIONS: dict[str, type] = {
    "lora": LoraSettings,
    "replay": ReplayConfig,
    "l2p": L2PConfig,
    "dualprompt": DualPromptConfig,
    "coda_prompt": CodaPromptConfig,
}


def for_evaluation(section: T) -> T:
    """The section with its training-only fields at their defaults: what inference reads."""
    defaults = type(section)()
    kept = {
        f.name: getattr(defaults, f.name)
        for f in dataclasses.fields(section)
        if f.metadata.get("training_only")
    }
    return dataclasses.replace(section, **kept)


def parse_options(options: dict[str, Any], where: str = "--settings") -> dict[str, Any]:
    """A job's `options` (the sections its method reads, as JSON) as their typed settings."""
    unknown = sorted(set(options) - set(METHOD_SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: options {unknown} are no method's settings ({sorted(METHOD_SECTIONS)})")
    return {
        name: from_dict(METHOD_SECTIONS[name], value, f"{where}: options.{name}")
        for name, value in options.items()
    }


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
class ExperimentConfig:
    """The whole experiment as read from config.yaml; paths resolved by `load_experiment`."""

    experiment: str = _help(
        "Experiment name (a folder under paths.results).", default="modalprompt", pattern=TASK_NAME_PATTERN
    )
    paths: PathsConfig = _help("Where models, data and results live.", default_factory=PathsConfig)
    model: ModelConfig = _help("The frozen base models.", default_factory=ModelConfig)
    method: MethodConfig = _help("ModalPrompt's knobs.", default_factory=MethodConfig)
    training: TrainingConfig = _help("Training defaults for every task.", default_factory=TrainingConfig)
    lora: LoraSettings = _help(
        "LoRA of the LLM (methods lora_ft, replay, multitask).", default_factory=LoraSettings
    )
    replay: ReplayConfig = _help("The replay buffer (method replay).", default_factory=ReplayConfig)
    l2p: L2PConfig = _help("The L2P prompt pool (method l2p).", default_factory=L2PConfig)
    dualprompt: DualPromptConfig = _help(
        "DualPrompt's G- and E-prompts (method dualprompt).", default_factory=DualPromptConfig
    )
    coda_prompt: CodaPromptConfig = _help(
        "CODA-Prompt's components (method coda_prompt).", default_factory=CodaPromptConfig
    )
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


# ----------------------------------------------------------------------------- per-job settings


@dataclass(frozen=True)
class TrainJob:
    """Exactly what a stage's training job needs (and what makes it rerun when it changes)."""

    method_name: MethodName = _help("The method whose stage this is.", default=MethodName("modalprompt"))
    model: ModelConfig = _help("Base models.", default_factory=ModelConfig)
    method: MethodConfig = _help(
        "The method settings this method trains with (those it ignores at fixed values).",
        default_factory=MethodConfig,
    )
    training: TrainingConfig = _help(
        "This task's training settings, overrides applied.", default_factory=TrainingConfig
    )
    data: DataConfig = _help("Validation settings.", default_factory=DataConfig)
    task: TaskConfig = _help("The task, paths resolved.", default_factory=TaskConfig)
    options: dict[str, Any] = _help(
        "The settings of the method's own config sections (lora, replay, l2p, ...) it trains with.",
        default_factory=dict,
    )
    earlier_tasks: tuple[TaskConfig, ...] = _help(
        "Tasks 1..t-1, paths resolved, for a method that trains on their records too (replay, multitask).",
        default=(),
    )


@dataclass(frozen=True)
class EvalJob:
    """Exactly what one evaluation job needs."""

    method_name: MethodName = _help("The method evaluated.", default=MethodName("modalprompt"))
    model: ModelConfig = _help("Base models.", default_factory=ModelConfig)
    method: MethodConfig = _help(
        "The method settings this method evaluates with (those it ignores at fixed values).",
        default_factory=MethodConfig,
    )
    evaluation: EvaluationConfig = _help(
        "This task's evaluation settings, overrides applied.", default_factory=EvaluationConfig
    )
    data: DataConfig = _help("Validation settings.", default_factory=DataConfig)
    task: TaskConfig = _help("The task, paths resolved.", default_factory=TaskConfig)
    options: dict[str, Any] = _help(
        "The settings of the method's own config sections it evaluates with (training-only ones at defaults).",
        default_factory=dict,
    )


def train_job(
    cfg: ExperimentConfig, name: str, method_name: str = "modalprompt", seed: int | None = None
) -> TrainJob:
    """Training reads the train file and images only: the eval file and the scorer are left out, so
    changing them does not retrain. The method keeps only the method settings it trains with, its own
    sections (`options`, their `training` overrides applied) and, when it trains on them, the earlier tasks.
    A `seed` (pipeline.seeds) replaces training.seed and method.prompt_init_seed."""
    method = methods.get(method_name)
    if not method.trains:
        raise ConfigError(
            f"method {method.name!r} trains nothing (it evaluates {method.prompts_of!r}'s prompts)"
        )
    task = _for_training(cfg.task(name))
    training = cfg.training_for(name)
    for section in method.sections:
        overrides = getattr(getattr(cfg, section), "training", {})
        if overrides:
            merged = {**dataclasses.asdict(training), **overrides}
            training = from_dict(TrainingConfig, merged, f"{cfg.source}: {section}.training (with overrides)")
    knobs = cfg.method
    if seed is not None:
        training = dataclasses.replace(training, seed=seed)
        knobs = dataclasses.replace(knobs, prompt_init_seed=seed)
    options = {section: to_jsonable(getattr(cfg, section)) for section in method.sections}
    earlier = (
        tuple(_for_training(t) for t in cfg.tasks[: cfg.stage_of(name) - 1])
        if method.reads_earlier_tasks
        else ()
    )
    return TrainJob(MethodName(method.name), cfg.model, method.training_settings(knobs), training, cfg.data, task,
                    options, earlier)  # fmt: skip


def eval_job(cfg: ExperimentConfig, name: str, method_name: str = "modalprompt") -> EvalJob:
    """Evaluation reads the eval file and images only; scoring is a later step with its own settings. The
    method keeps only the method settings it evaluates with (its own sections without the training-only
    fields). No seed reaches an evaluation: it reads the checkpoints that seed trained."""
    method = methods.get(method_name)
    task = dataclasses.replace(
        _bare(cfg.task(name)), train_file="", answers_file="", scorer=Scorer.EXACT_MATCH
    )
    options = {section: to_jsonable(for_evaluation(getattr(cfg, section))) for section in method.sections}
    return EvalJob(MethodName(method.name), cfg.model, method.evaluation_settings(cfg.method),
                   cfg.evaluation_for(name), cfg.data, task, options)  # fmt: skip


def _for_training(task: TaskConfig) -> TaskConfig:
    """What training reads of a task: its train file and image root."""
    return dataclasses.replace(_bare(task), eval_file="", answers_file="", scorer=Scorer.EXACT_MATCH)


def _bare(task: TaskConfig) -> TaskConfig:
    """The task without its override dicts (they are already applied in the job's settings)."""
    return dataclasses.replace(task, training={}, evaluation={})


def job_to_json(job: TrainJob | EvalJob) -> str:
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
        return _object_schema(tp, with_defaults)
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


def _object_schema(cls: type, with_defaults: bool) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        if (
            "overrides" in f.metadata
        ):  # override dicts: the overridden keys, no defaults (they would override)
            schema = _object_schema(f.metadata["overrides"], with_defaults=False)
        else:
            schema = _type_schema(hints[f.name], with_defaults)
        schema["description"] = f.metadata["help"]
        schema.update({_SCHEMA_BOUNDS[k]: v for k, v in f.metadata.items() if k in _SCHEMA_BOUNDS})
        if with_defaults:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            schema["default"] = to_jsonable(default)
        properties[f.name] = schema
    return {"type": "object", "additionalProperties": False, "properties": properties}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of config.yaml, derived from ExperimentConfig."""
    schema = _object_schema(ExperimentConfig, with_defaults=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "modalprompt experiment configuration (generated by modalprompt.config.json_schema)",
            **schema}  # fmt: skip
