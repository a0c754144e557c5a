"""Figures of an accuracy matrix (matplotlib, no display needed)."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

from modalprompt.scoring.metrics import Matrix


def _grid(fig, ax, values, x_labels, y_labels, axis_labels, cmap, colorbar_label, text_of, dark_above=60):
    """An annotated heatmap (0..100) on `ax`: `text_of(i, j)` is cell (i, j)'s text, or None for none."""
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(x_labels)), x_labels, rotation=30, ha="right")
    ax.set_yticks(range(len(y_labels)), y_labels)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    for i in range(len(y_labels)):
        for j in range(len(x_labels)):
            text = text_of(i, j)
            if text is not None:
                # viridis is light at the top, Blues and Oranges dark: the text contrasts with either
                light = (values[i, j] > dark_above) == (cmap == "viridis")
                ax.text(j, i, text, ha="center", va="center", color="black" if light else "white", fontsize=9)
    fig.colorbar(image, ax=ax, label=colorbar_label)


def _title(fig, ax, title: str) -> None:
    """A title wrapped to the figure's width, the figure made taller by its extra lines (a long one was cut
    off at the figure's edge)."""
    lines = textwrap.wrap(title, max(16, int(fig.get_figwidth() * 8)))
    fig.set_figheight(fig.get_figheight() + 0.25 * (len(lines) - 1))
    ax.set_title("\n".join(lines))


def heatmap_png(tasks: list[str], matrix: Matrix, title: str) -> bytes:
    """Tasks (columns) by stages (rows) with the accuracy written in each evaluated cell."""
    plt, np = _pyplot()
    stages = sorted(matrix)
    values = np.array([[np.nan if v is None else v for v in matrix[s]] for s in stages], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(tasks), 1.0 + 0.6 * len(stages)), dpi=120)
    _grid(fig, ax, values, tasks, ["base" if s == 0 else f"stage {s}" for s in stages],
          ("evaluated task", "after training"), "viridis", "accuracy (%)",
          lambda i, j: None if np.isnan(values[i, j]) else f"{values[i, j]:.1f}")  # fmt: skip
    _title(fig, ax, title)
    return _png(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    return plt, np


def write_heatmap(path: Path, tasks: list[str], matrix: Matrix, title: str) -> None:
    from modalprompt.files import atomic_write_bytes

    atomic_write_bytes(Path(path), heatmap_png(tasks, matrix, title))


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def forgetting_png(
    tasks: list[str], matrices: dict[str, Matrix], title: str, spreads: dict[str, Matrix] | None = None
) -> bytes:
    """One panel per task: its accuracy after each stage from its own on, one line per method; with
    `spreads` (standard deviations over seeds), a band of one deviation around each mean line."""
    plt, _ = _pyplot()
    columns = min(4, len(tasks))
    rows = -(-len(tasks) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), dpi=110, squeeze=False)
    for j, task in enumerate(tasks):
        ax = axes[j // columns][j % columns]
        for method, matrix in matrices.items():
            stages = [s for s in sorted(matrix) if s >= j + 1 and matrix[s][j] is not None]
            (line,) = ax.plot(stages, [matrix[s][j] for s in stages], marker="o", label=method)
            spread = (spreads or {}).get(method)
            if spread:
                low = [matrix[s][j] - (spread[s][j] or 0.0) for s in stages]
                high = [matrix[s][j] + (spread[s][j] or 0.0) for s in stages]
                ax.fill_between(stages, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xticks([s for s in sorted(next(iter(matrices.values()))) if s >= j + 1])  # whole stages
        ax.set_title(task, fontsize=10)
        ax.set_ylim(-5, 105)
        ax.set_xlabel("after stage")
        ax.set_ylabel("accuracy (%)")
    for k in range(len(tasks), rows * columns):
        axes[k // columns][k % columns].axis("off")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def confusion_png(tasks: list[str], counts: list[list[int]], title: str) -> bytes:
    """Rows: each sample's true task; columns: the task whose prompt ranked first; share of the row (%)."""
    plt, np = _pyplot()
    values = np.array(counts, dtype=float)
    shares = 100 * values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(tasks), 1.2 + 0.7 * len(tasks)), dpi=120)
    _grid(fig, ax, shares, tasks, tasks, ("selected first", "true task"), "Blues",
          "share of the task's samples (%)", lambda i, j: f"{shares[i, j]:.0f}" if values[i, j] else None)  # fmt: skip
    _title(fig, ax, title)
    return _png(fig)


DEVICE_HOURS = {"gpu": "GPU-hours", "cpu": "core-hours"}  # what a device-hour is on each kind of device


def accuracy_cost_png(points: dict[str, tuple[float | None, dict | None]]) -> bytes:
    """Each method's final average accuracy (`avg`) against its total cost in device-hours, one labelled
    point per method: `points` maps a method to (avg, its cost.json `total`). Methods without either are
    named below the axes."""
    plt, _ = _pyplot()
    shown = {m: (avg, cost) for m, (avg, cost) in points.items() if avg is not None and cost is not None}
    kinds = {cost["device"] for _, cost in shown.values()}
    unit = DEVICE_HOURS.get(kinds.pop(), "device-hours") if len(kinds) == 1 else "device-hours (GPU and CPU)"
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for method, (avg, cost) in shown.items():
        ax.scatter(cost["device_hours"], avg, s=40)
        ax.annotate(
            method, (cost["device_hours"], avg), textcoords="offset points", xytext=(5, 4), fontsize=9
        )
    ax.set_xlabel(f"total cost, training and evaluation ({unit})")
    ax.set_ylabel("final average accuracy, avg (%)")
    ax.set_ylim(-5, 105)
    ax.set_xlim(left=0)
    missing = sorted(set(points) - set(shown))
    if missing:
        ax.set_title(f"no cost recorded: {', '.join(missing)}", fontsize=8)
    fig.suptitle("accuracy against cost, one point per method")
    return _png(fig)


def overlap_png(
    tasks: list[str],
    overlap: list[list[float]],
    cells: list[tuple[str, float, float]],
    pearson: float | None,
    title: str,
) -> bytes:
    """Left, the answer overlap (%): row i, column j is the share of task j's test answers among task i's
    training answers. Right, each cell (i, j), i > j: the forgetting of task j after stage i against its
    overlap, with Pearson's r. `cells`: (label, overlap, forgetting)."""
    plt, np = _pyplot()
    values = np.array(overlap, dtype=float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(3.5 + 1.6 * len(tasks), 1.8 + 0.6 * len(tasks)), dpi=120)
    _grid(fig, left, values, tasks, tasks, ("test answers of", "training answers of"), "Oranges",
          "share of the test answers (%)", lambda i, j: f"{values[i, j]:.0f}")  # fmt: skip
    left.set_title("answer overlap (%)")
    for label, share, forgotten in cells:
        right.scatter(share, forgotten, s=30, color="tab:red")
        right.annotate(label, (share, forgotten), textcoords="offset points", xytext=(4, 3), fontsize=8)
    right.axhline(0, color="grey", linewidth=0.8)
    right.set_xlim(-5, 105)
    right.set_xlabel("answer overlap of the cell (%)")
    right.set_ylabel("forgetting of the cell (points)")
    r = "undefined (fewer than two cells, or no spread)" if pearson is None else f"{pearson:.2f}"
    right.set_title(f"Pearson r = {r}", fontsize=10)
    fig.suptitle(title)
    return _png(fig)
