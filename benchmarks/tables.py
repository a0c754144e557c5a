"""Tables of numbers in the docs, generated from their results files: nothing is typed in by hand.

A generated table sits between two markers in a Markdown file:

    <!-- table: minicoin-metrics benchmarks/results/minicoin-cpu-2core.json -->
    | method | avg | ... |
    <!-- end table -->

    python benchmarks/tables.py README.md            # rewrite every marked table from its file
    python benchmarks/tables.py --check README.md    # exit 1 where a table differs from its file

tests/test_readme_results.py runs the check, so a number in the docs never drifts from its file.
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


def minicoin_time(report: dict) -> str:
    """Wall time of the DAG, job seconds per rule, and the base's rebuild."""
    rows = [["whole DAG (wall)", f"{report['dag_wall_seconds']:.0f} s", ""]]
    rows += [
        [f"{rule} jobs", f"{s['seconds']:.0f} s", f"{s['jobs']} of them, summed"]
        for rule, s in report["job_seconds"].items()
    ]
    if report.get("rebuild_base"):
        for step, seconds in report["rebuild_base"]["seconds"].items():
            rows.append([f"rebuild: {step}", f"{seconds:.0f} s", "not in the DAG above"])
    return _rows(["", "seconds", ""], rows)


TABLES: dict[str, Callable[[dict], str]] = {
    "minicoin-metrics": minicoin_metrics,
    "minicoin-matrix": minicoin_matrix,
    "minicoin-targets": minicoin_targets,
    "minicoin-time": minicoin_time,
}


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
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a table differs")
    args = parser.parse_args()
    stale = []
    for path in args.files:
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
