"""W&B unreachable in online mode: no crash, no loss, backoff, a clear status, nothing acknowledged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from tensorboardX import SummaryWriter

from tracelet_daemon.state import StateStore
from watch_helpers import DEADLINE, snapshot_of, wait_until

pytestmark = pytest.mark.slow


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_unreachable_backend_backs_off_and_acknowledges_nothing(runs_root, tmp_path):
    w = SummaryWriter(str(runs_root / "exp"))
    for step in range(50):
        w.add_scalar("loss", 1.0 / (step + 1), step)
    w.flush()
    state_dir = str(tmp_path / "state")
    env = dict(os.environ, WANDB_MODE="online", WANDB_API_KEY="k" * 40,
               WANDB_BASE_URL=f"http://127.0.0.1:{_closed_port()}", TRACELET_WANDB_INIT_TIMEOUT="1")
    proc = subprocess.Popen([sys.executable, "-m", "tracelet_daemon", "watch", str(runs_root), "--state-dir",
                             state_dir, "--rescan-interval", "0.5"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        def backend_errors(n: int, newer_than: float = 0.0):
            snap = snapshot_of(state_dir, proc.pid, newer_than)
            return snap if snap and snap["totals"]["errors"].get("backend", 0) >= n else None

        status = wait_until(lambda: backend_errors(3), what="three failed attempts", proc=proc)
        rss_early = _rss_mib(proc.pid)
        for step in range(50, 2050):  # more data keeps arriving while W&B is down
            w.add_scalar("loss", 1.0 / (step + 1), step)
        w.flush()
        (path,) = (runs_root / "exp").glob("*tfevents*")
        grown, flushed = path.stat().st_size, time.time()

        def saw_the_new_data_and_retried():  # its loop saw the grown file and tried W&B again since
            snap = backend_errors(status["totals"]["errors"]["backend"] + 1, newer_than=flushed)
            files = [f for run in (snap or {}).get("runs", []) for f in run["files"]]
            return snap if files and files[0]["size"] == grown else None

        status = wait_until(saw_the_new_data_and_retried, what="a retry with the new data on disk", proc=proc)
        assert proc.poll() is None, "the daemon died while W&B was unreachable"
        rss_late = _rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=DEADLINE)
        w.close()
    assert proc.returncode == 0, err
    assert status["totals"]["errors"]["backend"] >= 3
    (run,) = status["runs"]
    assert "could not open run" in run["last_error"] and not run["open"]
    assert "retrying in 2s" in err and "retrying in 4s" in err  # exponential backoff
    assert "Traceback" not in err
    assert rss_late < rss_early + 50, (rss_early, rss_late)  # nothing piles up in memory
    store = StateStore(state_dir)
    try:
        assert all(f.acked_offset == 0 for f in store.files_of(str(runs_root / "exp")).values())
        assert store.batches(str(runs_root / "exp")) == []  # nothing read ahead of the backend
    finally:
        store.close()


def test_online_without_a_key_is_a_usage_error(runs_root, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(WANDB_MODE="online", HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "tracelet_daemon", "upload", str(runs_root), "--state-dir",
                           str(tmp_path / "s")], capture_output=True, text=True, env=env, timeout=DEADLINE)
    assert proc.returncode == 2 and "needs an API key" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
