"""start_logging / get_active_experiment / stop_logging and the Experiment they hand out.

One experiment is active at a time. It owns a run directory under the runs root, describes the
run there (run.json, artifacts: see _protocol.py) and makes SummaryWriters write into it (see
_writers.py). Who turns the files into a W&B run is decided once, at start (docs/python-api.md,
"Sidecar or in-process"):

1. ``mode: "disabled"``: nobody (run.json says ``"uploader": "none"``); W&B is never touched.
2. A W&B run already active in this process (``wandb.run``) or a sweep trial (``wandb.agent``
   sets ``WANDB_SWEEP_ID``): in-process, logging into that run (``attached``).
3. ``start_logging(sidecar=True/False)``, else ``TRACELET_SIDECAR`` (1/true/yes/on, 0/false/no/off;
   ``auto`` or unset: go on).
4. Resuming a run directory whose run.json names an uploader: that one again (a run is sent by
   one kind of uploader, with one state store, for its whole life).
5. A live ``tracelet watch`` following the runs root, seen by its ``status.json`` (in
   ``$TRACELET_SIDECAR_STATE_DIR`` or this user's state dir, heartbeat younger than 30 s; the
   sidecar never writes under the root): sidecar. Otherwise in-process.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: run directories are not locked
    fcntl = None

from tracelet_daemon._version import __version__
from tracelet_daemon.metadata import DIRNAME, MetadataError, read_lightning_hparams
from tracelet_daemon.runs import run_ref

from . import _artifacts, _writers
from ._events import EventLog
from ._protocol import PublishedArtifact, RunFile, deep_merge, jsonable, live_sidecar, safe_name

log = logging.getLogger("tracelet")

RUN_KEYS = ("entity", "project", "name", "tags", "notes", "group", "job_type", "mode", "save_code", "resume",
            "id")
MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
BACKENDS = ("wandb", "mlflow")
SIDECAR, IN_PROCESS, ATTACHED, NOBODY = "sidecar", "in-process", "attached", "none"
_TRUE, _FALSE = {"1", "true", "yes", "on", "sidecar"}, {"0", "false", "no", "off", "in-process", "inprocess"}

_lock = threading.RLock()
_current: Experiment | None = None
_atexit_registered = False


def _active() -> Experiment | None:
    return _current


# -- public functions -----------------------------------------------------------------------------
def start_logging(exp_name: str | None = None, project: str | None = None, backend: str | Iterable[str] = "wandb",
                  config: Mapping[str, object] | None = None, *, runs_root: str | os.PathLike | None = None,
                  sidecar: bool | None = None, state_dir: str | os.PathLike | None = None,
                  api_key: str | None = None, backend_url: str | None = None, **ignored: object) -> Experiment:
    """Start an experiment and return it; a previous active experiment is stopped first.

    `config` holds W&B run settings (entity, name, tags, notes, group, job_type, mode, save_code,
    resume, id, project) and, under any other key, hyperparameters. See docs/python-api.md.
    `backend="mlflow"` replays into MLflow instead (docs/mlflow.md): `backend_url` is then the
    tracking URI (default: $MLFLOW_TRACKING_URI, else an SQLite store in the state directory),
    `project` the experiment, and a live sidecar is used only if it feeds MLflow too.
    """
    if ignored:
        log.info("tracelet: start_logging ignores %s", ", ".join(sorted(ignored)))
    from tracelet_daemon.backends import backend_names

    names = backend_names(backend or "wandb")
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or not names:
        raise ValueError(f"unknown backend {unknown or names!r}: tracelet replays into {', '.join(BACKENDS)}")
    if api_key and "wandb" in names:
        os.environ["WANDB_API_KEY"] = api_key
    if backend_url and names == ["wandb"]:
        os.environ["WANDB_BASE_URL"] = backend_url
    with _lock:
        if _current is not None:
            stop_logging()
        exp = Experiment._start(exp_name, project, dict(config or {}), runs_root=runs_root, sidecar=sidecar,
                                state_dir=state_dir, backend=names,
                                tracking_uri=backend_url if "mlflow" in names else None)
        _set_current(exp)
        _register_atexit()
        return exp


def get_active_experiment() -> Experiment | None:
    """The experiment start_logging() returned, until stop_logging(); None otherwise."""
    return _current


def stop_logging(timeout: float | None = None) -> None:
    """Flush the writers, drain and finish the run. Safe to call twice, or with nothing active."""
    with _lock:
        exp = _current
        if exp is not None:
            exp._stop(timeout)


def _set_current(exp: Experiment | None) -> None:
    global _current
    _current = exp


def _register_atexit() -> None:
    """Registered after wandb's own exit hooks (wandb is set up before, in in-process mode), so
    ours runs first: the run is drained and finished while W&B can still take it."""
    global _atexit_registered
    if _atexit_registered:
        atexit.unregister(_at_exit)
    atexit.register(_at_exit)
    _atexit_registered = True


def _at_exit() -> None:
    try:
        stop_logging()
    except Exception as exc:  # noqa: BLE001 - the interpreter is going away; say it once
        log.error("tracelet: stopping at exit failed: %s", exc)


# -- choosing the run directory and the uploader ----------------------------------------------------
def default_runs_root() -> str:
    return os.environ.get("TRACELET_RUNS_ROOT") or "runs"


def default_state_dir() -> str:
    from tracelet_daemon.state import default_state_dir as daemon_default

    return daemon_default()


def _series(root: str, base: str) -> list[str]:
    """Existing directories of one experiment name: base, base-2, base-3, ... in order."""
    out = []
    if os.path.isdir(os.path.join(root, base)):
        out.append((1, base))
    prefix = base + "-"
    try:
        for name in os.listdir(root):
            if name.startswith(prefix) and name[len(prefix):].isdigit() and os.path.isdir(os.path.join(root, name)):
                out.append((int(name[len(prefix):]), name))
    except OSError:
        pass
    return [os.path.join(root, n) for _, n in sorted(out)]


def _is_empty(directory: str) -> bool:
    try:
        return not os.listdir(directory)
    except OSError:
        return True


def _lock_run(run_dir: str):
    """Hold ``.tracelet/lock`` for the experiment's life; None if another process holds it."""
    path = os.path.join(run_dir, DIRNAME)
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _resume_mode(resume: object) -> str:
    mode = {True: "allow", False: "never", None: "never"}.get(resume, resume)  # type: ignore[call-overload]
    mode = str(mode).lower()
    if mode not in ("never", "allow", "must", "auto"):
        raise ValueError(f"resume={resume!r}: expected never, allow, must, auto, True or False")
    return mode


def _resumable(root: str, base: str, mode: str) -> str | None:
    """The run directory `resume` (as W&B means it) continues, or None for a new one."""
    series = _series(root, base)
    if mode != "never" and series:
        latest = series[-1]
        previous = RunFile(latest).read()
        if mode != "auto" or (previous is not None and not previous.get("finished")):
            return latest
    if mode == "must":
        raise ValueError(f"resume='must' but there is no run {base!r} under {root}")
    return None


def _create_run_dir(root: str, base: str, describe) -> tuple[str, int]:  # noqa: ANN001
    """A new run directory `base`, `base-2`, ... that appears at once with its run.json (built
    in a hidden staging directory, then renamed), so a sidecar never sees it undescribed."""
    staging = os.path.join(root, f".tmp-{base}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    fd = _lock_run(staging)
    try:
        describe(staging)
        n = 1
        while True:
            candidate = os.path.join(root, base if n == 1 else f"{base}-{n}")
            if not os.path.exists(candidate) or (os.path.isdir(candidate) and _is_empty(candidate)):
                try:
                    os.rename(staging, candidate)  # replaces only an empty directory
                    return candidate, fd
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                        raise
            n += 1
    except BaseException:
        os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _parse_sidecar(value: object) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text in ("", "auto"):
        return None
    raise ValueError(f"sidecar={value!r}: expected true, false or auto")


def _wandb_run_active():  # noqa: ANN202
    """The active wandb Run, without importing wandb if the program has not."""
    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


def decide(*, mode: str | None, explicit: bool | None, recorded: str | None, runs_root: str,
           backend: str | list[str] = "wandb") -> tuple[str, str]:
    """(uploader, why) by the documented rule (module docstring). Attached mode is for W&B alone:
    with several backends the run is sent in-process (or by a sidecar feeding them all)."""
    names = [backend] if isinstance(backend, str) else list(backend)
    if mode == "disabled":
        return NOBODY, "mode is 'disabled'"
    if names == ["wandb"] and _wandb_run_active() is not None:
        return ATTACHED, "a W&B run is already active in this process"
    if names == ["wandb"] and os.environ.get("WANDB_SWEEP_ID"):
        return ATTACHED, "running as a W&B sweep trial (WANDB_SWEEP_ID)"
    if explicit is None:
        explicit = _parse_sidecar(os.environ.get("TRACELET_SIDECAR"))
        source = "TRACELET_SIDECAR"
    else:
        source = "start_logging(sidecar=...)"
    if explicit is not None:
        return (SIDECAR, f"{source} says so") if explicit else (IN_PROCESS, f"{source} says so")
    if recorded in (SIDECAR, IN_PROCESS):
        return recorded, "the resumed run was sent that way before"
    hb = live_sidecar(runs_root)
    if hb is not None:
        sends_to = hb.get("backends") or [hb.get("backend") or "wandb"]
        if not set(names) <= set(sends_to):  # a sidecar feeding other backends would send this run there
            return IN_PROCESS, f"the sidecar following {runs_root} sends to {', '.join(map(str, sends_to))}"
        return SIDECAR, f"a tracelet sidecar follows {runs_root} (pid {hb.get('pid')} on {hb.get('host')})"
    return IN_PROCESS, "no live sidecar follows the runs root"


# -- the experiment ---------------------------------------------------------------------------------
class Experiment:
    """One run: params, metrics and artifacts go to its run directory, and from there to W&B.

    Use it as a context manager to stop logging when the block ends (also on an exception).
    """

    def __init__(self) -> None:  # built by start_logging(); see _start
        self.name = ""
        self.project: str | None = None
        self.run_dir = ""
        self.runs_root = ""
        self.uploader = ""
        self.reason = ""
        self.resumed = False
        self.mode: str | None = None
        self.backend = "wandb"
        self.backends = ["wandb"]
        self._tracking_uri: str | None = None
        self._meta: dict[str, object] = {}
        self._params: dict[str, object] = {}
        self._hparams: dict[str, object] = {}
        self._run_file: RunFile | None = None
        self._events: EventLog | None = None
        self._writers: weakref.WeakSet = weakref.WeakSet()
        self._anchors: list[str] = []  # explicit log_dirs outside the run directory
        self._writer_dirs: list[str] = []  # every directory a FileWriter wrote to
        self._links: dict[str, str] = {}
        self._lock_fd: int | None = None
        self._uploader = None
        self._wandb_run = None
        self._owns_wandb_run = False
        self._active = False
        self._mutex = threading.RLock()

    # -- start ----------------------------------------------------------------------------------
    @classmethod
    def _start(cls, exp_name: str | None, project: str | None, config: dict, *, runs_root, sidecar,
               state_dir, backend: str | list[str] = "wandb", tracking_uri: str | None = None) -> Experiment:
        self = cls()
        self.backends = [backend] if isinstance(backend, str) else list(backend)
        self.backend, self._tracking_uri = ",".join(self.backends), tracking_uri
        settings = {k: config.pop(k) for k in RUN_KEYS if k in config}
        raw_mode = settings.get("mode")
        if raw_mode is not None and str(raw_mode).lower() not in MODES:
            raise ValueError(f"mode={raw_mode!r}: expected online, offline or disabled")
        self.mode = MODES[str(raw_mode).lower()] if raw_mode is not None else None
        self.project = project or _opt_str(settings.get("project"))
        display = _opt_str(settings.get("name")) or exp_name
        self.name = exp_name or display or time.strftime("run-%Y%m%d-%H%M%S")
        tags = settings.get("tags") or []
        tags = [tags] if isinstance(tags, str) else [str(t) for t in tags]
        run_id = _opt_str(settings.get("id"))
        if run_id is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id):
            raise ValueError(f"id={run_id!r}: a run id is 1-64 characters of [A-Za-z0-9_-]")
        self._meta = {
            "name": display or self.name, "project": self.project, "entity": _opt_str(settings.get("entity")),
            "tags": tags, "notes": _opt_str(settings.get("notes")), "group": _opt_str(settings.get("group")),
            "job_type": _opt_str(settings.get("job_type")), "run_id": run_id,
        }
        self._params = jsonable(config)  # type: ignore[assignment]

        self.runs_root = os.path.abspath(os.fspath(runs_root or default_runs_root()))
        os.makedirs(self.runs_root, exist_ok=True)
        base = safe_name(self.name, "run")
        resume = _resume_mode(settings.get("resume"))
        existing = _resumable(self.runs_root, base, resume)
        explicit = _parse_sidecar(sidecar)
        try:
            previous = None
            if existing is not None:
                self._lock_fd = _lock_run(existing)
                if self._lock_fd is None and resume != "auto":
                    raise RuntimeError(f"run directory {existing} is in use by another process")
                if self._lock_fd is None:  # "auto": that run is alive elsewhere, not crashed
                    existing = None
            if existing is not None:
                self.run_dir, self.resumed = existing, True
                previous = RunFile(existing).read()
            if previous:
                self._params = deep_merge(dict(previous.get("config") or {}), self._params)
            recorded = (previous or {}).get("uploader")
            self.uploader, self.reason = decide(mode=self.mode, explicit=explicit, recorded=recorded,
                                                runs_root=self.runs_root, backend=self.backends)
            if self.resumed and recorded and recorded != _file_uploader(self.uploader):
                log.warning("tracelet: %s was sent by the %s uploader before and now by %s; values it had"
                            " already sent may be sent again", existing, recorded, self.uploader)
            if existing is not None:
                self._run_file = RunFile(existing)
                self._write_run_json(finished=False)
            else:
                def describe(staging: str) -> None:
                    self._run_file = RunFile(staging)
                    self._write_run_json(finished=False)

                self.run_dir, self._lock_fd = _create_run_dir(self.runs_root, base, describe)
                self._run_file = RunFile(self.run_dir)
            self._start_uploader(state_dir)
            self._active = True
            self._events = EventLog(self.run_dir)
            _writers.install(_active)
            if settings.get("save_code"):
                self._save_code()
        except BaseException:
            self._release()
            raise
        log.info("tracelet: experiment %r in %s, sent by %s (%s)", self.name, self.run_dir, self.uploader,
                 self.reason)
        return self

    def _start_uploader(self, state_dir) -> None:  # noqa: ANN001
        if self.uploader in (SIDECAR, NOBODY):
            return
        from ._uploader import InProcessUploader, check_state_dir

        state = os.fspath(state_dir) if state_dir else default_state_dir()
        if self.uploader == ATTACHED:
            import wandb

            run = wandb.run
            if run is None:  # a sweep trial: wandb.init picks the sweep's run id and config
                m = self._meta
                run = wandb.init(project=self.project, entity=m["entity"], name=m["name"],
                                 tags=m["tags"] or None, notes=m["notes"], group=m["group"],
                                 job_type=m["job_type"], config=self._params or None, mode=self.mode)
                self._owns_wandb_run = True
            self._wandb_run = run
            self._uploader = InProcessUploader(self.run_dir, state_dir=state, project=self.project,
                                               entity=self._meta["entity"], mode=self.mode, attach_to=run)
            return
        if "wandb" in self.backends:  # (MLflow alone never imports wandb)
            from tracelet_daemon.backends.wandb import prepare_environment

            prepare_environment(check_state_dir(state, self.run_dir))  # before wandb reads its settings
            import wandb

            wandb.setup()  # wandb's exit hooks now come before ours: ours finishes the run first
        self._uploader = InProcessUploader(self.run_dir, state_dir=state, project=self.project,
                                           entity=self._meta["entity"], mode=self.mode, backend=self.backends,
                                           tracking_uri=self._tracking_uri)

    # -- the public API -------------------------------------------------------------------------
    @property
    def log_dir(self) -> str:
        """The run directory: where SummaryWriter() without a log_dir writes."""
        return self.run_dir

    @property
    def run_id(self) -> str:
        """The W&B run id (for an attached run, that run's id)."""
        if self._wandb_run is not None:
            return str(self._wandb_run.id)
        return str(self._meta.get("run_id") or run_ref(self.runs_root, os.path.basename(self.run_dir)).run_id)

    @property
    def config(self) -> dict[str, object]:
        """The hyperparameters (an attached run's: including what a sweep chose)."""
        if self._wandb_run is not None:
            try:
                return dict(self._wandb_run.config)
            except Exception:  # noqa: BLE001 - a finished run
                pass
        return deep_merge(self._hparams, self._params)

    @property
    def active(self) -> bool:
        return self._active

    def log_params(self, params: Mapping[str, object]) -> None:
        """Add or change hyperparameters (W&B config). Nested dicts stay nested (and are merged
        key by key with earlier ones); values are made JSON-safe."""
        if not isinstance(params, Mapping):
            params = jsonable(params)  # an argparse Namespace, a dataclass
            if not isinstance(params, Mapping):
                raise TypeError("log_params takes a mapping of names to values")
        with self._mutex:
            self._check_active()
            self._params = deep_merge(self._params, jsonable(params))  # type: ignore[arg-type]
            self._write_run_json(finished=False)

    def log_param(self, name: str, value: object) -> None:
        self.log_params({name: value})

    def log_metric(self, name: str, value: float, step: int | None = None) -> int:
        """Log one scalar at `step` (None: this name's next step, from 0); returns the step."""
        return self.log_metrics({name: value}, step)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> int:
        with self._mutex:
            self._check_active()
            return self._events.scalars({str(k): float(v) for k, v in metrics.items()}, step)

    def log_artifact(self, obj: object, artifact_path: str | None = None, *, name: str | None = None,
                     type: str | None = None, description: str = "",  # noqa: A002
                     metadata: Mapping[str, object] | None = None, aliases: Iterable[str] = ()) -> PublishedArtifact:
        """Store a file, a directory, a DataFrame, a matplotlib Figure, a dict/list or a
        wandb.Artifact as an artifact of the run. Name and type follow `artifact_path` (see
        docs/python-api.md) unless given."""
        with self._mutex:
            self._check_active()
            art = _artifacts.build(self.run_dir, obj, artifact_path, name=name, type=type,
                                   description=description, metadata=metadata, aliases=aliases)
            log.info("tracelet: artifact %s:%s (%d file(s)) published as %s", art.type, art.name,
                     len(art.files), art.id)
            return art

    def stop(self, timeout: float | None = None) -> None:
        """stop_logging() for this experiment."""
        with _lock:
            self._stop(timeout)

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "active" if self._active else "stopped"
        return f"<tracelet.Experiment {self.name!r} {state}, {self.uploader}, {self.run_dir}>"

    # -- SummaryWriters (called by _writers) ----------------------------------------------------
    def _note_log_dir(self, log_dir: str) -> None:
        """A SummaryWriter is about to write into `log_dir` (explicitly given)."""
        real = os.path.realpath(log_dir)
        with self._mutex:
            if _inside(real, os.path.realpath(self.run_dir)) or any(_inside(real, a) for a in self._anchors):
                return
            self._mark_fresh_run_dir(real)
            self._anchors.append(real)

    def _mark_fresh_run_dir(self, real: str) -> None:
        """A log_dir under the runs root that is not there yet would be a run of its own for a
        sidecar; its data goes into this run instead, so say that nobody uploads it on its own."""
        root = os.path.realpath(self.runs_root)
        if not _inside(real, root) or real == root:
            return
        top = os.path.join(root, os.path.relpath(real, root).split(os.sep)[0])
        if os.path.exists(top):
            return
        RunFile(top).write({"uploader": NOBODY, "linked_to": os.path.relpath(self.run_dir, root)})

    def _follow_file_writer(self, file_writer) -> None:  # noqa: ANN001
        real = os.path.realpath(_writers._logdir_of(file_writer))
        with self._mutex:
            if real not in self._writer_dirs:
                self._writer_dirs.append(real)
            if _inside(real, os.path.realpath(self.run_dir)):
                return
            source = _writers.event_file_of(file_writer)
            if source is None:
                log.warning("tracelet: cannot find the event file SummaryWriter(%r) writes; its values"
                            " are not followed", real)
                return
            anchor = max((a for a in self._anchors if _inside(real, a)), key=len, default=None)
            if anchor is None:
                self._anchors.append(real)
                anchor = real
            rel = os.path.relpath(real, anchor)
            target_dir = self.run_dir if rel == "." else os.path.join(self.run_dir, rel)
            os.makedirs(target_dir, exist_ok=True)
            target = os.path.join(target_dir, os.path.basename(source))
            n = 1
            while os.path.lexists(target):
                target = os.path.join(target_dir, f"{os.path.basename(source)}.{n}")
                n += 1
            try:
                os.link(source, target)
            except OSError:
                os.symlink(os.path.abspath(source), target)
                log.info("tracelet: %s is symlinked into the run (no hard link across file systems);"
                         " a sidecar must see the same path", source)
            self._links[source] = target

    # -- internals ------------------------------------------------------------------------------
    def _check_active(self) -> None:
        if not self._active:
            raise RuntimeError(f"experiment {self.name!r} has been stopped")

    def _write_run_json(self, *, finished: bool) -> None:
        config = deep_merge(self._hparams, self._params)
        data = {k: v for k, v in self._meta.items() if v not in (None, [], "")}
        data.update(config=config, finished=finished, uploader=_file_uploader(self.uploader),
                    writer={"tracelet": __version__, "host": socket.gethostname(), "pid": os.getpid()},
                    updated=time.time())
        self._run_file.write(data)

    def _sync_hparams(self) -> None:
        """Lightning's hparams.yaml next to any writer's files (not the run directory's own: the
        reader reads that one) becomes config."""
        merged: dict[str, object] = {}
        for directory in self._writer_dirs + self._anchors:
            if os.path.realpath(directory) == os.path.realpath(self.run_dir):
                continue
            try:
                merged.update(read_lightning_hparams(directory))
            except MetadataError as exc:
                log.warning("tracelet: %s", exc)
        if merged:
            self._hparams = jsonable(merged)  # type: ignore[assignment]

    def _save_code(self) -> None:
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        if not main or not os.path.isfile(main):
            log.info("tracelet: save_code: no main script to save (interactive session)")
            return
        stem = os.path.splitext(os.path.basename(main))[0]
        self.log_artifact(main, "code/", name=f"source-{safe_name(stem, 'main')}", type="source")

    def _stop(self, timeout: float | None) -> None:
        with self._mutex:
            if not self._active:
                return
            self._active = False
        try:
            for writer in list(self._writers):
                _writers.flush(writer)
            if self._events is not None:
                self._events.close()
            self._sync_hparams()
            if self._uploader is not None:
                # the final metadata, then the drain; "finished" only once the engine is done, so
                # it never finishes the run early on a file its rescan has not seen yet
                self._write_run_json(finished=False)
                self._uploader.stop(timeout)
            self._write_run_json(finished=True)
            if self._owns_wandb_run and self._wandb_run is not None:
                self._wandb_run.finish()
        finally:
            self._release()
            log.info("tracelet: experiment %r stopped", self.name)

    def _release(self) -> None:
        self._active = False
        if self._lock_fd is not None:
            try:
                os.close(self._lock_fd)
            except OSError:
                pass
            self._lock_fd = None
        if _current is self:
            _set_current(None)


def _file_uploader(uploader: str) -> str:
    """run.json's "uploader": an attached run is sent by the in-process engine too."""
    return IN_PROCESS if uploader == ATTACHED else uploader


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)
