"""Parallel replay: runs split over worker processes, still exactly once."""

from __future__ import annotations

import pytest
from tensorboardX import SummaryWriter

from helpers import assert_exactly_once, write_run
from tracelet_daemon import backends
from tracelet_daemon.engine import Engine, Options
from tracelet_daemon.parallel import merge, plan, upload_parallel
from tracelet_daemon.state import StateStore


def test_plan_balances_backlog_and_keeps_every_run_once():
    sizes = {"a": 100, "b": 90, "c": 10, "d": 10, "e": 5}
    shares = plan(sizes, 2)
    assert sorted(k for s in shares for k in s) == sorted(sizes)
    loads = sorted(sum(sizes[k] for k in s) for s in shares)
    assert loads == [105, 110]
    assert plan(sizes, 1) == [frozenset(sizes)]
    assert plan({}, 3) == []


@pytest.mark.slow
def test_parallel_upload_is_exactly_once(runs_root, state_dir, wandb_env):
    names = [f"run{i}" for i in range(5)]
    for i, name in enumerate(names):
        write_run(SummaryWriter, runs_root / name, steps=80, image_every=40, seed=i)
    store = StateStore(state_dir)
    engine = Engine(str(runs_root), backends.create("wandb"), store, Options())
    seen = []
    report = upload_parallel(engine, 2, "wandb", {}, on_progress=seen.append)
    store.close()
    assert report.runs == 5 and report.ok and report.rows == 5 * 80
    assert sum(seen) == report.bytes_read > 0
    for name in names:
        assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], name)
    assert merge([report]).rows == report.rows


@pytest.mark.slow
def test_workers_die_with_a_killed_parent(runs_root, tmp_path, wandb_env):
    """SIGKILL of `tracelet upload --jobs 2` must not leave workers racing the next upload."""
    import os
    import signal
    import subprocess
    import sys
    import time

    for i in range(4):
        write_run(SummaryWriter, runs_root / f"r{i}", steps=2000, image_every=0, hist_every=200, seed=i)
    state = str(tmp_path / "state")
    cmd = [sys.executable, "-m", "tracelet_daemon", "upload", str(runs_root), "--state-dir", state,
           "--no-progress", "--jobs", "2", "--max-batch-bytes", "4096", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 60
    children: list[int] = []
    while time.monotonic() < deadline and len(children) < 2:
        children = _children(proc.pid)
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)], "worker processes outlived their parent"
    final = subprocess.run([c for c in cmd if c != "4096"][:-5] + ["--log-level", "warning"],
                           capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert final.returncode == 0, final.stderr
    for i in range(4):
        assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], f"r{i}")


def _children(pid: int) -> list[int]:
    import glob

    out = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(path) as f:
            out.extend(int(p) for p in f.read().split())
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
