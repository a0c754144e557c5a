"""`evaluate_stage`: batched greedy generation over a task's test set with the prompts of stages 1..s."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from modalprompt import methods
from modalprompt.bases.backbone import Backbone
from modalprompt.config import DataConfig, EvaluationConfig, MethodConfig, ProgressConfig, TaskConfig
from modalprompt.cost import JobCost, measure, reset_peak_memory
from modalprompt.data.datasets import Collator, EvalDataset
from modalprompt.data.validation import Problem
from modalprompt.files import atomic_write_text
from modalprompt.layout import cost_file_of
from modalprompt.run.progress import Progress


@dataclass
class Prediction:
    question_id: Any
    prediction: str
    selected: list[str]  # task names of the chosen prompts, ascending score (most similar last)
    scores: dict[str, float]  # selection score of every learned task


@dataclass
class EvalResult:
    task: str
    stage: int
    predictions: list[Prediction]
    seconds: float
    skipped: list[Problem] = field(default_factory=list)  # bad records left out (data.skip_bad_records)
    cost: JobCost | None = None  # what the job cost (modalprompt/cost.py)

    @property
    def samples_per_s(self) -> float:
        return len(self.predictions) / self.seconds if self.seconds > 0 else 0.0


def evaluate_stage(
    backbone: Backbone,
    method: MethodConfig,
    evaluation: EvaluationConfig,
    task: TaskConfig,
    checkpoints: Sequence[Path],
    out_file: Path | None = None,
    *,
    data: DataConfig = DataConfig(),  # noqa: B008 (frozen dataclass)
    method_name: str = "modalprompt",
    progress: bool = True,
    progress_every: ProgressConfig = ProgressConfig(),  # noqa: B008 (frozen dataclass)
    options: dict[str, Any] | None = None,
    started: float | None = None,
) -> EvalResult:
    """Generate answers for `task`'s eval file after the stage the `checkpoints` end with, of method
    `method_name`, which decides what is loaded and how prompts are chosen (`options`: its own sections,
    typed); write JSONL if `out_file`, and beside it what the job cost (layout.cost_file_of). `started`: when
    the job began, on time.perf_counter's clock (cost.job_started; default: now)."""
    started = time.perf_counter() if started is None else started
    reset_peak_memory(backbone.device)
    method_impl = methods.get(method_name)
    model = method_impl.build_model(backbone, method_impl.evaluation_settings(method), options or {})
    try:
        names = method_impl.load_for_evaluation(model, [Path(c) for c in checkpoints])
        result = _generate_all(backbone, method_impl, model, names, evaluation, task, out_file, data, progress,
                               progress_every)  # fmt: skip
    finally:
        method_impl.release(model)  # e.g. LoRA's layers out of the base again
    result.cost = measure(backbone.device, 1, started, len(result.predictions))
    if out_file is not None:
        record = {"task": result.task, "stage": result.stage, **result.cost.to_json()}
        atomic_write_text(cost_file_of(Path(out_file)), json.dumps(record, indent=1) + "\n")
    return result


def _generate_all(backbone, method_impl, model, names, evaluation, task, out_file, data, progress,
                  progress_every) -> EvalResult:  # fmt: skip
    forced = method_impl.forced_task(names, task.name)  # e.g. the oracle's own task, ranked first
    encoder = backbone.conversation_encoder(max_length=10**9)  # the base family's template
    dataset = EvalDataset(
        Path(task.eval_file),
        Path(task.image_root),
        encoder,
        backbone.image_preprocessor(),
        evaluation.max_samples,
        skip_bad=data.skip_bad_records,
        check_images=data.check_images,
    )
    if dataset.skipped:
        print(f"modalprompt: skipping bad records as configured\n{dataset.report.summary()}", file=sys.stderr)
    collate = Collator(backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=True)
    loader = DataLoader(dataset, batch_size=evaluation.batch_size, collate_fn=collate)
    predictions: list[Prediction] = []
    bar = Progress(f"evaluate stage {len(names)} {task.name}", len(dataset), "sample", enabled=progress,
                   every_steps=progress_every.every_steps * evaluation.batch_size,
                   every_seconds=progress_every.every_seconds)  # fmt: skip
    start = time.perf_counter()
    for batch in loader:
        batch = batch.to(backbone.device)
        force = None if forced is None else torch.full((len(batch.keys),), forced)
        out = model.generate(batch, evaluation.max_new_tokens, force_task=force)
        texts = backbone.tokenizer.batch_decode(out.token_ids, skip_special_tokens=True)
        for i, key in enumerate(batch.keys):
            chosen, scores = [], {}  # a method without per-sample selection records none
            if method_impl.selects:
                chosen = [names[j] for j in out.selected[i].tolist()]
                scores = {n: round(float(v), 6) for n, v in zip(names, out.scores[i].tolist(), strict=True)}
            predictions.append(Prediction(key, texts[i].strip(), chosen, scores))
        bar.update(len(batch.keys), samples_per_s=len(predictions) / max(time.perf_counter() - start, 1e-9))
    bar.close()
    seconds = time.perf_counter() - start
    if out_file is not None:
        # skipped records get a row too, so that scoring can tell "skipped as bad" from "missing"
        predicted = {p.question_id for p in predictions}
        skipped = {
            p.record_id: str(p)
            for p in dataset.skipped
            if isinstance(p.record_id, str | int) and p.record_id not in predicted  # not a duplicate's twin
        }
        rows = [asdict(p) for p in predictions] + [
            {"question_id": q, "skipped": why} for q, why in skipped.items()
        ]
        atomic_write_text(Path(out_file), "".join(json.dumps(row) + "\n" for row in rows))
    return EvalResult(task.name, len(names), predictions, seconds, dataset.skipped)
