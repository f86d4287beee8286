"""`tracelet watch` live: follows growing files, survives restarts, completes partial records once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboardX import SummaryWriter

from helpers import assert_exactly_once, run_id_for
from tracelet_daemon.backends.wandb import txlog
from tracelet_daemon.records import frame, iter_records
from watch_helpers import DEADLINE, assert_sound_then_complete, read_position, snapshot_of, wait_until

pytestmark = pytest.mark.slow


class Watch:
    """A real `tracelet watch` process."""

    def __init__(self, root, state_dir, *extra):
        cmd = [sys.executable, "-m", "tracelet_daemon", "watch", str(root), "--state-dir", state_dir,
               "--rescan-interval", "0.5", "--log-level", "info", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=os.environ.copy())

    def stop(self, timeout=DEADLINE) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


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
        reached = time.time()

        def tail_seen_pending():  # a snapshot from a loop that ran >= 1 s on (two rescans) since
            snap = snapshot_of(state_dir, watch.proc.pid, newer_than=reached + 1.0)
            files = [f for run in (snap or {}).get("runs", []) for f in run["files"] if f["path"] == str(target)]
            return files and files[0]["pending_tail"] and files[0]["read"] == len(data) - last

        wait_until(tail_seen_pending, what="polls and rescans to see the incomplete tail", proc=watch.proc)
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
        wait_until(lambda: snapshot_of(state_dir, watch.proc.pid), what="the first poll", proc=watch.proc)
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
        watch.proc.communicate(timeout=DEADLINE)
    assert watch.proc.returncode in (0, 128 + signal.SIGTERM)
    assert_sound_then_complete(runs_root, state_dir, wandb_env["WANDB_DIR"], "sig", 300)
