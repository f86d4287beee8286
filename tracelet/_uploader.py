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
    """An Engine following one run directory from a daemon thread until `stop()`."""

    def __init__(self, run_dir: str, *, state_dir: str, project: str | None, entity: str | None,
                 mode: str | None, attach_to=None) -> None:  # noqa: ANN001 - a wandb Run
        self.run_dir = run_dir
        self.state_dir = check_state_dir(state_dir, run_dir)
        self.store = StateStore(self.state_dir)
        try:
            if attach_to is not None:
                from tracelet_daemon.backends.wandb.attached import AttachedBackend

                self.backend = AttachedBackend(attach_to)
            else:
                from tracelet_daemon import backends
                from tracelet_daemon.backends.wandb import prepare_environment

                prepare_environment(self.state_dir)
                self.backend = backends.create("wandb", project=project, entity=entity, mode=mode)
        except BaseException:
            self.store.close()
            raise
        # polling rescans of one directory are cheap, and inotify on a tree where artifact
        # directories are renamed in makes watchdog warn on stderr
        options = Options(uploader=UPLOADER, write_status=False, drain_on_stop=True, single_run=True,
                          rescan_interval=1.0, use_inotify=False)
        self.engine = Engine(run_dir, self.backend, self.store, options, project=project, entity=entity)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tracelet-uploader", daemon=True)
        self._thread.start()

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
        try:
            self.backend.close()
        finally:
            self.store.close()
        report = self.engine.report
        for name in report.failed_runs:
            log.error("tracelet: run %s could not be sent completely (see the log above)", name)
        for line in self.backend.summary():
            log.info("tracelet: %s", line)
        return report
