"""`tracelet watch ROOT`: follow a runs root until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Annotated

import typer

from ..engine import Options
from ._common import (BackendOpt, BatchBytesOpt, EntityOpt, LogLevelOpt, ModeOpt, ProjectOpt, StateDirOpt,
                      print_outcome, setup_logging, wire)

log = logging.getLogger("tracelet")


def install_signal_handlers(stop: threading.Event) -> None:
    """First SIGINT/SIGTERM: drain and exit 0. Second: exit at once (state is transactional)."""

    def handler(signum, _frame) -> None:  # noqa: ANN001
        if stop.is_set():
            os._exit(128 + signum)
        log.info("%s received: draining (send it again to exit at once)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def watch(
    root: Annotated[str, typer.Argument(help="The runs root: one run per first-level directory.")],
    backend: BackendOpt = "wandb",
    project: ProjectOpt = None,
    entity: EntityOpt = None,
    mode: ModeOpt = None,
    state_dir: StateDirOpt = None,
    poll: Annotated[bool, typer.Option(help="No inotify: find changes by periodic rescans only.")] = False,
    rescan_interval: Annotated[float, typer.Option(help="Seconds between full rescans.", min=0.1)] = 5.0,
    max_batch_bytes: BatchBytesOpt = 8 << 20,
    log_level: LogLevelOpt = "info",
) -> None:
    """Tail every tfevents file under ROOT and replay it live."""
    setup_logging(log_level)
    options = Options(rescan_interval=rescan_interval, use_inotify=not poll, max_batch_bytes=max_batch_bytes)
    w = wire(root, backend, project, entity, mode, state_dir, options)
    stop = threading.Event()
    install_signal_handlers(stop)
    try:
        w.engine.watch(stop)
    finally:
        w.backend.close()
        w.store.close()
    print_outcome(w)
