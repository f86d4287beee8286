"""`tracelet upload ROOT`: replay everything present once, resumably."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from ..engine import Options
from ..parallel import default_jobs, upload_parallel
from ._common import (BackendOpt, BatchBytesOpt, EntityOpt, LogFormatOpt, LogLevelOpt, ModeOpt, ProjectOpt,
                      StateDirOpt, print_outcome, setup_logging, wire)


def upload(
    root: Annotated[str, typer.Argument(help="The runs root: one run per first-level directory.")],
    backend: BackendOpt = "wandb",
    project: ProjectOpt = None,
    entity: EntityOpt = None,
    mode: ModeOpt = None,
    state_dir: StateDirOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (bytes).")] = True,
    max_batch_bytes: BatchBytesOpt = 8 << 20,
    jobs: Annotated[Optional[int], typer.Option(
        "--jobs", "-j", min=1, envvar="TRACELET_JOBS",
        help="Worker processes replaying runs in parallel (default: one per CPU, at most 4).")] = None,
    log_level: LogLevelOpt = "info",
    log_format: LogFormatOpt = "text",
) -> None:
    """Upload every run under ROOT once; a rerun sends only what is new."""
    setup_logging(log_level, log_format)
    bar = None
    w = wire(root, backend, project, entity, mode, state_dir, Options(max_batch_bytes=max_batch_bytes))
    if progress and sys.stderr.isatty():
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        w.engine.rescan()
        bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn(), transient=False)
        task = bar.add_task("upload", total=w.engine.backlog_bytes())
        w.engine.on_progress = lambda n: bar.advance(task, n)
        bar.start()
    try:
        workers = jobs or default_jobs()
        if workers > 1 and backend == "wandb":
            options = {"project": project, "entity": entity, "mode": getattr(w.backend, "mode", mode)}
            report = upload_parallel(w.engine, workers, backend, options, on_progress=w.engine.on_progress,
                                     force=jobs is not None)
        else:
            report = w.engine.upload()
    finally:
        if bar is not None:
            bar.stop()
        w.backend.close()
        w.store.close()
    print_outcome(w, as_log=log_format == "json")
    if not report.ok or report.quarantined:
        raise typer.Exit(1)
