"""File identity: replaced, truncated, rewritten and vanished files; symlink loops."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
from tensorboardX import SummaryWriter

from helpers import history_of, run_id_for, scalar_points, tb_scalar_points
from tracelet_daemon.backends import create
from tracelet_daemon.cli import main
from tracelet_daemon.engine import Engine, Options
from tracelet_daemon.state import StateStore

pytestmark = pytest.mark.slow


def upload(root, state_dir) -> int:
    return main(["upload", str(root), "--state-dir", state_dir, "--no-progress", "--log-level", "warning"])


def _log(path_dir, start, n, tag="x", suffix=""):
    w = SummaryWriter(str(path_dir), filename_suffix=suffix)
    for step in range(start, start + n):
        w.add_scalar(tag, step * 0.5, step)
    w.close()
    return sorted(path_dir.glob(f"*tfevents*{suffix}"))[-1]


def test_replaced_file_under_the_same_name_is_read_from_zero(runs_root, tmp_path, state_dir, wandb_env):
    run = runs_root / "exp"
    path = _log(run, 0, 20)
    before = tb_scalar_points(run)
    assert upload(runs_root, state_dir) == 0
    shutil.rmtree(run)  # the run directory is deleted and recreated with new content, same file name
    fresh = _log(tmp_path / "new", 100, 30)
    run.mkdir()
    shutil.copy(fresh, path)
    after = tb_scalar_points(run)
    assert upload(runs_root, state_dir) == 0
    got = scalar_points(history_of(wandb_env["WANDB_DIR"], run_id_for(runs_root, "exp")))
    assert got == before + after


def test_truncated_and_rewritten_in_place_is_read_from_zero(runs_root, tmp_path, state_dir, wandb_env):
    run = runs_root / "exp"
    path = _log(run, 0, 50)
    before = tb_scalar_points(run)
    assert upload(runs_root, state_dir) == 0
    inode = os.stat(path).st_ino
    shorter = _log(tmp_path / "other", 500, 5, tag="y").read_bytes()
    with open(path, "r+b") as f:  # same inode, shorter content: offset beyond the end
        f.truncate(0)
        f.write(shorter)
    assert os.stat(path).st_ino == inode
    assert upload(runs_root, state_dir) == 0
    got = scalar_points(history_of(wandb_env["WANDB_DIR"], run_id_for(runs_root, "exp")))
    assert got == before + tb_scalar_points(run)


def test_rewritten_in_place_longer_is_detected_by_its_first_bytes(runs_root, tmp_path, state_dir, wandb_env):
    run = runs_root / "exp"
    path = _log(run, 0, 10)
    before = tb_scalar_points(run)
    assert upload(runs_root, state_dir) == 0
    longer = _log(tmp_path / "other", 1000, 80, tag="z").read_bytes()
    assert len(longer) > os.path.getsize(path)
    with open(path, "r+b") as f:
        f.write(longer)
    assert upload(runs_root, state_dir) == 0
    got = scalar_points(history_of(wandb_env["WANDB_DIR"], run_id_for(runs_root, "exp")))
    assert got == before + tb_scalar_points(run)


def test_directory_deleted_while_watched_is_forgotten_without_a_crash(runs_root, state_dir, wandb_env):
    _log(runs_root / "keep", 0, 5)
    _log(runs_root / "doomed", 0, 5)
    store = StateStore(state_dir)
    engine = Engine(str(runs_root), create("wandb"), store,
                    Options(rescan_interval=0.2, forget_after=0.5, use_inotify=True))
    stop = threading.Event()
    thread = threading.Thread(target=engine.watch, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and engine.report.rows < 10:
            time.sleep(0.05)
        shutil.rmtree(runs_root / "doomed")
        deadline = time.monotonic() + 30
        doomed_key = str(runs_root / "doomed")
        while time.monotonic() < deadline and store_has(state_dir, doomed_key):
            time.sleep(0.1)
        assert not store_has(state_dir, doomed_key), "the state of a deleted run was never cleaned up"
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(60)
        store.close()
    assert engine.report.rows == 10


def store_has(state_dir, run_key) -> bool:
    s = StateStore(state_dir, lock=False)  # a reader beside the running engine
    try:
        return bool(s.files_of(run_key))
    finally:
        s.close()


def test_symlink_loops_do_not_hang_discovery(runs_root, state_dir, wandb_env):
    _log(runs_root / "exp", 0, 3)
    os.symlink(runs_root / "exp", runs_root / "exp" / "loop")
    os.symlink(runs_root, runs_root / "exp" / "up")
    assert upload(runs_root, state_dir) == 0
    rows = history_of(wandb_env["WANDB_DIR"], run_id_for(runs_root, "exp"))
    assert sorted(r["global_step"] for r in rows) == [0, 1, 2]
