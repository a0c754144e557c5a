"""Core costs on tiny local models (CPU): train-step time, stage-file bytes, generation samples/s.

    python benchmarks/core.py --out benchmarks/results/core-cpu-2core.json   # a minute or two on 2 cores

Builds the tiny base and toy tasks in a temp folder (nothing downloaded), trains one stage per task,
and evaluates after the last stage. Prints a table and writes JSON with how it was measured
(benchmarks/record.py). `--quick` (for tests) shrinks the base, the steps and the toy tasks: the same code,
numbers of no use.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from record import Measurement, write_results

from modalprompt.bases.backbone import load_backbone
from modalprompt.bench.tiny import build_tiny_base
from modalprompt.bench.toy import write_toy_tasks
from modalprompt.config import EvaluationConfig, MethodConfig, ModelConfig, TaskConfig, TrainingConfig
from modalprompt.model.checkpoint import META_FILE, TENSORS_FILE
from modalprompt.run.evaluate import evaluate_stage
from modalprompt.run.train import train_stage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=64, help="LLM hidden size of the tiny base")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps timed per stage")
    parser.add_argument("--eval-batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, help="write results as JSON here")
    parser.add_argument("--quick", action="store_true", help="for tests: a smaller base, 2 steps, tiny tasks")
    args = parser.parse_args(argv)
    train_size, test_size = 64, 32
    if args.quick:
        args.hidden, args.steps, args.max_new_tokens = 16, 2, 2
        train_size, test_size = 2 * args.batch_size, 4
    torch.set_num_threads(args.threads)

    with Measurement() as measured, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        llava, clip = build_tiny_base(root / "base" / "llava", root / "base" / "clip", hidden=args.hidden)
        folders = write_toy_tasks(root / "data", train_size=train_size, test_size=test_size)
        backbone = load_backbone(ModelConfig(llava=str(llava), clip=str(clip), device="cpu"))
        method = MethodConfig()
        training = TrainingConfig(epochs=100, batch_size=args.batch_size, lr=1e-2, max_steps=args.steps)
        evaluation = EvaluationConfig(batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens)
        tasks = [
            TaskConfig(
                name=n, train_file=str(f / "train.json"), eval_file=str(f / "test.json"), image_root=str(f)
            )
            for n, f in folders.items()
        ]
        checkpoints, stages = [], []
        for task in tasks:
            times: list[float] = []
            last = [time.perf_counter()]

            def on_step(_metrics, times=times, last=last) -> None:
                now = time.perf_counter()
                times.append(now - last[0])
                last[0] = now

            result = train_stage(
                backbone,
                method,
                training,
                task,
                checkpoints,
                root / "ckpt" / task.name,
                on_step=on_step,
                progress=False,
            )
            checkpoints.append(result.checkpoint)
            steady = times[3:] or times  # the first steps include loader start-up
            stages.append(
                {
                    "task": task.name,
                    "stage": result.stage,
                    "step_ms_median": 1000 * statistics.median(steady),
                    "samples_per_s": args.batch_size / statistics.median(steady),
                    "tensor_file_bytes": (result.checkpoint / TENSORS_FILE).stat().st_size,
                    "meta_file_bytes": (result.checkpoint / META_FILE).stat().st_size,
                }
            )
        generation = evaluate_stage(backbone, method, evaluation, tasks[0], checkpoints, progress=False)
        n_params = sum(p.numel() for p in backbone.llava.parameters())

    report = measured.record(None if argv is None else [__file__, *argv])
    report["machine"]["threads"] = torch.get_num_threads()
    report |= {
        "quick": args.quick,
        "llava_parameters": n_params,
        "hidden": args.hidden,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "prefix_length": method.prefix_length,
        "stages": stages,
        "generation": {
            "samples": len(generation.predictions),
            "batch_size": args.eval_batch_size,
            "max_new_tokens": args.max_new_tokens,
            "samples_per_s": generation.samples_per_s,
        },
    }
    print(
        f"tiny LLaVA: {n_params:,} parameters, hidden {args.hidden}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print(f"{'stage':>5} {'task':<8} {'step ms':>8} {'samples/s':>10} {'tensors B':>10} {'meta B':>7}")
    for s in stages:
        print(
            f"{s['stage']:>5} {s['task']:<8} {s['step_ms_median']:>8.1f} {s['samples_per_s']:>10.1f} "
            f"{s['tensor_file_bytes']:>10,} {s['meta_file_bytes']:>7,}"
        )
    print(
        f"generation after stage {len(stages)}: {generation.samples_per_s:.1f} samples/s "
        f"(batch {args.eval_batch_size}, {args.max_new_tokens} new tokens)"
    )
    if args.out:
        write_results(args.out, report)


if __name__ == "__main__":
    main()
