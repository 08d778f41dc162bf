"""Progress reporting: a rich bar on a terminal, one log line every few steps otherwise (cron, Slurm logs).

Log lines are plain text (never a bar's control characters): what is done out of the total, the rate and the
estimated time left, e.g. ``predict: 40/200 blocks (20%), 3.10 Mvoxels/s, ETA 0:04:10``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def interactive() -> bool:
    """True when stderr is a terminal (progress bars make sense)."""
    return sys.stderr.isatty()


def eta(done: float, total: float, elapsed: float) -> str:
    """The estimated time left, ``H:MM:SS``, from the work done in ``elapsed`` seconds (``?`` before any)."""
    if done <= 0 or total <= 0:
        return "?"
    left = max(0, round(elapsed * (total - done) / done))
    return f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"


class LogLines:
    """One log line each time another ``fraction`` of ``total`` units (bytes, voxels) is done, and at the end."""

    def __init__(self, label: str, total: int, log: Callable[[str], None], *, unit: str = "B",
                 fraction: float = 0.05) -> None:
        self.label, self.total, self.log, self.unit = label, max(int(total), 1), log, unit
        self.step = max(1, int(self.total * fraction))
        self.done = 0
        self.next = self.step
        self.start = time.perf_counter()

    def __call__(self, amount: int) -> None:
        self.done += int(amount)
        if self.done >= self.next or self.done >= self.total:
            while self.next <= self.done:
                self.next += self.step
            elapsed = time.perf_counter() - self.start
            rate = self.done / max(elapsed, 1e-9) / 1e6
            self.log(f"{self.label}: {self.done / 1e6:.1f}/{self.total / 1e6:.1f} M{self.unit} "
                     f"({100 * self.done / self.total:.0f}%), {rate:.2f} M{self.unit}/s, "
                     f"ETA {eta(self.done, self.total, elapsed)}")


def stderr_progress(*columns: ProgressColumn | str) -> Progress:
    """A rich progress display on stderr (stdout stays for results); every rockseg bar is made here."""
    return Progress(*columns, console=Console(stderr=True))


class Reporter:
    """Report ``total`` steps of work.

    Parameters
    ----------
    total : number of steps (blocks, slabs...).
    label : what is being done, e.g. ``"predict"``.
    bar : show a rich progress bar (use on a terminal).
    log : callable taking one line; used without a bar every ``every`` steps and at the end.
    unit_per_step : voxels (or bytes...) per step, for a rate in the log lines.
    """

    def __init__(
        self, total: int, label: str, *, bar: bool = False, log: Callable[[str], None] | None = None,
        every: int | None = None, unit: str = "voxels",
    ) -> None:
        self.total, self.label, self.log, self.unit = total, label, log, unit
        self.every = every or max(1, total // 20)
        self.done = 0
        self.amount = 0
        self.start = time.perf_counter()
        self._bar: Progress | None = None
        if bar and total > 0:
            self._bar = stderr_progress(
                TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TimeRemainingColumn(),
            )
            self._task = self._bar.add_task(label, total=total, rate="")

    def __enter__(self) -> Reporter:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, amount: int = 0) -> None:
        """One step done, covering ``amount`` units (voxels)."""
        self.done += 1
        self.amount += amount
        rate = self.amount / max(time.perf_counter() - self.start, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, advance=1, rate=f"{rate / 1e6:.2f} M{self.unit}/s")
        elif self.log is not None and (self.done % self.every == 0 or self.done == self.total):
            elapsed = time.perf_counter() - self.start
            self.log(f"{self.label}: {self.done}/{self.total} blocks ({100 * self.done / max(self.total, 1):.0f}%), "
                     f"{rate / 1e6:.2f} M{self.unit}/s, ETA {eta(self.done, self.total, elapsed)}")
