"""What every command shares: option types, root and state checks, logging, wiring."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Annotated, Optional

import typer

from .. import backends, gcpolicy
from ..engine import Engine, Options
from ..errors import StateError, UsageError
from ..logsetup import setup_logging
from ..secrets import load_api_key
from ..state import StateStore, default_state_dir

__all__ = ["setup_logging"]  # re-exported: commands import it from here
log = logging.getLogger("tracelet")

BackendOpt = Annotated[str, typer.Option("--backend", "-b", help="Where to send data.")]
ProjectOpt = Annotated[Optional[str], typer.Option(help="W&B project (default: $WANDB_PROJECT or 'tracelet').")]
EntityOpt = Annotated[Optional[str], typer.Option(help="W&B entity (default: $WANDB_ENTITY).")]
ModeOpt = Annotated[Optional[str], typer.Option(
    help="online, offline or disabled (default: $WANDB_MODE; else online only if an API key is set).")]
StateDirOpt = Annotated[Optional[str], typer.Option(
    "--state-dir", help="Where offsets and run ids live (default: $TRACELET_STATE_DIR or ~/.local/state/tracelet).")]
LogLevelOpt = Annotated[str, typer.Option(envvar="TRACELET_LOG_LEVEL", help="debug, info, warning or error.")]
LogFormatOpt = Annotated[str, typer.Option(
    envvar="TRACELET_LOG_FORMAT", help="text (for people) or json (one object per line, for log shippers).")]
BatchBytesOpt = Annotated[int, typer.Option(
    "--max-batch-bytes", min=1024, help="Bytes read per run before rows are journaled and sent.")]


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
    key_source: str = ""  # where the W&B API key came from (a variable or a path), "" if none


def wire(root: str, backend: str, project: str | None, entity: str | None, mode: str | None,
         state_dir: str | None, options: Options, on_progress=None) -> Wiring:
    root = check_root(root)
    state_path = check_state_dir(state_dir, root)
    if backend not in backends.available():
        raise UsageError(f"unknown backend {backend!r} (available: {', '.join(backends.available())})")
    key_source = load_api_key()  # before the backend: the key decides online vs offline
    try:
        store = StateStore(state_path)
    except StateError as exc:
        raise UsageError(str(exc)) from exc
    if backend == "wandb":
        from ..backends.wandb import prepare_environment

        prepare_environment(state_path)
    be = backends.create(backend, project=project, entity=entity, mode=mode)
    if os.environ.get("TRACELET_GC", "1") != "0":
        gcpolicy.apply()
    engine = Engine(root, be, store, options, project=project, entity=entity, on_progress=on_progress)
    return Wiring(engine, be, store, state_path, key_source)


def print_outcome(w: Wiring, as_log: bool = False) -> None:
    """The closing summary on stderr; `as_log` sends it through logging (JSON logs stay JSON)."""
    rep = w.engine.report

    def say(line: str, level: int = logging.INFO) -> None:
        if as_log:
            log.log(level, line)
        else:
            typer.echo(f"tracelet: {line}", err=True)

    for line in rep.pending_tails:
        say(f"note: {line}")
    for path in rep.quarantined:
        say(f"error: {path} was not read to the end (see the log above)", logging.ERROR)
    say(f"{rep.rows} row(s) from {rep.runs} run(s), {rep.bytes_read} bytes read; state in {w.state_dir}")
    for line in w.backend.summary():
        say(line)
