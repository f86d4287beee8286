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

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("TRACELET_CHAOS_KILLS", "6"))


def _upload_cmd(root, state_dir):
    return [sys.executable, "-m", "tracelet_daemon", "upload", str(root), "--state-dir", state_dir,
            "--no-progress", "--max-batch-bytes", "16384", "--log-level", "warning"]


def _wait_for_new_run_folder(wandb_dir, proc, timeout=30.0):
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
                           env=os.environ.copy(), timeout=300)
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
