"""Parallel replay: runs split over worker processes, still exactly once."""

from __future__ import annotations

import logging

import pytest
from tensorboardX import SummaryWriter

from helpers import assert_exactly_once, write_run
from tracelet_daemon import backends
from tracelet_daemon.engine import Engine, Options
from tracelet_daemon.parallel import merge, plan, upload_parallel
from tracelet_daemon.progress import Tally, Tick
from tracelet_daemon.state import StateStore


def test_plan_balances_backlog_and_keeps_every_run_once():
    sizes = {"a": 100, "b": 90, "c": 10, "d": 10, "e": 5}
    shares = plan(sizes, 2)
    assert sorted(k for s in shares for k in s) == sorted(sizes)
    loads = sorted(sum(sizes[k] for k in s) for s in shares)
    assert loads == [105, 110]
    assert plan(sizes, 1) == [frozenset(sizes)]
    assert plan({}, 3) == []


def test_tally_sums_running_totals_and_counts_finished_runs():
    tally = Tally()
    tally.add(Tick(1, 100, rows=10, runs=1))  # worker 1 is on its first run
    tally.add(Tick(2, 50, rows=5, runs=2))  # worker 2 finished one run, is on its second
    assert (tally.bytes, tally.rows, tally.runs_done) == (150, 15, 1)
    tally.add(Tick(1, 0, rows=12, runs=1, finished=True))
    tally.add(Tick(2, 30, rows=9, runs=2))
    assert (tally.bytes, tally.rows, tally.runs_done) == (180, 21, 2)


@pytest.mark.slow
def test_parallel_upload_is_exactly_once(runs_root, state_dir, wandb_env, caplog):
    names = [f"run{i}" for i in range(5)]
    for i, name in enumerate(names):
        write_run(SummaryWriter, runs_root / name, steps=80, image_every=40, seed=i)
    store = StateStore(state_dir)
    engine = Engine(str(runs_root), backends.create("wandb"), store, Options())
    ticks: list[Tick] = []
    with caplog.at_level(logging.INFO):
        report = upload_parallel(engine, 2, "wandb", {}, on_tick=ticks.append)
    store.close()
    assert report.runs == 5 and report.ok and report.rows == 5 * 80
    # every worker's progress reached the parent: bytes, rows and runs, each share closed once
    assert {t.source for t in ticks} == {1, 2}
    closing = [t for t in ticks if t.finished]
    assert sorted(t.source for t in closing) == [1, 2]
    assert sum(t.rows for t in closing) == report.rows and sum(t.runs for t in closing) == 5
    tally = Tally()
    for t in ticks:
        tally.add(t)
    assert (tally.bytes, tally.rows, tally.runs_done) == (report.bytes_read, report.rows, 5)
    # and so did their log lines, through this process's logging
    opened = {r.getMessage().split(":")[0] for r in caplog.records if " opened at " in r.getMessage()}
    assert opened == set(names)
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
