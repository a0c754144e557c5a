"""evaluate_stage: batched greedy generation with left padding and a KV cache, per-sample selection."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from modalprompt.run.evaluate import evaluate_stage
from modalprompt.run.train import train_stage


def test_batched_generation_equals_one_sample_at_a_time(
    backbone, method, training, evaluation, toy_tasks, tmp_path
):
    checkpoints = []
    for name in ("colors", "count"):
        checkpoints.append(
            train_stage(
                backbone, method, training, toy_tasks[name], checkpoints, tmp_path / name, progress=False
            ).checkpoint
        )
    task = toy_tasks["count"]
    batched = evaluate_stage(
        backbone,
        method,
        dataclasses.replace(evaluation, batch_size=6),
        task,
        checkpoints,
        tmp_path / "batched.jsonl",
        progress=False,
    )
    single = evaluate_stage(
        backbone, method, dataclasses.replace(evaluation, batch_size=1), task, checkpoints, progress=False
    )
    assert [p.prediction for p in batched.predictions] == [p.prediction for p in single.predictions]
    assert [p.selected for p in batched.predictions] == [p.selected for p in single.predictions]
    rows = [json.loads(line) for line in (tmp_path / "batched.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [f"count-{i}" for i in range(16, 22)]
    assert all(set(r) == {"question_id", "prediction", "selected", "scores"} for r in rows)
    assert all(sorted(r["selected"]) == ["colors", "count"] for r in rows)  # t = 2 < K: both, by score


def test_zero_shot_without_checkpoints(backbone, method, evaluation, toy_tasks):
    result = evaluate_stage(backbone, method, evaluation, toy_tasks["colors"], [], progress=False)
    assert result.stage == 0 and len(result.predictions) == 6
    assert all(p.selected == [] and p.scores == {} for p in result.predictions)


def test_selected_order_is_ascending_score(backbone, method, training, evaluation, toy_tasks, tmp_path):
    checkpoints = []
    for i, name in enumerate(("colors", "shapes", "count", "colors")):
        task = dataclasses.replace(toy_tasks[name], name=f"{name}{i}")
        checkpoints.append(
            train_stage(
                backbone,
                method,
                dataclasses.replace(training, max_steps=1),
                task,
                checkpoints,
                tmp_path / str(i),
                progress=False,
            ).checkpoint
        )
    result = evaluate_stage(backbone, method, evaluation, toy_tasks["shapes"], checkpoints, progress=False)
    for p in result.predictions:
        chosen = [p.scores[name] for name in p.selected]
        assert len(chosen) == 3 and chosen == sorted(chosen)
        assert min(chosen) >= sorted(p.scores.values())[-3]


def test_skipped_bad_records_are_written_and_scored_apart(
    backbone, method, training, evaluation, toy_tasks, tmp_path
):
    from modalprompt.config import DataConfig
    from modalprompt.errors import DataError
    from modalprompt.scoring.scorers import score_predictions

    task = toy_tasks["colors"]
    records = json.loads(Path(task.eval_file).read_text())
    records[1]["image"] = "images/gone.png"
    records[2]["answer"] = ""
    bad_file = tmp_path / "test.json"
    bad_file.write_text(json.dumps(records))
    bad_task = dataclasses.replace(task, eval_file=str(bad_file))
    try:
        evaluate_stage(backbone, method, evaluation, bad_task, [], progress=False)
        raise AssertionError("bad records must stop the evaluation by default")
    except DataError as err:
        assert "2 of 6 records have problems" in str(err)
    out = tmp_path / "p.jsonl"
    result = evaluate_stage(
        backbone,
        method,
        evaluation,
        bad_task,
        [],
        out,
        data=DataConfig(skip_bad_records=True),
        progress=False,
    )
    assert len(result.predictions) == 4 and len(result.skipped) == 2
    scored = score_predictions("exact_match", out, bad_file)
    assert scored.scored == 4 and [s["question_id"] for s in scored.skipped] == ["colors-17", "colors-18"]


def test_oracle_ranks_each_samples_own_task_first(
    backbone, method, training, evaluation, toy_tasks, tmp_path
):
    checkpoints = []
    for i, name in enumerate(("colors", "shapes", "count", "colors")):
        task = dataclasses.replace(toy_tasks[name], name=f"{name}{i}")
        checkpoints.append(train_stage(backbone, method, dataclasses.replace(training, max_steps=1), task,
                                       checkpoints, tmp_path / str(i), progress=False).checkpoint)  # fmt: skip
    own = dataclasses.replace(toy_tasks["shapes"], name="shapes1")
    oracle = evaluate_stage(
        backbone, method, evaluation, own, checkpoints, method_name="oracle", progress=False
    )
    assert all(p.selected[-1] == "shapes1" and len(p.selected) == 3 for p in oracle.predictions)
    for p in oracle.predictions:  # the rest still by score, ascending
        rest = [p.scores[n] for n in p.selected[:-1]]
        assert rest == sorted(rest)
    unseen = evaluate_stage(backbone, method, evaluation, toy_tasks["count"], checkpoints[:1],
                            method_name="oracle", progress=False)  # fmt: skip
    assert all(p.selected == ["colors0"] for p in unseen.predictions)  # an unlearned task: plain selection


def test_seq_prompt_continues_one_shared_prompt(backbone, method, training, evaluation, toy_tasks, tmp_path):
    import safetensors.torch

    first = train_stage(backbone, method, training, toy_tasks["colors"], [], tmp_path / "1",
                        method_name="seq_prompt", progress=False)  # fmt: skip
    frozen = dataclasses.replace(training, lr=1e-30, warmup_ratio=0.0)  # a step that changes nothing
    second = train_stage(backbone, method, frozen, toy_tasks["shapes"], [first.checkpoint], tmp_path / "2",
                         method_name="seq_prompt", progress=False)  # fmt: skip
    a = safetensors.torch.load_file(first.checkpoint / "task.safetensors")
    b = safetensors.torch.load_file(second.checkpoint / "task.safetensors")
    assert all(torch.allclose(a[k], b[k]) for k in a)  # stage 2 started from stage 1's prompt
    assert second.history[-1].loss == pytest.approx(second.history[-1].ce)  # no alignment terms
    result = evaluate_stage(backbone, method, evaluation, toy_tasks["colors"], [first.checkpoint, second.checkpoint],
                            method_name="seq_prompt", progress=False)  # fmt: skip
    assert all(p.selected == [] and p.scores == {} for p in result.predictions)
    with pytest.raises(ValueError, match="zero_shot evaluates the base model"):
        evaluate_stage(backbone, method, evaluation, toy_tasks["colors"], [first.checkpoint],
                       method_name="zero_shot", progress=False)  # fmt: skip
