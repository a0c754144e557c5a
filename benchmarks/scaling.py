"""How costs grow with the number of learned tasks T, on a tiny local base (CPU here; --device cuda too).

    python benchmarks/scaling.py --out benchmarks/results/scaling-cpu-2core.json

1. Inference latency per sample after T = 1, 2, 4, ..., 32 learned tasks, for ModalPrompt (top-K prompts,
   K = 3) and for a naive baseline that prepends every learned prompt (K = T). Timed: the time to the first
   generated token of a batch (the CLIP queries, selection, prompt insertion and the prefill forward; each
   later token attends over the same prefix), median over repeats, per sample; and the selection step's
   share of it (scoring every key and taking the top K).
2. The Snakemake DAG of a 32-task config: construction time (`snakemake -n` on an empty project, every job
   planned) and, with `--done PROJECT`, the no-op check of a finished project (`snakemake -n` again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from modalprompt.backbone import load_backbone
from modalprompt.config import MethodConfig, ModelConfig
from modalprompt.data import Collator, ConversationEncoder, EvalDataset, ImagePreprocessor
from modalprompt.model import ModalPromptModel, insert_prompts
from modalprompt.selection import select_for_inference, task_scores
from modalprompt.tiny import build_tiny_base, write_toy_tasks

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def first_token(model: ModalPromptModel, batch) -> tuple[float, float]:
    """Seconds to the first token of `batch`, and of that the selection step's seconds."""
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
    return time.perf_counter() - start, select_seconds


def latency(backbone, batch, tasks: list[int], k: int, repeats: int, prefix: int) -> list[dict]:
    rows = []
    for t in tasks:
        for name, transfer in (("modalprompt", min(k, t)), ("naive_all_prompts", t)):
            model = ModalPromptModel(
                backbone, MethodConfig(prefix_length=prefix, transfer_num=max(1, transfer))
            )
            for i in range(t):
                model.add_task(f"task{i}", seed=i)
            model.eval()
            first_token(model, batch)  # warm-up
            runs = [first_token(model, batch) for _ in range(repeats)]
            total = statistics.median(r[0] for r in runs)
            select = statistics.median(r[1] for r in runs)
            rows.append({"tasks": t, "method": name, "prompts_in_prefix": transfer, "prefix_tokens": transfer * prefix,
                         "ms_per_sample": 1000 * total / len(batch.keys), "selection_share": select / total})  # fmt: skip
    return rows


def dag_times(tasks: int, done: Path | None) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    snakemake = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "workflow" / "Snakefile"),
        "-n",
    ]
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        raw = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
        raw["paths"] = {"models": "models", "data": "data", "results": "results"}
        toy = raw["tasks"]
        raw["tasks"] = [{**toy[i % len(toy)], "name": f"task{i:02d}"} for i in range(tasks)]
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(raw))
        start = time.perf_counter()
        planned = subprocess.run([*snakemake, "--configfile", f"{tmp}/config.yaml", "--directory", tmp], cwd=tmp,
                                 env=env, capture_output=True, text=True)  # fmt: skip
        result[f"dag_{tasks}_tasks_seconds"] = round(time.perf_counter() - start, 2)
        total = re.search(r"^total\s+(\d+)$", planned.stdout, re.MULTILINE)
        result[f"dag_{tasks}_tasks_jobs"] = int(total.group(1)) if total else None
    if done is not None:
        start = time.perf_counter()
        noop = subprocess.run([*snakemake, "--configfile", str(done / "config.yaml"), "--directory", str(done)],
                              cwd=done, env=env, capture_output=True, text=True)  # fmt: skip
        result["noop_seconds"] = round(time.perf_counter() - start, 2)
        result["noop_project"] = str(done)
        result["noop_nothing_to_do"] = "Nothing to be done" in noop.stdout + noop.stderr
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--prefix-length", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dag-tasks", type=int, default=32)
    parser.add_argument("--done", type=Path, help="a finished project folder, for the no-op check time")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        llava, clip = build_tiny_base(Path(tmp) / "llava", Path(tmp) / "clip", seed=0, hidden=args.hidden)
        backbone = load_backbone(ModelConfig(llava=str(llava), clip=str(clip), device=args.device))
        folder = write_toy_tasks(Path(tmp) / "toy", seed=0, train_size=1, test_size=args.batch_size)["colors"]
        encoder = ConversationEncoder(backbone.tokenizer, backbone.clip_tokenizer, backbone.image_token_id,
                                      backbone.num_image_tokens, max_length=10**9)  # fmt: skip
        data = EvalDataset(folder / "test.json", folder, encoder, ImagePreprocessor(backbone.image_processor))
        collate = Collator(
            backbone.tokenizer.pad_token_id, backbone.clip_tokenizer.pad_token_id, left_pad=True
        )
        batch = collate([data[i] for i in range(len(data))]).to(backbone.device)
        rows = latency(backbone, batch, args.tasks, args.k, args.repeats, args.prefix_length)
    parameters = sum(p.numel() for p in backbone.llava.parameters())
    report = {
        "machine": {
            "platform": platform.platform(),
            "device": args.device,
            "threads": torch.get_num_threads(),
        },
        "base": {
            "llava_parameters": parameters,
            "hidden": args.hidden,
            "image_tokens": backbone.num_image_tokens,
        },
        "batch_size": args.batch_size,
        "latency": rows,
        **dag_times(args.dag_tasks, args.done),
    }
    one = {r["method"]: r["ms_per_sample"] for r in rows if r["tasks"] == args.tasks[0]}
    print(f"{'T':>3} {'method':>18} {'prefix':>6} {'ms/sample':>10} {'vs T=1':>7} {'selection':>9}")
    for r in rows:
        print(f"{r['tasks']:>3} {r['method']:>18} {r['prefix_tokens']:>6} {r['ms_per_sample']:>10.3f} "
              f"{r['ms_per_sample'] / one[r['method']]:>7.2f} {100 * r['selection_share']:>8.1f}%")  # fmt: skip
    print({k: v for k, v in report.items() if k.startswith(("dag", "noop"))})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
