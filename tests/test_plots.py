"""The report's figures: every title inside its picture, whatever the number of tasks."""

from __future__ import annotations

import pytest

from modalprompt.scoring import plots

TASKS = ["shape_choice", "sign_reading", "digit_class"]
LONG = "coda_prompt: selection confusion after stage 3 (first-ranked prompt, share of each task's samples)"


@pytest.fixture
def figures(monkeypatch):
    """The figures the functions draw, laid out as for their PNG and kept open."""
    import matplotlib.pyplot as plt

    drawn = []

    def keep(fig):
        fig.tight_layout()
        drawn.append(fig)
        return b""

    monkeypatch.setattr(plots, "_png", keep)
    yield drawn
    plt.close("all")


@pytest.mark.parametrize("tasks", [TASKS[:1], TASKS])
def test_long_titles_fit_inside_the_figure(figures, tasks):
    plots.confusion_png(tasks, [[1] * len(tasks) for _ in tasks], LONG)
    plots.heatmap_png(tasks, {s: [50.0] * len(tasks) for s in range(len(tasks) + 1)}, LONG)
    for fig in figures:
        renderer = fig.canvas.get_renderer()
        title = fig.axes[0].title.get_window_extent(renderer)
        frame = fig.bbox
        assert title.x0 >= frame.x0 and title.x1 <= frame.x1, (title, frame)
        assert title.y1 <= frame.y1, (title, frame)
