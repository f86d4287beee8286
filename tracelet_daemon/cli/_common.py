"""What every command shares: option types, root and state checks, logging, wiring."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Optional

import typer

from .. import backends
from ..engine import Engine, Options
from ..errors import StateError, UsageError
from ..state import StateStore, default_state_dir

BackendOpt = Annotated[str, typer.Option("--backend", "-b", help="Where to send data.")]
ProjectOpt = Annotated[Optional[str], typer.Option(help="W&B project (default: $WANDB_PROJECT or 'tracelet').")]
EntityOpt = Annotated[Optional[str], typer.Option(help="W&B entity (default: $WANDB_ENTITY).")]
ModeOpt = Annotated[Optional[str], typer.Option(
    help="online, offline or disabled (default: $WANDB_MODE; else online only if an API key is set).")]
StateDirOpt = Annotated[Optional[str], typer.Option(
    "--state-dir", help="Where offsets and run ids live (default: $TRACELET_STATE_DIR or ~/.local/state/tracelet).")]
LogLevelOpt = Annotated[str, typer.Option(help="debug, info, warning or error.")]
BatchBytesOpt = Annotated[int, typer.Option(
    "--max-batch-bytes", min=1024, help="Bytes read per run before rows are journaled and sent.")]


def setup_logging(level: str) -> None:
    lvl = getattr(logging, level.upper(), None)
    if not isinstance(lvl, int):
        raise UsageError(f"unknown log level {level!r}")
    logging.basicConfig(
        level=lvl, stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(message)s", force=True
    )
    for noisy in ("watchdog", "wandb"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))


def check_root(root: str) -> str:
    if not os.path.exists(root):
        raise UsageError(f"runs root {root} does not exist")
    if not os.path.isdir(root):
        raise UsageError(f"runs root {root} is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UsageError(f"runs root {root} is not readable")
    return os.path.abspath(root)


def check_state_dir(state_dir: str | None, root: str) -> str:
    path = os.path.abspath(state_dir or default_state_dir())
    real_root, real_state = os.path.realpath(root), os.path.realpath(path)
    if real_state == real_root or real_state.startswith(real_root + os.sep):
        raise UsageError(f"state directory {path} must not be inside the watched root {root}")
    return path


@dataclass
class Wiring:
    engine: Engine
    backend: backends.Backend
    store: StateStore
    state_dir: str


def wire(root: str, backend: str, project: str | None, entity: str | None, mode: str | None,
         state_dir: str | None, options: Options, on_progress=None) -> Wiring:
    root = check_root(root)
    state_path = check_state_dir(state_dir, root)
    if backend not in backends.available():
        raise UsageError(f"unknown backend {backend!r} (available: {', '.join(backends.available())})")
    try:
        store = StateStore(state_path)
    except StateError as exc:
        raise UsageError(str(exc)) from exc
    if backend == "wandb":
        from ..backends.wandb import prepare_environment

        prepare_environment(state_path)
    be = backends.create(backend, project=project, entity=entity, mode=mode)
    engine = Engine(root, be, store, options, project=project, entity=entity, on_progress=on_progress)
    return Wiring(engine, be, store, state_path)


def print_outcome(w: Wiring) -> None:
    rep = w.engine.report
    for line in rep.pending_tails:
        typer.echo(f"tracelet: note: {line}", err=True)
    for path in rep.quarantined:
        typer.echo(f"tracelet: error: {path} was not read to the end (see the log above)", err=True)
    typer.echo(f"tracelet: {rep.rows} row(s) from {rep.runs} run(s), {rep.bytes_read} bytes read;"
               f" state in {w.state_dir}", err=True)
    for line in w.backend.summary():
        typer.echo(f"tracelet: {line}", err=True)
