"""Waiting on a live `tracelet watch` by what it shows, never by how long things usually take.

A busy 2-core machine can take seconds to start a daemon or finish a batch; a test that sleeps
a fixed time and then asserts passes or fails by luck. These read the daemon's own records
(status.json, the state store, read-only so the daemon's lock on the directory is no obstacle).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from helpers import assert_exactly_once
from tracelet_daemon.status import read_status

DEADLINE = 180.0  # seconds: generous for a loaded machine; a hang still fails


def wait_until(predicate, timeout: float = DEADLINE, what: str = "condition", proc=None, interval: float = 0.05):
    """Poll `predicate` until it returns something true; fail after `timeout`, or as soon as
    `proc` (a Popen) exits, with `what` in the message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def snapshot_of(state_dir: str, pid: int, newer_than: float = 0.0) -> dict | None:
    """The status snapshot written by process `pid` (its loop is running), if one newer than
    `newer_than` (a time.time()) exists."""
    status = read_status(state_dir)
    if status and status.get("pid") == pid and status.get("heartbeat", 0) > newer_than:
        return status
    return None


def _query(state_dir: str, sql: str) -> list[tuple]:
    path = os.path.join(state_dir, "state.sqlite3")
    if not os.path.exists(path):
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet, or busy
        return []
    finally:
        db.close()


def acked_offsets(state_dir: str) -> dict[str, int]:
    """Event file -> bytes whose rows W&B has confirmed."""
    return dict(_query(state_dir, "SELECT path, acked_offset FROM files"))


def read_position(state_dir: str, path) -> int:
    """How far tracelet has read `path` (journaled or acknowledged), from its state store."""
    best = acked_offsets(state_dir).get(str(path), 0)
    for (ranges,) in _query(state_dir, "SELECT ranges FROM batches"):
        for p, _start, end in json.loads(ranges):
            if p == str(path):
                best = max(best, end)
    return best


def assert_sound_then_complete(runs_root, state_dir: str, wandb_dir: str, run: str, steps: int) -> None:
    """After a stop, however abrupt: the state store passes SQLite's integrity check, and an
    upload on it sends the rest, so W&B holds every step of `run` exactly once."""
    db = sqlite3.connect(os.path.join(state_dir, "state.sqlite3"))
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    from tracelet_daemon.cli import main

    assert main(["upload", str(runs_root), "--state-dir", state_dir, "--no-progress"]) == 0
    rows = assert_exactly_once(runs_root, wandb_dir, run)
    assert sorted(r["global_step"] for r in rows) == list(range(steps))
