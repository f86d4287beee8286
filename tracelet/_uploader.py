"""The in-process uploader: the daemon's own engine, run in a thread of the training process.

It is exactly what ``tracelet watch`` runs, with the run directory as its root
(``Options.single_run``: deeper directories are key prefixes, the run id is the one a sidecar
watching the parent would compute) and three shim settings: it calls itself the ``in-process``
uploader (run.json says so, and sidecars skip the run), it does not advertise itself as a
sidecar, and when stopped it first reads every file to its end (``drain_on_stop``).
"""

from __future__ import annotations

import logging
import os
import threading

from tracelet_daemon.engine import Engine, Options, Report
from tracelet_daemon.fanout import Fanout, close_all
from tracelet_daemon.runs import run_ref
from tracelet_daemon.state import StateStore

log = logging.getLogger("tracelet")

UPLOADER = "in-process"


def check_state_dir(state_dir: str, run_dir: str) -> str:
    path = os.path.abspath(state_dir)
    real_run, real_state = os.path.realpath(run_dir), os.path.realpath(path)
    if real_state == real_run or real_state.startswith(real_run + os.sep):
        raise ValueError(f"the state directory {path} must not be inside the run directory {run_dir}")
    return path


class InProcessUploader:
    """An Engine per backend following one run directory from a daemon thread until `stop()`."""

    def __init__(self, run_dir: str, *, state_dir: str, project: str | None, entity: str | None,
                 mode: str | None, attach_to=None,  # noqa: ANN001 - a wandb Run
                 backend: str | list[str] = "wandb", tracking_uri: str | None = None) -> None:
        self.run_dir = run_dir
        self.state_dir = check_state_dir(state_dir, run_dir)
        names = ["wandb"] if attach_to is not None else ([backend] if isinstance(backend, str) else list(backend))
        # one state directory (and lock) per run: training processes running side by side each
        # upload their own run, and a state directory has one owner at a time; in it, one store
        # per backend (each backend's positions are its own)
        run_state = os.path.join(self.state_dir, "in-process", run_ref(run_dir, "").run_id)
        self.stores: list[StateStore] = []
        self.backends: list = []
        try:
            for i, name in enumerate(names):
                self.stores.append(StateStore(run_state, lock=i == 0, backend=name))
                self.backends.append(self._backend(name, attach_to, project, entity, mode, tracking_uri))
        except BaseException:
            self._close()
            raise
        # polling rescans of one directory are cheap, and inotify on a tree where artifact
        # directories are renamed in makes watchdog warn on stderr
        # follow_symlinks: the shim links explicit writers' files into the run (a symlink across
        # file systems); the run directory is this process's own, not untrusted input
        engines = [Engine(run_dir, be, store, Options(
                       uploader=UPLOADER, write_status=False, drain_on_stop=True, single_run=True,
                       follow_symlinks=True, rescan_interval=1.0, use_inotify=False),
                       project=project, entity=entity)
                   for be, store in zip(self.backends, self.stores)]
        self.engine = engines[0] if len(engines) == 1 else Fanout(engines)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tracelet-uploader", daemon=True)
        self._thread.start()

    def _backend(self, name: str, attach_to, project, entity, mode, tracking_uri):  # noqa: ANN001, ANN202
        if attach_to is not None:
            from tracelet_daemon.backends.wandb.attached import AttachedBackend

            return AttachedBackend(attach_to)
        from tracelet_daemon import backends

        # the shared state directory, not the per-run one: W&B's folders and the embedded MLflow
        # store are shared by every in-process run (and a sidecar given the same --state-dir)
        return backends.open_backend(name, state_dir=self.state_dir, project=project, entity=entity,
                                     mode=mode, tracking_uri=tracking_uri, daemon=False)

    def _close(self) -> None:
        close_all(self.backends, self.stores)

    @property
    def backend(self):  # noqa: ANN201 - the first (the W&B one, when attached)
        return self.backends[0]

    @property
    def mode(self) -> str:
        return str(getattr(self.backend, "mode", ""))

    def _run(self) -> None:
        try:
            self.engine.watch(self._stop)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self._error = exc
            log.error("tracelet: the in-process uploader stopped: %s", exc, exc_info=True)

    def stop(self, timeout: float | None = None) -> Report:
        """Drain the run to the end of its files, finish it (unless attached) and release all."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("tracelet: the uploader did not finish within %ss; what it did not confirm is"
                      " sent by the next start_logging() of this run (same state directory)", timeout)
            return self.engine.report
        self._close()
        report = self.engine.report
        for name in report.failed_runs:
            log.error("tracelet: run %s could not be sent completely (see the log above)", name)
        for be in self.backends:
            for line in be.summary():
                log.info("tracelet: %s", line)
        return report
