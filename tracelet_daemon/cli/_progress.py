"""The upload progress bar: bytes, runs done and rows sent, with log lines printed above it.

Rich redraws the bar in place (carriage return, cursor up); a line written to stderr behind its
back lands on the bar's line and is split by the next redraw. So while the bar is live, our log
handler prints through the bar's console (`logsetup.diverted`), which puts each line above the
bar and redraws the bar below it.
"""

from __future__ import annotations

from contextlib import ExitStack

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

from ..logsetup import diverted
from ..progress import Tally, Tick


class UploadProgress:
    """A context manager: the bar is live inside it; `add` feeds it ticks from any engine."""

    def __init__(self, total_bytes: int, total_runs: int) -> None:
        self._tally = Tally()
        self._total_bytes, self._total_runs = total_bytes, total_runs
        self._console = Console(stderr=True)
        self._bar = Progress(
            "[progress.description]{task.description}", BarColumn(), TaskProgressColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(),
            TextColumn("runs {task.fields[runs_done]}/{task.fields[runs_total]}"),
            TextColumn("{task.fields[rows]:,} rows"),
            console=self._console,
        )
        self._task = self._bar.add_task("upload", total=total_bytes, runs_done=0, runs_total=total_runs,
                                        rows=0)
        self._stack = ExitStack()

    def __enter__(self) -> UploadProgress:
        self._stack.enter_context(self._bar)
        self._stack.enter_context(diverted(self._print))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()  # log lines go back to stderr, then the bar stops (its last state stays)

    def _print(self, line: str) -> None:
        self._console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)

    def add(self, tick: Tick) -> None:
        self._tally.add(tick)
        t = self._tally
        # files may grow and runs appear while the pass goes on: totals never fall behind
        self._total_bytes = max(self._total_bytes, t.bytes)
        self._total_runs = max(self._total_runs, t.runs_done)
        self._bar.update(self._task, completed=t.bytes, total=self._total_bytes, rows=t.rows,
                         runs_done=t.runs_done, runs_total=self._total_runs)
