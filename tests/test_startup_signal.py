"""SIGTERM/SIGINT at any point of `tracelet watch`'s start-up is a clean stop: exit 0, state sound,
nothing lost or repeated afterwards.

Each point is reached by waiting for something observable, never by guessing how long start-up
takes: the kernel's record that the process catches SIGTERM (`SigCgt` in /proc/PID/status, the
earliest moment any Python program can handle it), the daemon's own log lines, the state store
appearing. Where a few milliseconds are added after such a point, they only spread the signal
over the imports and the wiring; every landing spot must give the same result.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from tensorboardX import SummaryWriter

from watch_helpers import DEADLINE, assert_sound_then_complete, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isfile(f"/proc/{os.getpid()}/status"), reason="needs Linux /proc"),
]


def catches(pid: int, signum: int) -> bool:
    """The process `pid`, already running our command (not the parent's fork), catches `signum`."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"tracelet_daemon" not in f.read():
                return False  # still the fork of the test process, before exec
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (signum - 1) & 1)


class Daemon:
    """One `tracelet watch` process; its log goes to a file so it can be read while it runs."""

    def __init__(self, root, state_dir, log_path, *extra: str) -> None:
        self.log_path = log_path
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "tracelet_daemon", "watch", str(root), "--state-dir", state_dir,
               "--rescan-interval", "0.5", "--log-level", "info", *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=os.environ.copy())

    def logged(self, text: str) -> bool:
        with open(self.log_path) as f:
            return text in f.read()

    def handler_installed(self) -> bool:
        return catches(self.proc.pid, signal.SIGTERM)

    def stop(self, signum: int) -> tuple[int, str]:
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()
        with open(self.log_path) as f:
            return self.proc.returncode, f.read()


# (name, signal, extra watch options, what to wait for, milliseconds after it)
HANDLER, WIRED, WATCHING, STATE, OPENED = "handler", "wired", "watching", "state", "opened"
POINTS = [
    ("term-when-the-state-store-appears", signal.SIGTERM, (), STATE, 0),  # first: the store is new
    ("term-at-first-chance", signal.SIGTERM, (), HANDLER, 0),
    ("term-2ms-later", signal.SIGTERM, (), HANDLER, 2),
    ("term-20ms-later", signal.SIGTERM, (), HANDLER, 20),
    ("term-100ms-later", signal.SIGTERM, (), HANDLER, 100),
    ("term-400ms-later", signal.SIGTERM, (), HANDLER, 400),
    ("term-when-wired-up", signal.SIGTERM, (), WIRED, 0),
    ("term-after-watching", signal.SIGTERM, (), WATCHING, 0),
    ("term-once-a-run-is-open", signal.SIGTERM, (), OPENED, 0),  # a drain: rows land, the rest waits
    ("int-at-first-chance", signal.SIGINT, (), HANDLER, 0),
    ("int-after-watching", signal.SIGINT, (), WATCHING, 0),
    # start-up outlasts the drain bound: still exit 0, nothing was opened
    ("term-start-up-longer-than-the-drain-bound", signal.SIGTERM, ("--drain-timeout", "0.01"), HANDLER, 0),
]


def test_a_stop_at_any_point_of_start_up_exits_0_and_loses_nothing(runs_root, tmp_path, wandb_env):
    state_dir = str(tmp_path / "state")
    writer = SummaryWriter(str(runs_root / "exp"), flush_secs=3600)
    step = 0
    outcomes = []
    for i, (name, signum, extra, point, ms) in enumerate(POINTS):
        for _ in range(25):  # training goes on between restarts
            writer.add_scalar("loss", 1.0 / (step + 1), step)
            step += 1
        writer.flush()
        daemon = Daemon(runs_root, state_dir, tmp_path / f"watch-{i}.log", *extra)
        try:
            wait_until({
                HANDLER: daemon.handler_installed,
                STATE: lambda: os.path.exists(os.path.join(state_dir, "state.sqlite3")),
                WIRED: lambda: daemon.logged("tracelet pid "),
                WATCHING: lambda: daemon.logged("watching "),
                # an earlier daemon may have got as far as sending rows: then the run is resumed
                OPENED: lambda: daemon.logged(" opened at ") or daemon.logged(" resumed at "),
            }[point], what=f"{name}: {point}", proc=daemon.proc, interval=0.001)
        except BaseException:
            daemon.proc.kill()  # never leave a daemon behind a failed wait
            daemon.proc.wait()
            daemon.log.close()
            raise
        if ms:
            time.sleep(ms / 1000)  # only moves the landing spot; every spot must give the same result
        rc, log = daemon.stop(signum)
        outcomes.append((name, rc))
        assert rc == 0, f"{name}: exit {rc}\n{log}"
        assert "Traceback" not in log, f"{name}\n{log}"
    writer.close()
    print(outcomes)
    assert_sound_then_complete(runs_root, state_dir, wandb_env["WANDB_DIR"], "exp", step)


def test_the_cli_catches_the_stop_before_any_command_runs():
    """Started as `tracelet watch`, the process catches SIGTERM as soon as the CLI is imported,
    before typer, the commands and the wiring; imported as a library, no handler changes."""
    probe = (
        "import signal, sys\n"
        "sys.argv = [sys.argv[0], 'watch', '/nonexistent']\n"
        "import tracelet_daemon.cli as cli\n"
        "print(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)\n"
    )
    as_command = subprocess.run([sys.executable, "-c", probe.replace("sys.argv[0]", "'/usr/bin/tracelet'")],
                                capture_output=True, text=True, timeout=DEADLINE)
    assert as_command.stdout.split() == ["True"], as_command.stderr
    as_library = subprocess.run([sys.executable, "-c", probe.replace("sys.argv[0]", "'/srv/train.py'")],
                                capture_output=True, text=True, timeout=DEADLINE)
    assert as_library.stdout.split() == ["False"], as_library.stderr
