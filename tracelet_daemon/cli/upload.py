"""`tracelet upload ROOT`: replay everything present once, resumably."""

from __future__ import annotations

import dataclasses
import sys
from contextlib import nullcontext
from typing import Annotated, Optional

import typer

from ..engine import Options
from ..parallel import default_jobs, upload_parallel
from ..progress import Tick, upload_pass
from ._common import (BackendOpt, BatchBytesOpt, EntityOpt, FollowOpt, LogFormatOpt, LogLevelOpt, ModeOpt, ProjectOpt,
                      ShardOpt, StorageOpt, parse_shard, parse_storage_options,
                      StateDirOpt, TrackingUriOpt, print_outcome, setup_logging, wire)


def upload(
    root: Annotated[str, typer.Argument(
        help="The runs root, one run per first-level directory: a path, or an s3://, gs://, az://,"
             " file:// ... URL (docs/object-stores.md).")],
    backend: BackendOpt = None,
    project: ProjectOpt = None,
    entity: EntityOpt = None,
    mode: ModeOpt = None,
    state_dir: StateDirOpt = None,
    tracking_uri: TrackingUriOpt = None,
    progress: Annotated[bool, typer.Option(
        help="Show a progress bar (bytes, runs, rows) when stderr is a terminal and logs are text.")] = True,
    max_batch_bytes: BatchBytesOpt = 8 << 20,
    follow_symlinks: FollowOpt = False,
    storage_option: StorageOpt = None,
    shard: ShardOpt = None,
    jobs: Annotated[Optional[int], typer.Option(
        "--jobs", "-j", min=1, envvar="TRACELET_JOBS",
        help="Worker processes replaying runs in parallel (default: one per CPU, at most 4).")] = None,
    log_level: LogLevelOpt = "info",
    log_format: LogFormatOpt = "text",
) -> None:
    """Upload every run under ROOT once; a rerun sends only what is new."""
    setup_logging(log_level, log_format)
    options = Options(max_batch_bytes=max_batch_bytes, follow_symlinks=follow_symlinks,
                      storage_options=parse_storage_options(storage_option), shard=parse_shard(shard))
    w = wire(root, backend, project, entity, mode, state_dir, options, tracking_uri=tracking_uri)
    display = None
    # the bar is for people: never on a pipe, and never between JSON lines
    if progress and log_format == "text" and sys.stderr.isatty():
        w.engine.rescan()
        runs = len(w.engine.pending_runs())
        if runs:
            from ._progress import UploadProgress

            display = UploadProgress(w.engine.backlog_bytes(), runs)
    try:
        with display or nullcontext():
            reports = [_upload_one(engine, i, display.add if display is not None else None, jobs, project,
                                   entity, mode)
                       for i, engine in enumerate(w.engines)]
        if len(reports) > 1:
            w.engine.write_status()  # one status.json for all backends
    finally:
        w.close()
    report = w.engine.report if len(reports) > 1 else reports[0]
    print_outcome(w, as_log=log_format == "json")
    if not report.ok or report.quarantined:
        raise typer.Exit(1)


def _upload_one(engine, index: int, on_tick, jobs: int | None, project, entity, mode):  # noqa: ANN001
    """One backend's pass: W&B in worker processes when the backlog is worth it, else here.
    Ticks of the `index`-th backend get sources of their own so the progress sums stay right."""
    if on_tick is not None and index:
        outer = on_tick

        def on_tick(t: Tick) -> None:
            outer(dataclasses.replace(t, source=t.source + 1000 * index))

    workers = jobs or default_jobs()
    if workers > 1 and engine.backend.name == "wandb":
        options = {"project": project, "entity": entity, "mode": getattr(engine.backend, "mode", mode)}
        return upload_parallel(engine, workers, "wandb", options, on_tick=on_tick, force=jobs is not None)
    return upload_pass(engine, 0, on_tick)
