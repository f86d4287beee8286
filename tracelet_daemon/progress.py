"""How far an upload pass is: bytes, rows and runs, summed over the engines doing it.

An upload runs in this process or in worker processes (`parallel.py`); each engine reports a
`Tick` after every batch, and a `Tally` in the process that shows progress adds them up. Ticks
carry each engine's running totals (rows, runs), not increments, so the sum stays right however
ticks from different workers interleave.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Engine, Report


@dataclass(frozen=True)
class Tick:
    """One engine's news: the bytes of its latest batch and its totals so far."""

    source: int  # which engine: 0 in this process, 1.. for worker shares
    bytes: int  # bytes consumed by this batch (0 for the closing tick)
    rows: int  # rows this engine has sent so far
    runs: int  # runs this engine has opened so far (it works on one run at a time)
    finished: bool = False  # the engine's pass is over: its last run is finished too


class Tally:
    """The sum of every engine's ticks: bytes read, rows sent, runs done."""

    def __init__(self) -> None:
        self.bytes = 0
        self._latest: dict[int, Tick] = {}

    def add(self, tick: Tick) -> None:
        self.bytes += tick.bytes
        self._latest[tick.source] = tick

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self._latest.values())

    @property
    def runs_done(self) -> int:
        # an engine finishes each run before it opens the next: all but the newest are done
        return sum(t.runs if t.finished else max(0, t.runs - 1) for t in self._latest.values())


def upload_pass(engine: Engine, source: int, on_tick: Callable[[Tick], None] | None) -> Report:
    """`engine.upload()`, sending a tick after every batch and a closing one when the pass ends.

    The engine's own `on_progress` (if any) still runs first.
    """
    if on_tick is None:
        return engine.upload()
    before = engine.on_progress

    def on_progress(n: int) -> None:
        if before is not None:
            before(n)
        on_tick(Tick(source, n, engine.report.rows, engine.report.runs))

    engine.on_progress = on_progress
    try:
        report = engine.upload()
    finally:
        engine.on_progress = before
    on_tick(Tick(source, 0, report.rows, report.runs, finished=True))
    return report
