"""Figures of an accuracy matrix (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

from modalprompt.scoring.metrics import Matrix


def heatmap_png(tasks: list[str], matrix: Matrix, title: str) -> bytes:
    """Tasks (columns) by stages (rows) with the accuracy written in each evaluated cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stages = sorted(matrix)
    values = np.array([[np.nan if v is None else v for v in matrix[s]] for s in stages], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(tasks), 1.0 + 0.6 * len(stages)), dpi=120)
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(stages)), ["base" if s == 0 else f"stage {s}" for s in stages])
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training")
    for i in range(len(stages)):
        for j in range(len(tasks)):
            if not np.isnan(values[i, j]):
                color = "black" if values[i, j] > 60 else "white"
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", color=color, fontsize=9)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array(counts, dtype=float)
    shares = 100 * values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(tasks), 1.2 + 0.7 * len(tasks)), dpi=120)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xlabel("selected first")
    ax.set_ylabel("true task")
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            if values[i, j]:
                ax.text(j, i, f"{shares[i, j]:.0f}", ha="center", va="center",
                        color="white" if shares[i, j] > 60 else "black", fontsize=9)  # fmt: skip
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share of the task's samples (%)")
    return _png(fig)


DEVICE_HOURS = {"gpu": "GPU-hours", "cpu": "core-hours"}  # what a device-hour is on each kind of device


def accuracy_cost_png(points: dict[str, tuple[float | None, dict | None]]) -> bytes:
    """Each method's final average accuracy (`avg`) against its total cost in device-hours, one labelled
    point per method: `points` maps a method to (avg, its cost.json `total`). Methods without either are
    named below the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array(overlap, dtype=float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(3.5 + 1.6 * len(tasks), 1.8 + 0.6 * len(tasks)), dpi=120)
    image = left.imshow(values, cmap="Oranges", vmin=0, vmax=100)
    left.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    left.set_yticks(range(len(tasks)), tasks)
    left.set_xlabel("test answers of")
    left.set_ylabel("training answers of")
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            color = "white" if values[i, j] > 60 else "black"
            left.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", color=color, fontsize=9)
    left.set_title("answer overlap (%)")
    fig.colorbar(image, ax=left, label="share of the test answers (%)")
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
