"""What every command shares: option types, root and state checks, logging, wiring."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Annotated, Optional

import typer

from .. import backends, gcpolicy, sources
from ..engine import Engine, Options
from ..fanout import Fanout, close_all
from ..errors import StateError, UsageError
from ..limits import Limits
from ..logsetup import escape_controls, setup_logging
from ..secrets import load_api_key
from ..state import StateStore, default_state_dir

__all__ = ["setup_logging"]  # re-exported: commands import it from here
log = logging.getLogger("tracelet")

BackendOpt = Annotated[Optional[list[str]], typer.Option(
    "--backend", "-b", help="Where to send data: wandb, mlflow; repeat it (or use wandb,mlflow) to feed"
    " several at once (default: $TRACELET_BACKEND or wandb).")]
ProjectOpt = Annotated[Optional[str], typer.Option(help="W&B project (default: $WANDB_PROJECT or 'tracelet').")]
EntityOpt = Annotated[Optional[str], typer.Option(help="W&B entity (default: $WANDB_ENTITY).")]
ModeOpt = Annotated[Optional[str], typer.Option(
    help="online, offline or disabled (default: $WANDB_MODE; else online only if an API key is set).")]
StateDirOpt = Annotated[Optional[str], typer.Option(
    "--state-dir", help="Where offsets and run ids live (default: $TRACELET_STATE_DIR or ~/.local/state/tracelet).")]
LogLevelOpt = Annotated[str, typer.Option(envvar="TRACELET_LOG_LEVEL", help="debug, info, warning or error.")]
LogFormatOpt = Annotated[str, typer.Option(
    envvar="TRACELET_LOG_FORMAT", help="text (for people) or json (one object per line, for log shippers).")]
FollowOpt = Annotated[bool, typer.Option(
    "--follow-symlinks", envvar="TRACELET_FOLLOW_SYMLINKS",
    help="Follow symlinked run directories and event files under ROOT (off: the root is untrusted;"
         " run metadata and artifacts are never read through a symlink either way).")]
TrackingUriOpt = Annotated[Optional[str], typer.Option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
    help="MLflow tracking URI (--backend mlflow; default: an SQLite store inside the state directory).")]
BatchBytesOpt = Annotated[int, typer.Option(
    "--max-batch-bytes", min=1024, help="Bytes read per run before rows are journaled and sent.")]
StorageOpt = Annotated[Optional[list[str]], typer.Option(
    "--storage-option", "-o", metavar="KEY=VALUE",
    help="An option of the object store's fsspec file system (ROOT is s3://, gs://, az://...);"
         " repeat it. Values are JSON when they parse as JSON (true, 3, {...}), else text."
         " Values are never logged.")]
ShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", metavar="K/N", envvar="TRACELET_SHARD",
    help="Only runs whose stable hash of their path is K modulo N (0 <= K < N): N replicas split"
         " one root with no coordination. Each replica keeps its own state directory.")]


def parse_storage_options(items: list[str] | None) -> dict:
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--storage-option wants KEY=VALUE, got {key or item[:40]!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    k, sep, n = text.partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        shard = (-1, 0)
    if not sep or shard[1] < 1 or not 0 <= shard[0] < shard[1]:
        raise UsageError(f"--shard wants K/N with 0 <= K < N (for example 0/3), got {text!r}")
    return shard


def check_root(root: str, storage_options: dict | None = None) -> str:
    if sources.is_url(root):
        return check_url_root(root, storage_options or {})
    if not os.path.exists(root):
        raise UsageError(f"runs root {root} does not exist")
    if not os.path.isdir(root):
        raise UsageError(f"runs root {root} is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UsageError(f"runs root {root} is not readable")
    return os.path.abspath(root)


def check_url_root(url: str, storage_options: dict) -> str:
    """The root URL as the source spells it; a missing bucket or refused credentials stop here,
    an unreachable store does not (watch retries with back-off)."""
    from ..sources.objectstore import ObjectStoreSource, open_filesystem

    try:
        fs, path = open_filesystem(url, storage_options)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"runs root {url}: bad --storage-option ({type(exc).__name__}: {exc})") from None
    source = ObjectStoreSource(url, fs)
    try:
        # a prefix exists once an object is under it: an empty one is fine (training starts later),
        # a missing bucket or container is not
        if not fs.isdir(path):
            container = path.split("/", 1)[0]
            if not container or container == path or not fs.exists(container):  # file:// has none
                raise UsageError(f"runs root {source.root} does not exist")
            log.warning("runs root %s holds no objects yet", source.root)
    except FileNotFoundError:
        raise UsageError(f"runs root {source.root} does not exist") from None
    except PermissionError as exc:
        raise UsageError(f"runs root {source.root} is not readable ({type(exc).__name__})") from None
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - network or server: watch retries, upload reports
        log.warning("runs root %s cannot be checked now (%s); going on", source.root, type(exc).__name__)
    # abfss://container@account.dfs.core.windows.net/...: the account is only in the URL, and the
    # engine opens the store again from what this returns: give it the URL as written
    return url if "@" in url.split("://", 1)[1].split("/", 1)[0] else source.root


def check_state_dir(state_dir: str | None, root: str) -> str:
    path = os.path.abspath(state_dir or default_state_dir())
    if sources.is_url(root):
        if not root.startswith("file://"):
            return path
        root = root[len("file://"):]
    real_root, real_state = os.path.realpath(root), os.path.realpath(path)
    if real_state == real_root or real_state.startswith(real_root + os.sep):
        raise UsageError(f"state directory {path} must not be inside the watched root {root}")
    return path


@dataclass
class Wiring:
    engine: Engine | Fanout  # one engine per backend; a Fanout when there are several
    backends: list[backends.Backend]
    stores: list[StateStore]
    state_dir: str
    key_source: str = ""  # where the W&B API key came from (a variable or a path), "" if none

    @property
    def backend(self) -> backends.Backend:
        return self.backends[0]

    @property
    def engines(self) -> list[Engine]:
        return self.engine.engines if isinstance(self.engine, Fanout) else [self.engine]

    def close(self) -> None:
        close_all(self.backends, self.stores)


def wire(root: str, backend: list[str] | str | None, project: str | None, entity: str | None, mode: str | None,
         state_dir: str | None, options: Options, on_progress=None, tracking_uri: str | None = None) -> Wiring:
    root = check_root(root, options.storage_options)
    state_path = check_state_dir(state_dir, root)
    options.limits = Limits.from_env()
    names = backends.backend_names(backend)
    unknown = [n for n in names if n not in backends.available()]
    if unknown:
        raise UsageError(f"unknown backend {unknown[0]!r} (available: {', '.join(backends.available())})")
    key_source = load_api_key()  # before the backend: the key decides online vs offline
    stores: list[StateStore] = []
    made: list[backends.Backend] = []
    try:
        for i, name in enumerate(names):
            try:  # one lock for the directory, taken by the first store
                stores.append(StateStore(state_path, lock=i == 0, backend=name))
            except StateError as exc:
                raise UsageError(str(exc)) from exc
            made.append(backends.open_backend(name, state_dir=state_path, project=project, entity=entity,
                                              mode=mode, tracking_uri=tracking_uri))
    except BaseException:
        for store in reversed(stores):
            store.close()
        raise
    if os.environ.get("TRACELET_GC", "1") != "0":
        gcpolicy.apply()
    engines = [Engine(root, be, store, options if i == 0 else dataclasses.replace(options), project=project,
                      entity=entity, on_progress=on_progress)
               for i, (be, store) in enumerate(zip(made, stores))]
    engine = engines[0] if len(engines) == 1 else Fanout(engines)
    return Wiring(engine, made, stores, state_path, key_source)


def print_outcome(w: Wiring, as_log: bool = False) -> None:
    """The closing summary on stderr; `as_log` sends it through logging (JSON logs stay JSON)."""
    rep = w.engine.report

    def say(line: str, level: int = logging.INFO) -> None:
        if as_log:
            log.log(level, line)
        else:
            typer.echo(f"tracelet: {escape_controls(line)}", err=True)  # paths come from the root

    for line in rep.pending_tails:
        say(f"note: {line}")
    for path in rep.quarantined:
        say(f"error: {path} was not read to the end (see the log above)", logging.ERROR)
    say(f"{rep.rows} row(s) from {rep.runs} run(s), {rep.bytes_read} bytes read; state in {w.state_dir}")
    for be in w.backends:
        for line in be.summary():
            say(line)
