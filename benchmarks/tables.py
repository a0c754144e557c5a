"""Tables of numbers in the README and the docs, generated from their results files: nothing is typed in by
hand.

A generated table sits between two markers in a Markdown file:

    <!-- table: minicoin-metrics benchmarks/results/minicoin-cpu-2core.json -->
    | method | avg | ... |
    <!-- end table -->

    python benchmarks/tables.py                      # rewrite every marked table of README.md and docs/*.md
    python benchmarks/tables.py --check              # exit 1 where a table differs from its file
    python benchmarks/tables.py docs/results.md      # only these files

tests/test_readme_results.py runs the check, so a number in the docs never drifts from its file. The run
tables name the commit measured, so that a reader sees which code and which shipped base made the numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKED = re.compile(r"(<!-- table: (\S+) (\S+) -->\n)(.*?)(<!-- end table -->)", re.DOTALL)
LABELS = {
    "modalprompt": "modalprompt",
    "oracle": "oracle (own prompt always)",
    "seq_prompt": "seq_prompt (one shared prompt)",
    "zero_shot": "zero_shot (the base)",
}


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def minicoin_metrics(report: dict) -> str:
    """Each method's metrics, percent points (selection: at the last stage)."""
    keys = ["avg", "mft", "maa", "bwt", "forgetting", "fwt", "selection_accuracy"]
    rows = [[LABELS.get(name, name)] + [_num(m["metrics"].get(k)) for k in keys]
            for name, m in report["methods"].items()]  # fmt: skip
    return _rows(["method", "avg", "mft", "maa", "bwt", "forgetting", "fwt", "selection"], rows)


def minicoin_matrix(report: dict) -> str:
    """ModalPrompt's accuracy matrix; row s after stage s (row 0: the base), its own task in bold."""
    entry = report["methods"]["modalprompt"]
    rows = []
    for stage, values in entry["matrix"].items():
        cells = []
        for column, value in enumerate(values, start=1):
            text = "" if value is None else f"{value:.1f}"
            cells.append(f"**{text}**" if column == int(stage) and text else text)
        rows.append([stage, *cells])
    return _rows(["stage", *entry["tasks"]], rows)


def minicoin_targets(report: dict) -> str:
    """Each target, what was measured and whether it is met."""
    rows = []
    for name, target in report["targets"].items():
        measured = target["measured"]
        if isinstance(measured, dict):
            measured = ", ".join(f"{task} {value:+.1f}" for task, value in measured.items())
        elif isinstance(measured, float):
            measured = _num(measured)
        rows.append([name, target["target"], str(measured), "met" if target["met"] else "**not met**"])
    return _rows(["target", "asks", "measured", ""], rows)


def _measured_at(report: dict) -> str:
    return f"commit {report['commit'][:7]}" + (" with uncommitted changes" if report["dirty"] else "")


def _scheduler_row(report: dict, time: Callable[[float], str]) -> list[list[str]]:
    """Snakemake's own CPU time (scheduling and bookkeeping, beside the jobs on the same cores), where the
    file records it."""
    seconds = report.get("scheduler_cpu_seconds")
    if seconds is None:
        return []
    return [["Snakemake itself (CPU)", time(seconds), f"scheduler: {report['profile_scheduler']}"]]


def minicoin_time(report: dict) -> str:
    """Wall time of the DAG and job seconds per rule, and the commit measured."""
    rows = [["whole DAG (wall)", f"{report['dag_wall_seconds']:.0f} s", _measured_at(report)]]
    rows += [
        [f"{rule} jobs", f"{s['seconds']:.0f} s", f"{s['jobs']} of them, summed"]
        for rule, s in report["job_seconds"].items()
    ]
    rows += _scheduler_row(report, lambda seconds: f"{seconds:.0f} s")
    return _rows(["", "seconds", ""], rows)


def minicoin_rebuild(report: dict) -> str:
    """`benchmarks/minicoin.py --rebuild`: each step of rebuilding the shipped base, and whether the
    rebuilt weights equal the shipped ones."""
    rebuild = report["rebuild_base"]
    rows = [[step, f"{seconds:.0f} s"] for step, seconds in rebuild["seconds"].items()]
    rows.append(
        ["weights equal the shipped ones", "yes" if rebuild["weights_equal_the_shipped_ones"] else "**no**"]
    )
    rows.append(["measured at", _measured_at(report)])
    return _rows(["rebuilding the base", ""], rows)


def core_stages(report: dict) -> str:
    """benchmarks/core.py: each toy stage's training step, throughput and file sizes, then generation."""
    rows = [
        [str(s["stage"]), s["task"], f"{s['step_ms_median']:.0f}", f"{s['samples_per_s']:.1f}",
         f"{s['tensor_file_bytes']:,}", f"{s['meta_file_bytes']:,}"]
        for s in report["stages"]
    ]  # fmt: skip
    gen = report["generation"]
    rows.append(["generation", f"{gen['samples']} samples, batch {gen['batch_size']}", "",
                 f"{gen['samples_per_s']:.1f}", "", ""])  # fmt: skip
    return _rows(
        ["stage", "task", "step ms (median)", "samples/s", "tensors file, bytes", "stage.json, bytes"], rows
    )


SCALING_METHODS = {"modalprompt": "ModalPrompt", "naive_all_prompts": "all prompts prepended"}


def scaling_latency(report: dict) -> str:
    """benchmarks/scaling.py: prefix length, prefill FLOPs and time per sample against the learned tasks T."""
    latency = report["latency"]
    counts = sorted({r["tasks"] for r in latency})
    cell = {(r["method"], r["tasks"]): r for r in latency}
    rows = []
    for method, label in SCALING_METHODS.items():
        runs = [cell[method, t] for t in counts]
        rows.append([f"{label}, prefix tokens", *(str(r["prefix_tokens"]) for r in runs)])
        rows.append(
            [f"{label}, prefill FLOPs vs T = {counts[0]}", *(f"{r['flops_vs_first']:.2f}" for r in runs)]
        )
        rows.append([f"{label}, ms/sample, median (p25-p75)",
                     *(f"{_ms(m['median'])} ({_ms(m['q25'])}-{_ms(m['q75'])})" for m in (r["ms_per_sample"] for r in runs))])  # fmt: skip
    return _rows(["T learned tasks", *(str(t) for t in counts)], rows)


def scaling_ratios(report: dict) -> str:
    """benchmarks/scaling.py: time at T = 32 over a smaller T, and the target's verdict."""
    rows = []
    for name, ratio in report["ratios"].items():
        method, high, low = re.fullmatch(r"(.+)_T(\d+)_vs_T(\d+)", name).groups()
        low_ci, high_ci = ratio["bootstrap_95"]
        rows.append([SCALING_METHODS.get(method, method), f"T = {low}", f"T = {high}", f"{ratio['of_medians']:.2f}x",
                     f"{low_ci:.2f}-{high_ci:.2f}"])  # fmt: skip
    target = report["target"]
    rows.append([f"target: ModalPrompt at most {target['max_ratio']:.2f}x", "", "", f"{target['ratio_of_medians']:.2f}x",
                 f"{target['bootstrap_95'][0]:.2f}-{target['bootstrap_95'][1]:.2f}: **{target['verdict']}**"])  # fmt: skip
    return _rows(["method", "from", "to", "time ratio (of medians)", "95% bootstrap interval"], rows)


def _ms(value: float) -> str:
    """Milliseconds with two significant digits below 10 ms (a few ms per sample on a small shape)."""
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f} s" if value < 100 else f"{value:,.0f} s"


def startup(report: dict) -> str:
    """benchmarks/startup.py: the no-op check beside Snakemake's floor, then each job command's start-up,
    cold (its own process) and warm (forked from the warm server)."""
    floor, targets = report["snakemake_floor"], report["targets"]

    def verdict(name: str) -> str:
        target = targets.get(name)
        return "" if target is None else f"<= {target['target']} s: {'met' if target['met'] else 'not met'}"

    rows = [
        ["no-op check (`snakemake -n`), default config", _seconds(report["noop_default"]["median_s"]), "",
         _seconds(floor["default"]["median_s"]), verdict("noop_default_s")],
        ["no-op check, 32-task config", _seconds(report["noop_32_tasks"]["median_s"]), "",
         _seconds(floor["32"]["median_s"]), verdict("noop_32_tasks_s")],
    ]  # fmt: skip
    for command, cost in report["commands"].items():
        startup_s = cost.get("startup_s")
        rows.append([f"`modalprompt {command}`, cold", _seconds(cost["wall_s"]),
                     f"imports {_seconds(cost['imports_ms'] / 1000)}"
                     + ("" if startup_s is None else f", start-up {_seconds(startup_s)}"), "", ""])  # fmt: skip
    warm = report["warm_evaluate"]
    rows.append(["`modalprompt evaluate`, warm (median)", _seconds(warm["median_wall_s"]),
                 f"start-up {_seconds(warm['median_startup_s'])}", "", ""])  # fmt: skip
    return _rows(["", "wall", "of which", "Snakemake's floor", "target"], rows)


def scheduler(report: dict) -> str:
    """benchmarks/scheduler.py (a stand-in: a generated DAG of sleeping jobs): Snakemake's own CPU time and the
    wall time per scheduling setting, beside the time the sleeps alone take."""
    rows = [[name, f"{v['snakemake_cpu_seconds']:.1f} s", f"{v['wall_seconds']:.1f} s"]
            for name, v in report["variants"].items()]  # fmt: skip
    rows.append([f"the sleeps alone, {report['cores']} cores", "", f"{report['sleeps_alone_seconds']:.1f} s"])
    rows.append(["measured at", _measured_at(report), ""])
    header = f"{report['jobs']} jobs of {report['sleep_seconds']} s sleep (stand-in)"
    return _rows([header, "Snakemake's own CPU", "wall"], rows)


def published_row(report: dict) -> str:
    """A published row (docs/published/*.json): final accuracy per task and its metrics."""
    final, metrics = report["final"], report.get("metrics", {})
    header = ["", *final, *(name.capitalize() if name == "avg" else name for name in metrics)]
    row = [f"{report.get('method', 'published')} (published)", *(f"{v:.2f}" for v in final.values()),
           *(f"{v:.2f}" for v in metrics.values())]  # fmt: skip
    return _rows(header, [row])


def _spread(metrics: dict, name: str) -> str:
    mean, std = metrics.get(name), metrics.get("std", {}).get(name)
    return "-" if mean is None else _num(mean) + ("" if std is None else f" ± {std:.1f}")


def methods_over_seeds(report: dict) -> str:
    """Every method over the seeds (mean ± sample standard deviation), its cost in device-hours (the mean
    run's), and its budget: epochs per stage, prompt rows per sample, values trained per stage, and the
    earlier tasks' records its last stage added (as a share of one task's training set)."""
    rows = []
    for name, m in report["methods"].items():
        budget, cost = report["budgets"][name], report["cost"].get(name)
        trained = budget.get("trained_values")
        replayed = budget.get("last_stage_records")
        data = "-"
        if replayed:
            share = 100 * replayed["earlier"] / report["train_size"]
            data = f"+{replayed['earlier']} ({share:.0f}% of a task)"
        owner = "" if budget["trains"] in (None, name) else f" ({budget['trains']}'s)"
        rows.append([
            LABELS.get(name, name), *(_spread(m, k) for k in ("avg", "bwt", "forgetting", "selection_accuracy")),
            "-" if cost is None else f"{cost['device_hours']:.3f}",
            _num(budget.get("epochs"), 0) if "epochs" in budget else "-",
            str(budget["prefix_tokens"]) if budget["prefix_tokens"] else "-",
            "-" if trained is None else f"{trained:,}{owner}",
            data,
        ])  # fmt: skip
    header = ["method", "avg", "bwt", "forgetting", "selection", "device-hours", "epochs", "prompt rows",
              "values trained per stage", "earlier records at the last stage"]  # fmt: skip
    return _rows(header, rows)


def methods_run(report: dict) -> str:
    """How long the all-methods run took: its wall time against the 90-minute target, its jobs and their
    seconds per rule, and the machine's load while it ran."""
    minutes = report["wall_seconds"] / 60
    rows = [["whole DAG (wall)", f"{minutes:.0f} min", "target: 90 min on 2 cores, " +
             ("met" if minutes <= 90 else "**not met**")]]  # fmt: skip
    rows += [[f"{rule} jobs", f"{seconds / 60:.0f} min", f"{report['jobs'].get(rule, '-')} of them, summed"]
             for rule, seconds in report["job_seconds"].items()]  # fmt: skip
    rows += _scheduler_row(report, lambda seconds: f"{seconds / 60:.0f} min")
    load = report["load"]
    rows.append(["1-minute load", f"{load['start']:.2f} at the start", f"{load['during_max']:.2f} at most "
                 f"during, {load['during_mean']:.2f} on average, {report['cores_used']} cores"])  # fmt: skip
    rows.append(["measured at", _measured_at(report), ""])
    return _rows(["", "time", ""], rows)


TABLES: dict[str, Callable[[dict], str]] = {
    "methods-over-seeds": methods_over_seeds,
    "methods-run": methods_run,
    "minicoin-metrics": minicoin_metrics,
    "minicoin-matrix": minicoin_matrix,
    "minicoin-targets": minicoin_targets,
    "minicoin-time": minicoin_time,
    "minicoin-rebuild": minicoin_rebuild,
    "core-stages": core_stages,
    "scaling-latency": scaling_latency,
    "scaling-ratios": scaling_ratios,
    "startup": startup,
    "scheduler": scheduler,
    "published-row": published_row,
}


def documents() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def render(text: str) -> str:
    """`text` with every marked table generated anew from its results file."""

    def one(match: re.Match) -> str:
        kind, source = match.group(2), match.group(3)
        if kind not in TABLES:
            raise SystemExit(f"unknown table kind {kind!r}; known: {sorted(TABLES)}")
        report = json.loads((ROOT / source).read_text())
        return match.group(1) + TABLES[kind](report) + match.group(5)

    return MARKED.sub(one, text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="*", type=Path, help="default: README.md and docs/**/*.md")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a table differs")
    args = parser.parse_args()
    stale = []
    for path in args.files or documents():
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(str(path))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        sys.exit(f"tables differ from their results files in: {', '.join(stale)}; run benchmarks/tables.py")


if __name__ == "__main__":
    main()
