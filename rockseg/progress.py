"""Progress reporting: a rich bar on a terminal, one log line every few steps otherwise (cron, Slurm logs)."""

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
            self.log(f"{self.label}: {self.done}/{self.total} blocks, {rate / 1e6:.2f} M{self.unit}/s")
