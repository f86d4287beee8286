"""`tracelet watch` live: follows growing files, survives restarts, completes partial records once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboardX import SummaryWriter

from helpers import assert_exactly_once, run_id_for
from tracelet_daemon.backends.wandb import txlog
from tracelet_daemon.records import frame, iter_records

pytestmark = pytest.mark.slow


class Watch:
    """A real `tracelet watch` process."""

    def __init__(self, root, state_dir, *extra):
        cmd = [sys.executable, "-m", "tracelet_daemon", "watch", str(root), "--state-dir", state_dir,
               "--rescan-interval", "0.5", "--log-level", "info", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=os.environ.copy())

    def stop(self, timeout=60.0) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


def read_position(state_dir, path) -> int:
    """How far tracelet has read `path` (journaled or acknowledged), from its state store."""
    db_path = os.path.join(state_dir, "state.sqlite3")
    if not os.path.exists(db_path):
        return 0
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        best = 0
        row = db.execute("SELECT acked_offset FROM files WHERE path=?", (str(path),)).fetchone()
        if row:
            best = row[0]
        for (ranges,) in db.execute("SELECT ranges FROM batches"):
            for p, _start, end in json.loads(ranges):
                if p == str(path):
                    best = max(best, end)
        return best
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        db.close()


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def live_steps(wandb_dir, run_id) -> set[int]:
    """global_steps W&B has written so far (the live .wandb lags in 32 KiB blocks)."""
    steps = set()
    for path in txlog.find_run_files(wandb_dir, run_id):
        for row in txlog.load_offline_run(path).history:
            steps.add(row.get("global_step"))
    return steps


def _write_steps(writer, rng, start, stop):
    for step in range(start, stop):
        writer.add_scalar("loss", float(rng.normal()), step)
        writer.add_scalar("acc", float(rng.random()), step)
        if step % 5 == 0:
            writer.add_histogram("weights", rng.normal(size=5000), step)
        if step % 10 == 9:
            writer.flush()
            time.sleep(0.02)
    writer.flush()


def test_watch_follows_a_live_writer_and_restarts_without_duplicates(runs_root, state_dir, wandb_env):
    wandb_dir = wandb_env["WANDB_DIR"]
    rng = np.random.default_rng(7)
    writer = SummaryWriter(str(runs_root / "live"), flush_secs=3600)
    watch = Watch(runs_root, state_dir)
    try:
        _write_steps(writer, rng, 0, 120)
        rid = run_id_for(runs_root, "live")
        # values arrive while it runs (the offline log is written in 32 KiB blocks: check a prefix)
        wait_until(lambda: len(live_steps(wandb_dir, rid)) >= 20, what="rows in W&B while watching")
    finally:
        rc, err = watch.stop()
    assert rc == 0, err
    assert "Traceback" not in err

    _write_steps(writer, rng, 120, 200)  # training goes on while the sidecar is down
    watch = Watch(runs_root, state_dir)
    try:
        _write_steps(writer, rng, 200, 260)
        writer.close()
        (path,) = (runs_root / "live").glob("*tfevents*")
        wait_until(lambda: read_position(state_dir, path) == path.stat().st_size, what="the end of the file")
    finally:
        rc, err = watch.stop()
    assert rc == 0, err
    rows = assert_exactly_once(runs_root, wandb_dir, "live")
    assert {r["global_step"] for r in rows} == set(range(260))


def test_a_half_written_record_is_completed_later_exactly_once(runs_root, state_dir, wandb_env, tmp_path):
    donor = tmp_path / "donor"
    w = SummaryWriter(str(donor))
    for step in range(30):
        w.add_scalar("x", float(step) / 3, step)
    w.close()
    (donor_file,) = donor.glob("*tfevents*")
    data = donor_file.read_bytes()
    last = len(frame(list(iter_records(str(donor_file)))[-1]))
    target = runs_root / "partial" / donor_file.name
    target.parent.mkdir()
    target.write_bytes(data[: len(data) - 5])  # the writer is in the middle of its last record

    watch = Watch(runs_root, state_dir)
    try:
        wait_until(lambda: read_position(state_dir, target) == len(data) - last, what="all whole records")
        time.sleep(1.0)  # several polls and a rescan see the same incomplete tail
        assert read_position(state_dir, target) == len(data) - last
        with open(target, "ab") as f:
            f.write(data[len(data) - 5:])
        wait_until(lambda: read_position(state_dir, target) == len(data), what="the completed record")
    finally:
        rc, err = watch.stop()
    assert rc == 0, err
    rows = assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "partial")
    assert [r["global_step"] for r in rows] == list(range(30))


def test_poll_mode_finds_files_without_inotify(runs_root, state_dir, wandb_env):
    watch = Watch(runs_root, state_dir, "--poll")
    try:
        time.sleep(1.0)
        w = SummaryWriter(str(runs_root / "late" / "sub"))  # a directory created after the start
        for step in range(10):
            w.add_scalar("y", float(step), step)
        w.close()
        (path,) = (runs_root / "late" / "sub").glob("*tfevents*")
        wait_until(lambda: read_position(state_dir, path) == path.stat().st_size, what="polling to find the file")
    finally:
        rc, err = watch.stop()
    assert rc == 0, err
    assert "polling" in err
    rows = assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "late")
    assert sorted(r["global_step"] for r in rows) == list(range(10))
    assert all("sub/y" in r for r in rows)


def test_a_second_signal_exits_at_once_and_state_stays_sound(runs_root, state_dir, wandb_env):
    w = SummaryWriter(str(runs_root / "sig"))
    for step in range(300):
        w.add_scalar("loss", float(step), step)
    w.close()
    (path,) = (runs_root / "sig").glob("*tfevents*")
    watch = Watch(runs_root, state_dir)
    try:
        wait_until(lambda: read_position(state_dir, path) == path.stat().st_size, what="the file read")
    finally:
        watch.proc.send_signal(signal.SIGTERM)
        watch.proc.send_signal(signal.SIGTERM)  # impatient operator: exit now
        watch.proc.communicate(timeout=60)
    assert watch.proc.returncode in (0, 128 + signal.SIGTERM)
    db = sqlite3.connect(os.path.join(state_dir, "state.sqlite3"))
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    from tracelet_daemon.cli import main

    assert main(["upload", str(runs_root), "--state-dir", state_dir, "--no-progress"]) == 0
    rows = assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "sig")
    assert sorted(r["global_step"] for r in rows) == list(range(300))
