"""`tracelet watch ROOT`: follow a runs root until SIGINT/SIGTERM.

Besides the engine's loop this is where the daemon meets its supervisor: sd_notify (READY,
WATCHDOG, STATUS, STOPPING) for systemd, the progress record that `tracelet health` reads, the
Prometheus endpoint, and a bounded drain on SIGTERM so `docker stop`, Kubernetes and systemd
never have to SIGKILL it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Annotated, Optional

import typer

from ..engine import Engine, Options
from ..metrics import MetricsServer, ProgressTracker, write_progress
from ..notify import Notifier
from ._signals import StopRequest
from ._common import (BackendOpt, BatchBytesOpt, EntityOpt, FollowOpt, LogFormatOpt, LogLevelOpt, ModeOpt, ProjectOpt,
                      ShardOpt, StorageOpt, parse_shard, parse_storage_options,
                      StateDirOpt, TrackingUriOpt, print_outcome, setup_logging, wire)

log = logging.getLogger("tracelet")

def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def status_line(snapshot: dict, behind: int) -> str:
    """One line for systemd's STATUS= (shown by `systemctl status`)."""
    t = snapshot.get("totals", {})
    lag = snapshot.get("lag_seconds", {}).get("p50")
    lag_text = f", lag p50 {lag:.1f}s" if lag is not None else ""
    return (f"{t.get('runs', 0)} run(s), {t.get('open_runs', 0)} open, {t.get('rows', 0)} row(s),"
            f" {_human_bytes(t.get('bytes_read', 0))} read, {_human_bytes(behind)} behind{lag_text}")


def _describe(be, key_source: str) -> str:  # noqa: ANN001 - a Backend
    """`backend wandb (offline), W&B API key not set` / `backend mlflow, tracking URI …`."""
    mode = f" ({be.mode})" if getattr(be, "mode", "") else ""
    target = getattr(be, "target", None)  # MLflow: where it writes (credentials redacted)
    where = (f"tracking URI {target.display}" if target is not None else
             f"W&B API key {'from ' + key_source if key_source else 'not set'}")
    return f"backend {be.name}{mode}, {where}"


class Supervision:
    """What the daemon reports with every status snapshot besides its own work.

    Called from the engine's loop (`on_tick`) and, rate-limited, from inside long drains
    (`on_progress`), so a big backlog keeps the heartbeat and the watchdog going.
    """

    def __init__(self, state_dir: str, notifier: Notifier, metrics: MetricsServer | None) -> None:
        self.state_dir = state_dir
        self.notifier = notifier
        self.metrics = metrics
        self.tracker = ProgressTracker(look=False)
        self._last_tick = 0.0

    def tick(self, engine: Engine, snapshot: dict | None = None) -> None:
        self._last_tick = time.monotonic()
        snapshot = snapshot if snapshot is not None else engine.status()
        progress = self.tracker.observe(snapshot)
        try:
            write_progress(self.state_dir, progress)
        except (OSError, ValueError) as exc:
            log.warning("cannot write the progress record in %s: %s", self.state_dir, exc)
        if self.metrics is not None:
            self.metrics.update(snapshot, progress)
        self.notifier.heartbeat(status_line(snapshot, progress["bytes_behind"]))

    def during_drain(self, engine: Engine) -> None:
        if time.monotonic() - self._last_tick >= 1.0:
            self.tick(engine, engine.write_status())


def watch(
    ctx: typer.Context,
    root: Annotated[str, typer.Argument(
        help="The runs root, one run per first-level directory: a path, or an s3://, gs://, az://,"
             " file:// ... URL (docs/object-stores.md).")],
    backend: BackendOpt = None,
    project: ProjectOpt = None,
    entity: EntityOpt = None,
    mode: ModeOpt = None,
    state_dir: StateDirOpt = None,
    tracking_uri: TrackingUriOpt = None,
    poll: Annotated[bool, typer.Option(help="No inotify: find changes by periodic rescans only.")] = False,
    rescan_interval: Annotated[Optional[float], typer.Option(
        help="Seconds between full rescans (default: 10, or 2 with --poll).", min=0.1)] = None,
    max_batch_bytes: BatchBytesOpt = 8 << 20,
    idle_after: Annotated[float, typer.Option(
        envvar="TRACELET_IDLE_AFTER", min=0,
        help="Object-store roots: a run whose listing has not changed for this many seconds is listed"
        " less and less often (exponential back-off) ...")] = 300.0,
    idle_interval: Annotated[float, typer.Option(
        envvar="TRACELET_IDLE_INTERVAL", min=1,
        help="... down to one listing per this many seconds: the bound on requests per idle run.")] = 60.0,
    follow_symlinks: FollowOpt = False,
    storage_option: StorageOpt = None,
    shard: ShardOpt = None,
    drain_timeout: Annotated[float, typer.Option(
        envvar="TRACELET_DRAIN_TIMEOUT", min=0,
        help="After SIGTERM/SIGINT, seconds to finish open runs before exiting anyway (0: no limit)."
        " Keep it below the supervisor's grace period (docker stop: 10 s by default).")] = 20.0,
    max_open_runs: Annotated[int, typer.Option(
        envvar="TRACELET_MAX_OPEN_RUNS", min=0,
        help="At most this many W&B runs open at once; idle ones are finished and resumed on new"
        " data (0: no limit).")] = 64,
    metrics_port: Annotated[Optional[int], typer.Option(
        envvar="TRACELET_METRICS_PORT", min=0, max=65535,
        help="Serve Prometheus metrics on this port (/metrics); off by default.")] = None,
    metrics_host: Annotated[str, typer.Option(
        envvar="TRACELET_METRICS_HOST",
        help="Address the metrics endpoint listens on (0.0.0.0 inside a container).")] = "127.0.0.1",
    log_level: LogLevelOpt = "info",
    log_format: LogFormatOpt = "text",
) -> None:
    """Tail every tfevents file under ROOT and replay it live."""
    # first thing: a stop request may already have come (the CLI catches it before its imports)
    request = ctx.obj if isinstance(ctx.obj, StopRequest) else StopRequest().install()
    stop = request.event
    setup_logging(log_level, log_format)
    notifier = Notifier()
    request.arm(notifier, drain_timeout)
    rescan_interval = rescan_interval or (2.0 if poll else 10.0)
    options = Options(rescan_interval=rescan_interval, use_inotify=not poll, max_batch_bytes=max_batch_bytes,
                      max_open_runs=max_open_runs, follow_symlinks=follow_symlinks,
                      storage_options=parse_storage_options(storage_option), shard=parse_shard(shard),
                      idle_after=idle_after, idle_interval=idle_interval)
    w = wire(root, backend, project, entity, mode, state_dir, options, tracking_uri=tracking_uri)
    metrics = None
    try:
        if metrics_port is not None:
            metrics = MetricsServer(metrics_host, metrics_port)
        supervision = Supervision(w.state_dir, notifier, metrics)
        if len(w.engines) == 1:  # a fan-out ticks from its own thread while its engines drain
            w.engine.on_progress = lambda _n: supervision.during_drain(w.engine)
        log.info("tracelet pid %d: root %s, state %s, %s%s", os.getpid(), w.engine.root, w.state_dir,
                 ", ".join(_describe(be, w.key_source) for be in w.backends),
                 f", metrics on {metrics.url}" if metrics else "")
        if request.running():  # else stopped during start-up: nothing was opened, nothing to drain
            notifier.ready(f"watching {w.engine.root}")
            w.engine.watch(stop, on_tick=supervision.tick)
    finally:
        if metrics is not None:
            metrics.close()
        w.close()
    print_outcome(w, as_log=log_format == "json")
    log.info("stopped")
