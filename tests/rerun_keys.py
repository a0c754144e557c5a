"""The rerun keys of every job of every shipped config (config.yaml, config/*.yaml), as short hashes.

Snakemake reruns a job when one of its params changes. The params that the package computes are each
stage's training settings and each evaluation's settings (workflow/rules/common.smk: train_settings,
eval_settings), a scoring's scorer and sample cap, and the base's preparation settings. This dumps them
for every seed, stage and task of each config, for every method that some shipped config runs, so that a
change of the code that should move no job (a restructuring) can be checked to keep every key:

    python tests/rerun_keys.py --write tests/rerun_keys.json   # record the keys of this checkout
    python tests/rerun_keys.py --check tests/rerun_keys.json   # compare (tests/test_rerun_keys.py does)

The checkout's own path is replaced by `<checkout>` (configs resolve paths against their folder), so the
keys compare across clones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from modalprompt import methods
from modalprompt.config import job_to_json, tiny_family
from modalprompt.experiment import load_experiment
from modalprompt.jobs import eval_job, job_settings, train_job

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "config.yaml", *sorted((ROOT / "config").glob("*.yaml"))]


def _digest(text: str) -> str:
    return hashlib.sha256(text.replace(str(ROOT), "<checkout>").encode()).hexdigest()[:16]


def shipped_methods() -> list[str]:
    """Every method some shipped config runs, in first-seen order."""
    names: dict[str, None] = {}
    for path in CONFIGS:
        names.update(dict.fromkeys(str(m) for m in load_experiment(path).pipeline.methods))
    return list(names)


def config_keys(path: Path, method_names: list[str]) -> dict[str, str]:
    """Job name -> hash of its rerun key, for one config."""
    cfg = load_experiment(path)
    tasks = [t.name for t in cfg.tasks]
    keys = {
        "prepare/tiny_family": _digest(tiny_family(cfg.model.family)),
        "prepare/pretrain": _digest(job_to_json(cfg.model.pretrain)),
    }
    for task in tasks:
        keys[f"score/{task}"] = _digest(
            json.dumps([str(cfg.task(task).scorer), cfg.evaluation_for(task).max_samples])
        )
    for name in method_names:
        for task in tasks:  # an evaluation's key is the same at every stage and seed
            keys[f"evaluate/{name}/{task}"] = _digest(job_settings(eval_job(cfg, task, name)))
        if not methods.get(name).trains:
            continue
        for seed in cfg.pipeline.seeds or [None]:
            for task in tasks:
                keys[f"train/{name}/seed-{seed}/{task}"] = _digest(
                    job_settings(train_job(cfg, task, name, seed))
                )
    return keys


def all_keys() -> dict[str, dict[str, str]]:
    names = shipped_methods()
    return {str(path.relative_to(ROOT)): config_keys(path, names) for path in CONFIGS}


def compare(recorded: dict[str, dict[str, str]], current: dict[str, dict[str, str]]) -> list[str]:
    """The differences, one line each (empty: identical)."""
    lines = []
    for config in sorted(set(recorded) | set(current)):
        before, after = recorded.get(config, {}), current.get(config, {})
        lines += [f"{config}: {job} only recorded" for job in sorted(set(before) - set(after))]
        lines += [f"{config}: {job} only now" for job in sorted(set(after) - set(before))]
        lines += [
            f"{config}: {job} changed"
            for job in sorted(set(before) & set(after))
            if before[job] != after[job]
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", type=Path, help="write the keys of this checkout to this file")
    action.add_argument("--check", type=Path, help="compare the keys of this checkout with this file")
    args = parser.parse_args(argv)
    current = all_keys()
    count = sum(len(keys) for keys in current.values())
    if args.write:
        args.write.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        print(f"{count} rerun keys of {len(current)} configs written to {args.write}")
        return 0
    differences = compare(json.loads(args.check.read_text()), current)
    print("\n".join(differences) or f"{count} rerun keys of {len(current)} configs: identical")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
