"""Figures of an accuracy matrix (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

from modalprompt.metrics import Matrix


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
