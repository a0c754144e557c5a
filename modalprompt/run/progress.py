"""Progress of a running job: a bar on an interactive terminal, plain lines in a log file.

A job run by Snakemake or Slurm writes to a log that users `tail -f` and `grep`: there, every
`every_steps` steps or `every_seconds` seconds (whichever comes first; 0 turns a trigger off), one line

    modalprompt train stage 3 dot_count: step 120/600 (20%) epoch 3.00 loss 0.8123 ... lr 1.0e-01
        samples/s 85.2 elapsed 0:01:25 eta 0:05:40 peak_memory_mb 812

and a last line when the job ends. By hand on a terminal the same fields go to a tqdm bar instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TextIO

from tqdm import tqdm


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1e}" if value != 0 and abs(value) < 1e-3 else f"{value:.4g}"
    return str(value)


class Progress:
    """Counts `done` of `total` units (steps or samples); `update` after each, with the fields to show."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        *,
        every_steps: int,
        every_seconds: float,
        enabled: bool = True,
        initial: int = 0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.unit = label, total, unit
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.stream = stream or sys.stderr
        self.clock = clock
        self.start = self.last_line = clock()
        self.initial = self.done = self.last_done = initial
        self.enabled = enabled
        self.fields: dict[str, Any] = {}  # the last ones given, for the closing line
        interactive = enabled and self.stream.isatty()
        self.bar = (
            tqdm(total=total, initial=initial, desc=label, unit=unit, file=self.stream)
            if interactive
            else None
        )

    def start_at(self, done: int) -> None:
        """A resumed job: `done` units were done before; rates and the ETA count from here."""
        self.initial = self.done = self.last_done = done
        self.start = self.last_line = self.clock()
        if self.bar is not None:
            self.bar.reset(total=self.total)
            self.bar.update(done)

    def update(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields = fields
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix({k: _value(v) for k, v in fields.items()}, refresh=False)
            return
        now = self.clock()
        by_steps = self.every_steps and self.done // self.every_steps > self.last_done // self.every_steps
        by_time = self.every_seconds and now - self.last_line >= self.every_seconds
        if by_steps or by_time:
            self._line(now, fields)

    def close(self) -> None:
        """The last line, with the last fields (or closes the bar)."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done != self.last_done:
            self._line(self.clock(), self.fields)

    def line(self, now: float, fields: dict[str, Any]) -> str:
        elapsed = now - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [
            f"{self.unit} {self.done}/{self.total}{share}",
            *(f"{k} {_value(v)}" for k, v in fields.items()),
        ]
        parts += [f"elapsed {_clock(elapsed)}", f"eta {_clock(eta) if eta == eta else '?'}"]
        return f"modalprompt {self.label}: " + " ".join(parts)

    def _line(self, now: float, fields: dict[str, Any]) -> None:
        print(self.line(now, fields), file=self.stream, flush=True)
        self.last_line, self.last_done = now, self.done
