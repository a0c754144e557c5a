"""How costs grow with the number of learned tasks T, on a small local base (CPU here; --device cuda too).

    python benchmarks/scaling.py --out benchmarks/results/scaling-cpu-2core.json
    python benchmarks/scaling.py --device cuda --hidden 2048 --layers 8 --heads 16 --image-size 192 \
        --repeats 50 --dag-tasks 0 --out benchmarks/results/scaling-h100.json     # 576 image tokens, bf16

1. Inference latency per sample after T = 1, 2, 4, ..., 32 learned tasks, for ModalPrompt (top-K prompts,
   K = 3) and for a naive baseline that prepends every learned prompt (K = T). Timed: the time to the first
   generated token of a batch (the CLIP queries, selection, prompt insertion and the prefill forward; each
   later token attends over the same prefix), per sample; and the selection step's share of it (scoring
   every key and taking the top K). The T values are interleaved: every model is built first, then each of
   `--repeats` cycles times every (T, method) once in a freshly shuffled order, so that the slow and fast
   phases of a shared machine fall on every T alike. Per (T, method): the median and the spread (quartiles,
   10th-90th percentiles) over the repeats. The ratio largest T / smallest T (and largest T / K): the ratio
   of medians with a 95% bootstrap interval, and the paired ratios (same cycle) with their spread. The
   verdict on the target (`--target`, 1.10) is met when the whole interval is at or below it. Beside the
   times, the prefill's model FLOPs per sample (2 N S + 4 L S^2 d over the S positions the LLM runs on,
   plus the LM head on one position), which do not depend on the machine's noise.
2. The Snakemake DAG of a `--dag-tasks` config (0: skip): construction time (`snakemake -n` on an empty
   project, every job planned); with `--noop`, the no-op check of a finished project of that size: every
   output is created empty and marked done by `snakemake --touch` (which also writes Snakemake's metadata
   as a real run does; takes minutes), then `snakemake -n` is timed; with `--done PROJECT`, the no-op check
   of a project you finished for real.
Writes JSON with how it was measured (benchmarks/record.py). `--quick` (for tests) times T = 1 and 2 on a
smaller base, 2 repeats and no DAG: the same code, numbers of no use.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from record import Measurement, relative, write_results

from modalprompt.bases.backbone import load_backbone
from modalprompt.bench.tiny import build_tiny_base
from modalprompt.bench.toy import write_toy_tasks
from modalprompt.config import MethodConfig, ModelConfig
from modalprompt.data.datasets import Collator, ConversationEncoder, EvalDataset, ImagePreprocessor
from modalprompt.model.selection import select_for_inference, task_scores
from modalprompt.model.wrapper import ModalPromptModel, insert_prompts

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def first_token(model: ModalPromptModel, batch) -> tuple[float, float, int]:
    """Seconds to the first token of `batch`, of that the selection step's seconds, and the LLM positions."""
    device = model.backbone.device
    _sync(device)
    start = time.perf_counter()
    q = model.encode(batch)
    _sync(device)
    select_start = time.perf_counter()
    keys, prompts = model.frozen_keys_and_prompts()  # what generate() uses: computed once per stage
    scores = task_scores(q.image, q.text, keys, model.method.lam, q.has_image)
    selected = select_for_inference(scores, model.method.transfer_num)
    _sync(device)
    select_seconds = time.perf_counter() - select_start
    embeds, mask, _, _ = insert_prompts(
        q.embeds, batch.attention_mask, None, model._prefix(selected, prompts), True
    )
    model.llava(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=1)
    _sync(device)
    return time.perf_counter() - start, select_seconds, embeds.shape[1]


def prefill_flops(llava, positions: int) -> int:
    """Model FLOPs of one sample's prefill: decoder linears and attention over `positions`, the LM head on
    the last one (the vision tower's work is the same at every T and left out)."""
    text = llava.config.text_config
    language = llava.model.language_model
    decoder = sum(p.numel() for p in language.parameters()) - language.embed_tokens.weight.numel()
    return (
        2 * decoder * positions
        + 4 * text.num_hidden_layers * positions**2 * text.hidden_size
        + 2 * text.hidden_size * text.vocab_size
    )


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "q25": _quantile(values, 0.25), "q75": _quantile(values, 0.75),
            "p10": _quantile(values, 0.10), "p90": _quantile(values, 0.90)}  # fmt: skip


def ratio(times: dict, top: tuple, bottom: tuple, seed: int, resamples: int = 2000) -> dict:
    """times[top] / times[bottom] over the same repeats: the paired ratios' median and spread (each repeat
    measured both within one cycle, so slow phases of a shared machine hit both), and a 95% bootstrap
    interval of the ratio of medians (repeats resampled with replacement, seeded)."""
    a, b = times[top], times[bottom]
    paired = [x / y for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    boot = []
    for _ in range(resamples):
        picks = [rng.randrange(len(a)) for _ in range(len(a))]
        boot.append(statistics.median(a[i] for i in picks) / statistics.median(b[i] for i in picks))
    return {"of_medians": statistics.median(a) / statistics.median(b), "paired": spread(paired),
            "bootstrap_95": [_quantile(boot, 0.025), _quantile(boot, 0.975)]}  # fmt: skip


def latency(
    backbone, batch, tasks: list[int], k: int, repeats: int, prefix: int, seed: int
) -> tuple[list, dict]:
    """Every (T, method) model is built first; then each repeat times all of them once, in a freshly
    shuffled order, so that the machine's slow and fast phases spread over every T alike."""
    models = {}
    for t in tasks:
        for name, transfer in (("modalprompt", min(k, t)), ("naive_all_prompts", t)):
            model = ModalPromptModel(
                backbone, MethodConfig(prefix_length=prefix, transfer_num=max(1, transfer))
            )
            for i in range(t):
                model.add_task(f"task{i}", seed=i)
            model.eval()
            first_token(model, batch)  # warm-up (and the frozen keys and prompts, computed once)
            models[(t, name)] = (model, transfer)
    runs: dict[tuple, list] = {key: [] for key in models}
    rng = random.Random(seed)
    for _ in range(repeats):
        order = list(models)
        rng.shuffle(order)
        for key in order:
            runs[key].append(first_token(models[key][0], batch))
    rows, times = [], {}
    for (t, name), (_, transfer) in models.items():
        times[(t, name)] = [1000 * r[0] / len(batch.keys) for r in runs[(t, name)]]
        positions = runs[(t, name)][0][2]
        rows.append({"tasks": t, "method": name, "prompts_in_prefix": transfer, "prefix_tokens": transfer * prefix,
                     "llm_positions": positions,
                     "prefill_gflop_per_sample": prefill_flops(backbone.llava, positions) / 1e9,
                     "ms_per_sample": spread(times[(t, name)]),
                     "selection_share": statistics.median(r[1] / r[0] for r in runs[(t, name)])})  # fmt: skip
    return rows, times


def dag_times(tasks: int, noop: bool, done: Path | None) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    snakefile = str(ROOT / "workflow" / "Snakefile")

    def snakemake(folder: Path, *flags: str) -> tuple[float, str]:
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "snakemake", "-s", snakefile, "--configfile",
                              str(folder / "config.yaml"), "--directory", str(folder), *flags],
                             cwd=folder, env=env, capture_output=True, text=True)  # fmt: skip
        return round(time.perf_counter() - start, 2), run.stdout + run.stderr

    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        raw = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
        raw["paths"] = {"models": "models", "data": "data", "results": "results"}
        toy = raw["tasks"]
        raw["tasks"] = [{**toy[i % len(toy)], "name": f"task{i:02d}"} for i in range(tasks)]
        (project / "config.yaml").write_text(yaml.safe_dump(raw))
        seconds, log = snakemake(project, "-n")
        result[f"dag_{tasks}_tasks_seconds"] = seconds
        total = re.search(r"^total\s+(\d+)$", log, re.MULTILINE)
        result[f"dag_{tasks}_tasks_jobs"] = int(total.group(1)) if total else None
        if noop:
            # `--touch` only marks existing files: a first pass names every missing output, they are
            # created empty, and a second pass marks them done in DAG order and writes the metadata.
            _, log = snakemake(project, "--touch", "--cores", "1")
            missing = re.findall(r"Output files not touched because they don't exist: (.*)", log)
            for path in {p.strip() for line in missing for p in line.split(", ")}:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).touch()
            snakemake(project, "--touch", "--cores", "1")
            seconds, log = snakemake(project, "-n")
            result[f"noop_{tasks}_tasks_seconds"] = seconds
            result[f"noop_{tasks}_tasks_nothing_to_do"] = "Nothing to be done" in log
    if done is not None:
        seconds, log = snakemake(done, "-n")
        result["noop_done_seconds"] = seconds
        result["noop_done_project"] = relative(done)
        result["noop_done_nothing_to_do"] = "Nothing to be done" in log
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 2, 3, 4, 8, 16, 32])
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--prefix-length", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256, help="LLM hidden size of the random base")
    parser.add_argument("--layers", type=int, default=2, help="LLM decoder layers")
    parser.add_argument("--heads", type=int, default=4, help="LLM attention heads (key/value heads: half)")
    parser.add_argument(
        "--image-size", type=int, default=32, help="pixels; 8-pixel patches: 192 -> 576 tokens"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=40, help="cycles over every (T, method), shuffled")
    parser.add_argument("--seed", type=int, default=0, help="of the shuffled orders and the bootstrap")
    parser.add_argument(
        "--target",
        type=float,
        default=1.10,
        help="met when the largest T costs at most this times the smallest",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dag-tasks", type=int, default=32, help="tasks in the DAG timings (0: skip them)")
    parser.add_argument("--noop", action="store_true", help="also time the no-op check of a finished project")
    parser.add_argument("--done", type=Path, help="a finished project folder, for the no-op check time")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="for tests: T = 1, 2 on a smaller base, no DAG")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.repeats, args.hidden, args.layers, args.batch_size = [1, 2], 2, 32, 1, 2
        args.dag_tasks, args.noop, args.done = 0, False, None

    with Measurement() as measured, tempfile.TemporaryDirectory() as tmp:
        llava, clip = build_tiny_base(Path(tmp) / "llava", Path(tmp) / "clip", seed=0, hidden=args.hidden,
                                      layers=args.layers, heads=args.heads, image_size=args.image_size)  # fmt: skip
        backbone = load_backbone(ModelConfig(llava=str(llava), clip=str(clip), device=args.device))
        folder = write_toy_tasks(Path(tmp) / "toy", seed=0, train_size=1, test_size=args.batch_size)["colors"]
        encoder = ConversationEncoder(backbone.tokenizer, backbone.clip_tokenizer, backbone.image_token_id,
                                      backbone.num_image_tokens, max_length=10**9)  # fmt: skip
        data = EvalDataset(folder / "test.json", folder, encoder, ImagePreprocessor(backbone.image_processor))
        collate = Collator(
            backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=True
        )
        batch = collate([data[i] for i in range(len(data))]).to(backbone.device)
        rows, times = latency(
            backbone, batch, args.tasks, args.k, args.repeats, args.prefix_length, args.seed
        )
        dag = dag_times(args.dag_tasks, args.noop, args.done) if args.dag_tasks else {}
    parameters = sum(p.numel() for p in backbone.llava.parameters())
    low, high = min(args.tasks), max(args.tasks)
    ratios = {}
    for method in ("modalprompt", "naive_all_prompts"):
        ratios[f"{method}_T{high}_vs_T{low}"] = ratio(times, (high, method), (low, method), args.seed)
        if args.k in args.tasks and args.k not in (low, high):
            ratios[f"{method}_T{high}_vs_T{args.k}"] = ratio(
                times, (high, method), (args.k, method), args.seed
            )
    headline = ratios[f"modalprompt_T{high}_vs_T{low}"]
    target = {
        "rule": f"ModalPrompt's time per sample at T = {high} at most {args.target} x T = {low}: met when the whole "
        "95% bootstrap interval of the ratio of medians is at or below it, not met when it is wholly above, "
        "undecided otherwise",
        "max_ratio": args.target,
        "ratio_of_medians": headline["of_medians"],
        "bootstrap_95": headline["bootstrap_95"],
        "verdict": "met"
        if headline["bootstrap_95"][1] <= args.target
        else "not met"
        if headline["bootstrap_95"][0] > args.target
        else "undecided",
    }
    report = measured.record(None if argv is None else [__file__, *argv])
    report["machine"] |= {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
        "threads": torch.get_num_threads(),
    }
    report |= {
        "quick": args.quick,
        "base": {
            "llava_parameters": parameters,
            "hidden": args.hidden,
            "layers": args.layers,
            "heads": args.heads,
            "dtype": str(backbone.dtype).removeprefix("torch."),
            "image_tokens": backbone.num_image_tokens,
        },
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "latency": rows,
        "ratios": ratios,
        "target": target,
        **dag,
    }
    first = {r["method"]: r for r in rows if r["tasks"] == low}
    for r in rows:  # against the same method at the smallest T (medians; FLOPs have no noise)
        r["time_vs_first"] = r["ms_per_sample"]["median"] / first[r["method"]]["ms_per_sample"]["median"]
        r["flops_vs_first"] = r["prefill_gflop_per_sample"] / first[r["method"]]["prefill_gflop_per_sample"]
    print(
        f"{report['machine']['device']}: {parameters / 1e6:.1f}M-parameter LLaVA, {report['base']['dtype']}, "
        f"{backbone.num_image_tokens} image tokens, batch {args.batch_size}, {args.repeats} interleaved repeats"
    )
    print(
        f"{'T':>3} {'method':>18} {'prefix':>6} {'ms/sample':>10} {'p10-p90':>15} {'vs T=' + str(low):>7} "
        f"{'GFLOP':>8} {'vs T=' + str(low):>7} {'selection':>9}"
    )
    for r in sorted(rows, key=lambda r: (r["method"], r["tasks"])):
        ms = r["ms_per_sample"]
        print(f"{r['tasks']:>3} {r['method']:>18} {r['prefix_tokens']:>6} {ms['median']:>10.3f} "
              f"{ms['p10']:>7.3f}-{ms['p90']:<7.3f} {r['time_vs_first']:>7.2f} {r['prefill_gflop_per_sample']:>8.3f} "
              f"{r['flops_vs_first']:>7.2f} {100 * r['selection_share']:>8.1f}%")  # fmt: skip
    for name, x in ratios.items():
        print(f"{name}: ratio of medians {x['of_medians']:.3f}, 95% bootstrap {x['bootstrap_95'][0]:.3f}-"
              f"{x['bootstrap_95'][1]:.3f}, paired median {x['paired']['median']:.3f} "
              f"(p10-p90 {x['paired']['p10']:.3f}-{x['paired']['p90']:.3f})")  # fmt: skip
    print(f"target: {target['verdict']} ({target['rule']})")
    print({k: v for k, v in report.items() if k.startswith(("dag", "noop"))})
    if args.out:
        write_results(args.out, report)


if __name__ == "__main__":
    main()
