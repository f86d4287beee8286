"""One owner per state directory (and per W&B directory): an exclusive flock held for life.

Two processes replaying into one state store both read the same offsets and both send the same
rows (measured: 15,000 rows written twice). An advisory ``flock`` on a file in the directory
is taken before anything is read; the kernel releases it when the process dies, however it
dies, so a crash never leaves a stale lock. The holder writes its pid and command line into
the lock file so the second process can say who is in the way.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time

from .errors import UsageError

LOCK_NAME = "tracelet.lock"


def _describe(fd: int) -> str:
    """Who holds the lock; the holder writes its pid just after taking it, so a refused process
    that came right then waits a moment for it."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {int(data['pid'])} ({str(data.get('command', '?'))[:200]})"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "another process"
            time.sleep(0.05)


def _command_line(argv: list[str] | None = None) -> str:
    """The command line with the values of --storage-option / -o hidden: they may hold
    credentials (an Azure connection string, a key), and the lock file is shown to whoever runs
    a second tracelet on the directory."""
    out: list[str] = []
    hide = False
    for arg in sys.argv if argv is None else argv:
        if hide:
            arg, hide = arg.split("=", 1)[0] + "=***", False
        elif arg in ("-o", "--storage-option"):
            hide = True
        elif arg.startswith("--storage-option="):
            arg = "--storage-option=" + arg[len("--storage-option="):].split("=", 1)[0] + "=***"
        elif arg.startswith("-o") and not arg.startswith("--"):
            arg = "-o" + arg[2:].split("=", 1)[0] + "=***"
        out.append(arg)
    return " ".join(out)


class DirectoryLock:
    """An exclusive, non-blocking lock on ``<directory>/tracelet.lock``; `what` names the directory
    in the error ("state directory", "W&B directory")."""

    def __init__(self, directory: str, what: str = "state directory") -> None:
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot open the lock of {what} {directory}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(fd)
            os.close(fd)
            raise UsageError(f"{what} {directory} is in use by {holder}; one tracelet process per"
                             f" {what} (use another --state-dir, or stop that process)") from None
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"cannot lock {what} {directory}: {exc.strerror}") from exc
        self._fd = fd
        me = json.dumps({"pid": os.getpid(), "command": _command_line()[:1000]}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = -1

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
