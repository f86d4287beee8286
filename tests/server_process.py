"""A protocol server the tests run themselves: started on 127.0.0.1 in its own process group,
waited for until it answers, stopped by pid (SIGTERM, then SIGKILL of the whole group).

Subclasses say how to start it (`command`), how to tell it is up (`healthy`) and which
variables of the machine must not reach it or its clients (`SCRUB`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess(ABC):
    NAME = "server"
    LOG = "server.log"
    SCRUB: tuple[str, ...] = ()  # the machine's variables that would change what a client talks to
    PORT_IN_USE = "Address already in use"  # in the log when it lost the race for its port
    READY_TIMEOUT = 60.0

    def __init__(self, directory: str | None = None, port: int | None = None) -> None:
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix=f"{self.NAME}-")
        os.makedirs(self.directory, exist_ok=True)
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.directory, self.LOG)

    # -- what a subclass says ----------------------------------------------------------------
    @abstractmethod
    def command(self) -> list[str]: ...

    @abstractmethod
    def healthy(self, timeout: float = 2) -> bool: ...

    def process_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in self.SCRUB}

    def subprocess_env(self, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        """`base` (default os.environ) without SCRUB, plus env() and `extra`: for a client process."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in self.SCRUB}
        env.update(self.env())
        env.update(extra)
        return env

    def env(self) -> dict[str, str]:
        return {}

    # -- process control -----------------------------------------------------------------------
    def start(self):  # noqa: ANN201 - returns self (the subclass)
        for attempt in range(3):
            cmd = self.command()
            with open(self.log_path, "ab") as log:
                log.write(f"--- start {' '.join(cmd)}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.process_env(),
                                             cwd=self.directory, stdin=subprocess.DEVNULL,
                                             start_new_session=True)  # its own group: signalled as a whole
            deadline = time.monotonic() + self.READY_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self.healthy():
                    return self
                time.sleep(0.1)
            else:
                self.stop()
                raise RuntimeError(f"{self.NAME} not ready after {self.READY_TIMEOUT:.0f}s: {self.tail()}")
            self.proc = None
            # lost the race for a port picked by free_port(): take another one
            if self.PORT_IN_USE in self.tail() and not self._fixed_port and attempt < 2:
                self.port = free_port()
                continue
            raise RuntimeError(f"{self.NAME} exited: {self.tail()}")
        raise AssertionError("unreachable")

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process group by pid, SIGKILL it if it lingers, reap it."""
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._signal(signal.SIGKILL)  # anything else left in the group
        self.proc = None

    def close(self) -> None:
        """stop(), and remove the directory if this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""
