"""Progress lines in job logs: when they are written and what they say."""

from __future__ import annotations

import io
import re

from modalprompt.run.progress import Progress


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _progress(stream, clock, **kw):
    settings = {"every_steps": 10, "every_seconds": 30.0, **kw}
    return Progress("train stage 2 shapes", 40, "step", stream=stream, clock=clock, **settings)


def test_a_line_every_n_steps_or_seconds_and_a_last_one():
    stream, clock = io.StringIO(), FakeClock()
    progress = _progress(stream, clock)
    for step in range(1, 41):
        clock.now = step * 1.0 if step <= 25 else 25 + (step - 25) * 20.0  # slow steps after 25
        progress.update(1, loss=0.5)
    progress.close()
    steps = [int(m) for m in re.findall(r"step (\d+)/40", stream.getvalue())]
    # every 10 steps; from step 25 on each step takes 20 s, so the 30 s trigger fires every other step
    assert steps[:2] == [10, 20] and 30 in steps and steps[-1] == 40
    assert any(s % 10 for s in steps)  # at least one line came from the time trigger
    assert len(steps) == len(set(steps))  # the last line is not a repeat of the step-40 line


def test_a_line_says_where_the_job_is_and_when_it_ends():
    stream, clock = io.StringIO(), FakeClock()
    progress = _progress(stream, clock)
    for _ in range(10):
        clock.now += 3.0
        progress.update(1, epoch=1.25, loss=0.81234, lr=1e-4, samples_per_s=85.2)
    line = stream.getvalue().strip()
    assert line.startswith("modalprompt train stage 2 shapes: step 10/40 (25%)")
    assert "epoch 1.25 loss 0.8123 lr 1.0e-04 samples_per_s 85.2" in line
    assert "elapsed 0:00:30 eta 0:01:30" in line  # 30 more steps at 3 s each


def test_a_resumed_job_counts_its_rate_from_where_it_resumed():
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(
        "x", 100, "step", every_steps=10, every_seconds=0, initial=50, stream=stream, clock=clock
    )
    for _ in range(10):
        clock.now += 1.0
        progress.update(1)
    assert "step 60/100 (60%)" in stream.getvalue() and "eta 0:00:40" in stream.getvalue()


def test_disabled_progress_writes_nothing():
    stream, clock = io.StringIO(), FakeClock()
    progress = _progress(stream, clock, enabled=False)
    for _ in range(40):
        clock.now += 100
        progress.update(1)
    progress.close()
    assert stream.getvalue() == "" and progress.done == 40


def test_an_interactive_terminal_gets_a_bar_instead_of_lines():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream, clock = Terminal(), FakeClock()
    progress = _progress(stream, clock)
    for _ in range(40):
        clock.now += 100
        progress.update(1, loss=0.5)
    progress.close()
    assert "modalprompt train" not in stream.getvalue() and "40/40" in stream.getvalue()
