"""Figures derived from the status snapshot, the progress record, and the Prometheus endpoint.

Everything here reads `Engine.status()` dicts (or ``status.json``): the daemon loop hands a
fresh snapshot over once a second and the HTTP thread renders the last one it got, so a scrape
never touches the engine's live structures. ``prometheus_client`` is imported only when the
endpoint is started, so `tracelet status` and `tracelet health` work without it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

from ._version import __version__
from .errors import UsageError
from .status import write_json_atomic

PROGRESS_FILE = "progress.json"


# -- derived figures -------------------------------------------------------------------------
def current_size(f: dict, look: bool = True) -> int:
    """A file's size now if it can be seen from here (and `look`), else the size the daemon last saw."""
    if not look:
        return int(f.get("size") or 0)
    try:
        return max(int(f.get("size") or 0), os.stat(f["path"]).st_size)
    except (OSError, KeyError, TypeError):
        return int(f.get("size") or 0)


def file_behind(f: dict, look: bool = True) -> int:
    """Bytes on disk the daemon has not read yet and could read (0 for quarantined files and for
    an incomplete trailing record that has not grown since)."""
    if f.get("status", "ok") != "ok":
        return 0
    size = current_size(f, look)
    if f.get("pending_tail") and size <= int(f.get("size") or 0):
        return 0
    return max(0, size - int(f.get("read") or 0))


def bytes_behind(snapshot: dict, look: bool = True) -> int:
    return sum(file_behind(f, look) for run in snapshot.get("runs", []) for f in run.get("files", []))


def bytes_unacknowledged(snapshot: dict) -> int:
    """Bytes read and sent whose rows the backend has not confirmed yet."""
    return sum(max(0, int(f.get("read") or 0) - int(f.get("acked") or 0))
               for run in snapshot.get("runs", []) for f in run.get("files", []))


def files_by_status(snapshot: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for run in snapshot.get("runs", []):
        for f in run.get("files", []):
            out[f.get("status", "ok")] = out.get(f.get("status", "ok"), 0) + 1
    return out


# -- progress --------------------------------------------------------------------------------
class ProgressTracker:
    """Remembers when the daemon last made progress: read new bytes, or had nothing to read.

    `tracelet health` needs this across snapshots (one snapshot cannot tell "slow" from
    "stuck"); the daemon writes it to ``progress.json`` beside ``status.json``.
    """

    def __init__(self, now: float | None = None, *, look: bool = True) -> None:
        # look=False: trust the snapshot's sizes (the daemon's own tracker: its engine stats every
        # file at each rescan, and a thousand more stats every few seconds would cost more CPU
        # than the whole idle loop)
        self.look = look
        self._bytes_read = -1
        self._last_progress = time.time() if now is None else now

    def observe(self, snapshot: dict, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        behind = bytes_behind(snapshot, self.look)
        read = int(snapshot.get("totals", {}).get("bytes_read", 0))
        if read != self._bytes_read or behind == 0:
            self._bytes_read = read
            self._last_progress = now
        return {"pid": snapshot.get("pid", os.getpid()), "updated": now,
                "last_progress": self._last_progress, "bytes_behind": behind,
                "bytes_read": read}


def write_progress(state_dir: str, record: dict) -> None:
    write_json_atomic(os.path.join(state_dir, PROGRESS_FILE), record)


def read_progress(state_dir: str) -> dict | None:
    try:
        with open(os.path.join(state_dir, PROGRESS_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# -- Prometheus ------------------------------------------------------------------------------
class _Latest:
    """The last snapshot and progress record handed over by the daemon loop (swapped whole)."""

    def __init__(self) -> None:
        self.snapshot: dict = {}
        self.progress: dict = {}


def _families(latest: _Latest) -> Iterator:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

    snap, progress = latest.snapshot, latest.progress
    info = InfoMetricFamily("tracelet", "tracelet build and daemon facts")
    info.add_metric([], {"version": __version__, "backend": str(snap.get("backend", "")),
                         "root": str(snap.get("root", ""))})
    yield info
    if not snap:
        return
    totals = snap.get("totals", {})

    def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, value=value)

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, value=value)

    yield gauge("tracelet_start_time_seconds", "When the daemon started (Unix time).", snap.get("started", 0))
    yield gauge("tracelet_heartbeat_timestamp_seconds", "Last status snapshot (Unix time).",
                snap.get("heartbeat", 0))
    yield counter("tracelet_rows", "Rows handed to the backend.", totals.get("rows", 0))
    yield counter("tracelet_records", "TensorBoard event records ingested.", totals.get("events", 0))
    yield counter("tracelet_bytes_read", "Event-file bytes ingested.", totals.get("bytes_read", 0))
    yield counter("tracelet_corrupt_records", "Records skipped (checksum or not an event).",
                  totals.get("corrupt_records", 0))
    errors = CounterMetricFamily("tracelet_errors", "Errors by kind.", labels=["kind"])
    for kind, count in sorted(totals.get("errors", {}).items()):
        errors.add_metric([kind], count)
    yield errors
    yield gauge("tracelet_runs", "Runs known to the daemon.", totals.get("runs", 0))
    yield gauge("tracelet_open_runs", "Runs with an open backend run.", totals.get("open_runs", 0))
    files = GaugeMetricFamily("tracelet_files", "Event files by status.", labels=["status"])
    for status, count in sorted(files_by_status(snap).items()):
        files.add_metric([status], count)
    yield files
    yield gauge("tracelet_bytes_behind", "Bytes on disk not read yet.", bytes_behind(snap))
    yield gauge("tracelet_bytes_unacknowledged", "Bytes read whose rows the backend has not confirmed.",
                bytes_unacknowledged(snap))
    lag = snap.get("lag_seconds", {})
    lag_family = GaugeMetricFamily(
        "tracelet_lag_seconds", "Seconds from a file write to its rows reaching the backend (recent).",
        labels=["quantile"])
    for q, key in (("0.5", "p50"), ("0.99", "p99")):
        if lag.get(key) is not None:
            lag_family.add_metric([q], lag[key])
    yield lag_family
    if lag.get("last") is not None:
        yield gauge("tracelet_lag_last_seconds", "Lag of the most recent batch.", lag["last"])
    source = snap.get("source") or {}
    if source:  # an object-store root: what listing and reading cost
        requests = CounterMetricFamily("tracelet_source_requests", "Requests made to the object store.",
                                       labels=["kind"])
        for kind in ("list", "read"):
            requests.add_metric([kind], source.get(f"requests_{kind}", 0))
        yield requests
        yield gauge("tracelet_source_prefixes", "Run prefixes listed in the object store.",
                    source.get("prefixes", 0))
        yield gauge("tracelet_source_idle_prefixes", "Run prefixes listed with back-off (idle).",
                    source.get("idle_prefixes", 0))
        yield gauge("tracelet_source_unreachable_seconds",
                    "Seconds the object store has been failing (0: it answers).",
                    source.get("unreachable_seconds", 0))
    if progress.get("last_progress"):
        yield gauge("tracelet_last_progress_timestamp_seconds",
                    "Last time the daemon read new bytes or had nothing left to read (Unix time).",
                    progress["last_progress"])


class _Collector:
    def __init__(self, latest: _Latest) -> None:
        self._latest = latest

    def collect(self) -> Iterator:
        return _families(self._latest)


class MetricsServer:
    """A Prometheus endpoint on `host`:`port` (``/metrics``) with its own registry."""

    def __init__(self, host: str, port: int) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise UsageError("--metrics-port needs the prometheus-client package"
                             " (pip install prometheus-client)") from None
        self._latest = _Latest()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self._latest))
        try:
            httpd, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        self._httpd, self._thread = httpd, thread
        self.host = host
        self.port = int(httpd.server_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def update(self, snapshot: dict, progress: dict | None = None) -> None:
        self._latest.snapshot = snapshot
        if progress is not None:
            self._latest.progress = progress

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
