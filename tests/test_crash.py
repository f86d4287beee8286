"""Exactly once across crashes: SIGKILL `tracelet upload` at random points, restart, compare."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from tensorboardX import SummaryWriter

from helpers import assert_exactly_once, run_id_for, write_run
from tracelet_daemon.backends.wandb import txlog
from watch_helpers import DEADLINE, acked_offsets, snapshot_of, wait_until

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("TRACELET_CHAOS_KILLS", "6"))


def _upload_cmd(root, state_dir):
    return [sys.executable, "-m", "tracelet_daemon", "upload", str(root), "--state-dir", state_dir,
            "--no-progress", "--max-batch-bytes", "16384", "--log-level", "warning"]


def _wait_for_new_run_folder(wandb_dir, proc, timeout=DEADLINE):
    """Block until the upload opened one more W&B run (so a kill lands mid-replay)."""
    folder = os.path.join(wandb_dir, "wandb")
    before = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        now = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        if any(n.startswith("offline-run-") for n in now - before):
            return
        time.sleep(0.02)


def test_sigkill_at_random_points_neither_loses_nor_repeats(runs_root, state_dir, wandb_env):
    for i, name in enumerate(("alpha", "beta", "gamma")):
        write_run(SummaryWriter, runs_root / name, steps=1500, tags=("loss", "acc", "lr"),
                  hist_every=100, image_every=500, eval_every=50, seed=i)
    rng = random.Random(20261127)
    killed_mid_run = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(_upload_cmd(runs_root, state_dir), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=os.environ.copy())
        _wait_for_new_run_folder(wandb_env["WANDB_DIR"], proc)
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere inside the replay of a run
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        proc.wait(timeout=60)
    final = subprocess.run(_upload_cmd(runs_root, state_dir), capture_output=True, text=True,
                           env=os.environ.copy(), timeout=3 * DEADLINE)
    assert final.returncode == 0, final.stderr
    assert killed_mid_run >= 1, "no kill landed while the upload ran; the test proved nothing"
    folders = 0
    for name in ("alpha", "beta", "gamma"):
        assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], name)
        folders += len(txlog.find_run_files(wandb_env["WANDB_DIR"], run_id_for(runs_root, name)))
    print(f"{killed_mid_run} kills landed mid-upload; {folders} offline folders for 3 runs")


def test_lost_state_store_resumes_from_the_checkpoint_in_wandb(runs_root, tmp_path, wandb_env):
    """A sidecar whose state volume was lost must not send everything again."""
    import shutil

    from helpers import history_of, scalar_points, tb_scalar_points
    from tracelet_daemon.cli import main

    write_run(SummaryWriter, runs_root / "exp", steps=300, image_every=0, seed=3)
    state = str(tmp_path / "state-a")
    args = ["upload", str(runs_root), "--no-progress", "--log-level", "warning", "--max-batch-bytes", "4096"]
    assert main([*args, "--state-dir", state]) == 0
    shutil.rmtree(state)
    write_run(SummaryWriter, runs_root / "exp", steps=50, start=300, image_every=0, hist_every=0,
              eval_every=0, seed=4, suffix=".more")
    assert main([*args, "--state-dir", str(tmp_path / "state-b")]) == 0
    got = scalar_points(history_of(wandb_env["WANDB_DIR"], run_id_for(runs_root, "exp")))
    assert got == tb_scalar_points(runs_root / "exp")  # the first upload finished: nothing repeats


def test_sigkill_during_watch_while_writers_append(runs_root, state_dir, wandb_env):
    """Writers keep appending while the watch daemon is killed and restarted at random points."""
    import threading

    import numpy as np

    from helpers import assert_exactly_once

    rng = random.Random(7)
    stop_writing = threading.Event()

    def writer(name: str, seed: int) -> None:
        gen = np.random.default_rng(seed)
        w = SummaryWriter(str(runs_root / name), flush_secs=3600)
        step = 0
        while not stop_writing.is_set() or step < 400:
            w.add_scalar("loss", float(gen.normal()), step)
            w.add_scalar("acc", float(gen.random()), step)
            if step % 50 == 0:
                w.add_histogram("w", gen.normal(size=2000), step)
            step += 1
            if step % 20 == 0:
                w.flush()
                time.sleep(0.03)
            if step >= 1500:
                break
        w.close()

    threads = [threading.Thread(target=writer, args=(n, i)) for i, n in enumerate(("w1", "w2"))]
    for t in threads:
        t.start()
    cmd = [sys.executable, "-m", "tracelet_daemon", "watch", str(runs_root), "--state-dir", state_dir,
           "--rescan-interval", "0.3", "--max-batch-bytes", "8192", "--log-level", "warning"]
    kills = 0
    for _ in range(max(3, KILLS // 2)):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
        # once its loop runs (however long start-up takes on a busy machine), somewhere inside it
        wait_until(lambda p=proc: snapshot_of(state_dir, p.pid), what="the watch loop", proc=proc)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
        kills += 1
    stop_writing.set()
    for t in threads:
        t.join(timeout=DEADLINE)
        assert not t.is_alive(), "a writer did not finish"
    final = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    wait_until(lambda: snapshot_of(state_dir, final.pid), what="the final watch loop", proc=final)

    def all_acknowledged() -> bool:  # every byte of both writers' files, by the final daemon
        paths = [str(p) for name in ("w1", "w2") for p in (runs_root / name).glob("*tfevents*")]
        acked = acked_offsets(state_dir)
        return len(paths) == 2 and all(acked.get(p) == os.path.getsize(p) for p in paths)

    wait_until(all_acknowledged, timeout=2 * DEADLINE, what="every byte acknowledged", proc=final)
    final.send_signal(signal.SIGTERM)
    _out, err = final.communicate(timeout=DEADLINE)
    assert final.returncode == 0, err
    for name in ("w1", "w2"):
        assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], name)
    print(f"{kills} kills of a live watch")
