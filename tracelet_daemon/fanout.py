"""Several backends fed from one runs root: one engine per backend, each on its own.

Each backend gets its own engine with its own state file (`StateStore.for_backend`): run
identities, sequence numbers, the journal and acknowledged offsets are kept per (run, backend).
So a backend that is down holds back only itself (its backlog stays in the event files, its
engine retries with backoff) while the others stay live, and a backend added later starts from
an empty state and replays the whole history into itself without touching the others. The
reader, decoder and run mapping are shared code, not shared state: each engine reads the files
at its own pace, which is what keeps one slow replica from stalling another (Litestream keeps
one position per replica for the same reason).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .engine import Engine, Report
from .status import SnapshotWriter

log = logging.getLogger("tracelet.fanout")


def close_all(backends: list, stores: list) -> None:
    """Finish every backend's open runs, then release the state (and its lock) whatever failed."""
    try:
        for be in backends:
            be.close()
    finally:
        for store in stores:
            store.close()


def merge_reports(reports: list[Report]) -> Report:
    out = Report()
    for r in reports:
        out.runs += r.runs
        out.rows += r.rows
        out.events += r.events
        out.bytes_read += r.bytes_read
        out.corrupt_records += r.corrupt_records
        for kind, n in r.errors.items():
            out.errors[kind] = out.errors.get(kind, 0) + n
        out.quarantined += [p for p in r.quarantined if p not in out.quarantined]
        out.pending_tails += [p for p in r.pending_tails if p not in out.pending_tails]
        out.failed_runs += r.failed_runs
    return out


def merge_snapshots(snapshots: list[dict]) -> dict:
    """One status snapshot for several engines: runs tagged with their backend, totals summed,
    lag from the slowest backend (the number an operator must act on)."""
    first = snapshots[0]
    totals: dict = {"runs": 0, "open_runs": 0, "rows": 0, "events": 0, "bytes_read": 0,
                    "corrupt_records": 0, "errors": {}}
    runs = []
    worst_lag: dict = {"samples": 0, "p50": None, "p99": None, "last": None}
    for snap in snapshots:
        t = snap.get("totals", {})
        for key in ("runs", "open_runs", "rows", "events", "bytes_read", "corrupt_records"):
            totals[key] += t.get(key, 0)
        for kind, n in t.get("errors", {}).items():
            totals["errors"][kind] = totals["errors"].get(kind, 0) + n
        runs.extend({**run, "backend": snap.get("backend", "")} for run in snap.get("runs", []))
        lag = snap.get("lag_seconds", {})
        if lag.get("p99") is not None and (worst_lag["p99"] is None or lag["p99"] > worst_lag["p99"]):
            worst_lag = lag
    source: dict = {}  # each engine lists the store itself: requests add up, the rest is shared
    for snap in snapshots:
        for key, value in (snap.get("source") or {}).items():
            source[key] = source.get(key, 0) + value if key.startswith("requests") else max(source.get(key, 0), value)
    backends = [s.get("backend", "") for s in snapshots]
    return {**first, "backend": ",".join(backends), "backends": backends, "totals": totals,
            "lag_seconds": worst_lag, "runs": runs, "source": source, "heartbeat": time.time()}


class Fanout:
    """Quacks like an Engine for the commands: watch, status, progress (`upload` runs the
    engines one after another itself, each possibly in worker processes)."""

    def __init__(self, engines: list[Engine]) -> None:
        if not engines:
            raise ValueError("no engines")
        self.engines = engines
        self.root = engines[0].root
        self.options = engines[0].options
        self.status_path = engines[0].status_path
        self._status_writer = SnapshotWriter(self.status_path)
        self._write = engines[0].options.write_status  # the in-process shim writes none
        for e in engines:
            e.options.write_status = False  # one status.json, written here

    # -- what the commands read --------------------------------------------------------------
    @property
    def report(self) -> Report:
        return merge_reports([e.report for e in self.engines])

    def rescan(self) -> set[str]:
        keys: set[str] = set()
        for e in self.engines:
            keys |= e.rescan()
        return keys

    def pending_runs(self) -> dict[str, int]:
        """(backend:run key) -> backlog: a run replayed into two backends is two runs of work."""
        return {f"{e.backend.name}:{k}": n for e in self.engines for k, n in e.pending_runs().items()}

    def backlog_bytes(self) -> int:
        return sum(e.backlog_bytes() for e in self.engines)

    def status(self) -> dict:
        return merge_snapshots([e.status() for e in self.engines])

    def write_status(self) -> dict | None:
        if not self._write:
            return None
        snapshot = self.status()
        self._status_writer.publish(snapshot)
        return snapshot

    # -- commands ----------------------------------------------------------------------------
    def watch(self, stop: threading.Event, on_tick: Callable[[Fanout, dict], None] | None = None) -> Report:
        """Each engine follows the root in a thread of its own; this thread writes the merged
        status and calls `on_tick` with it. An engine that dies takes the others down with it
        (a half-working sidecar is worse than a restarted one)."""
        errors: list[BaseException] = []

        def run(engine: Engine) -> None:
            try:
                engine.watch(stop)
            except BaseException as exc:  # noqa: BLE001 - reported and re-raised below
                errors.append(exc)
                stop.set()

        threads = [threading.Thread(target=run, args=(e,), name=f"tracelet-{e.backend.name}", daemon=True)
                   for e in self.engines]
        for t in threads:
            t.start()
        try:
            while not stop.is_set():
                snapshot = self.write_status()
                if on_tick is not None:
                    on_tick(self, snapshot or self.status())
                stop.wait(self.options.status_interval)
        finally:
            stop.set()
            for t in threads:
                t.join()
            self.write_status()
        if errors:
            raise errors[0]
        return self.report
