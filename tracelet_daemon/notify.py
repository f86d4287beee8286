"""systemd's sd_notify protocol: READY=1, WATCHDOG=1, STATUS=..., STOPPING=1.

The protocol is one datagram per message on the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(a path, or an abstract-namespace name written with a leading ``@``). It is small enough to
implement here rather than depend on libsystemd or an unmaintained wrapper. Outside systemd
(no ``$NOTIFY_SOCKET``) every call is a cheap no-op, so the daemon code calls it
unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("tracelet.notify")

_SEND_TIMEOUT = 2.0  # seconds; systemd reads at once, so this only bounds a broken receiver


def _socket_address(raw: str) -> str | bytes | None:
    """The sendto() address for a ``$NOTIFY_SOCKET`` value; None if it is not one we can use."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()  # abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # vsock:... and other schemes are not used for services; ignore them


class Notifier:
    """Talks to the service manager if there is one; does nothing otherwise.

    `watchdog_interval` is systemd's ``WatchdogSec=`` (from ``$WATCHDOG_USEC``) when the
    watchdog is meant for this process, else None. `watchdog()` pings at most four times
    per interval (systemd's advice is at least twice), so callers may call it as often as they
    like.
    """

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        pid = os.getpid() if pid is None else pid
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not watchdog_pid or watchdog_pid == str(pid)):
            self.watchdog_interval = int(usec) / 1e6
        self._last_ping = 0.0
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; False if there is no manager or it failed."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(_SEND_TIMEOUT)  # a manager that stops reading must not wedge the loop
                sock.sendto(message, self.address)
            return True
        except OSError as exc:
            if not self._warned:  # a vanished manager must not take the daemon down or flood logs
                self._warned = True
                log.warning("cannot notify the service manager at $NOTIFY_SOCKET: %s", exc)
            return False

    def ready(self, status: str = "") -> bool:
        fields = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def stopping(self, status: str = "") -> bool:
        fields = ["STOPPING=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def _ping_due(self, now: float | None) -> bool:
        if self.watchdog_interval is None:
            return False
        now = time.monotonic() if now is None else now
        if self._last_ping and now - self._last_ping < self.watchdog_interval / 4:
            return False
        self._last_ping = now
        return True

    def watchdog(self, now: float | None = None) -> bool:
        """Ping the watchdog if one is armed and a quarter of its interval has passed since the last."""
        return self._ping_due(now) and self.send("WATCHDOG=1")

    def heartbeat(self, status: str, now: float | None = None) -> bool:
        """The loop's once-a-second message: STATUS=, plus WATCHDOG=1 when due, in one datagram."""
        fields = ["WATCHDOG=1"] if self._ping_due(now) else []
        return self.send(*fields, f"STATUS={_one_line(status)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())
