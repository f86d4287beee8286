"""SIGINT/SIGTERM for `tracelet watch`: a request to stop, from the first moment one can be caught.

A supervisor may stop the daemon at any time, including while it is still importing and wiring
(a second or more on a busy machine). Left to the default action that signal kills the process
(exit -15) with nothing to show for it; here it means "stop as soon as you can" and exit 0.
A stop that arrives before the engine's loop begins can leave nothing unconfirmed behind (no run
has been opened yet), so even the drain bound then ends with exit 0.

Handlers are installed by `install_early`, which the CLI calls as it is imported, before typer,
the commands and their imports, and only when the process is `tracelet watch` (as a library, in
tests or embedded, nothing changes); else by the watch command itself, first thing. What runs
before the CLI's first line (the interpreter, and the `tracelet_daemon` package's own imports)
still gets the default action; nothing has been opened by then.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger("tracelet")

DRAIN_EXIT_CODE = 1  # the drain bound ran out; state is consistent, the rest is replayed next start
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Notifier(Protocol):
    def stopping(self, status: str = "") -> bool: ...


class StopRequest:
    """The first SIGINT/SIGTERM sets `event`; a second one, or `drain_timeout` seconds after the
    first, ends the process at once (state is transactional: nothing confirmed is lost, nothing
    unconfirmed is skipped).

    Until `arm()` a signal is only recorded: logging and the notifier are not set up yet. `arm()`
    then announces it and starts the drain bound, as if it had arrived at that moment.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.during_startup = False  # the stop came before the engine's loop began
        self._running = False
        self._armed = False
        self._notifier: _Notifier | None = None
        self._drain_timeout = 0.0

    def install(self) -> StopRequest:
        for signum in SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def arm(self, notifier: _Notifier | None, drain_timeout: float) -> None:
        """Logging and the notifier exist now: a signal from here on (or one already received)
        is announced and bounded by `drain_timeout` (0: no bound)."""
        self._notifier, self._drain_timeout = notifier, drain_timeout
        self._armed = True
        if self.signum is not None:
            self._announce(self.signum)

    def running(self) -> bool:
        """Called right before the engine's loop; False if a stop already came (skip the loop)."""
        self._running = True
        return not self.event.is_set()

    def _handle(self, signum: int, _frame) -> None:  # noqa: ANN001
        if self.event.is_set():
            _force_exit(f"second {signal.Signals(signum).name}", 128 + signum)
        self.signum = signum
        self.during_startup = not self._running
        self.event.set()
        if self._armed:
            self._announce(signum)

    def _announce(self, signum: int) -> None:
        name = signal.Signals(signum).name
        bound = f" within {self._drain_timeout:g}s" if self._drain_timeout > 0 else ""
        if self.during_startup:
            log.info("%s received during start-up: stopping once wired up%s (no run will be opened;"
                     " send it again to exit at once)", name, bound)
        else:
            log.info("%s received: draining%s (send it again to exit at once)", name, bound)
        if self._notifier is not None:
            self._notifier.stopping(f"{name} received: {'stopping' if self.during_startup else 'draining'}")
        if self._drain_timeout > 0:
            timer = threading.Timer(self._drain_timeout, self._bound_reached)
            timer.daemon = True
            timer.start()

    def _bound_reached(self) -> None:
        if self.during_startup:  # no run was opened, so nothing can be left unconfirmed
            _force_exit(f"start-up did not finish within {self._drain_timeout:g}s of the stop request;"
                        " exiting now (no run was opened)", 0, logging.WARNING)
        _force_exit(f"drain did not finish within {self._drain_timeout:g}s", DRAIN_EXIT_CODE)


def _force_exit(reason: str, code: int, level: int = logging.ERROR) -> None:
    if code:
        reason += "; exiting now (rows not yet confirmed are replayed on the next start)"
    log.log(level, "%s", reason)
    logging.shutdown()
    os._exit(code)


def install_early(argv: Sequence[str]) -> StopRequest | None:
    """Catch SIGINT/SIGTERM in a `tracelet watch` process from the CLI's first line on; None (and
    no handler touched) when the CLI is imported for any other reason."""
    if list(argv[1:2]) != ["watch"] or not _is_tracelet_entry_point(argv[0] if argv else ""):
        return None
    return StopRequest().install()


def _is_tracelet_entry_point(argv0: str) -> bool:
    """The `tracelet` console script, or `python -m tracelet_daemon`."""
    base = os.path.basename(argv0)
    if base == "__main__.py":
        return os.path.basename(os.path.dirname(os.path.abspath(argv0))) == "tracelet_daemon"
    return base == "tracelet"
