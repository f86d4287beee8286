"""`tracelet upload` end to end: real writers, real offline W&B, read back from the .wandb log."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from tensorboardX import SummaryWriter

from helpers import (assert_exactly_once, history_of, image_pixels, run_id_for, write_run, writer_class)
from tracelet_daemon.backends.wandb import txlog
from tracelet_daemon.cli import main
from tracelet_daemon.records import iter_records, frame

pytestmark = pytest.mark.slow


def upload(root, state_dir, *extra) -> int:
    return main(["upload", str(root), "--state-dir", state_dir, "--no-progress", "--log-level", "warning", *extra])


@pytest.mark.parametrize("writer", ["tensorboardX", "torch"])
def test_every_value_lands_exactly_once(runs_root, state_dir, wandb_env, writer):
    cls = writer_class(writer)
    write_run(cls, runs_root / "exp1", steps=150, seed=1)
    write_run(cls, runs_root / "exp2", steps=120, tags=("loss",), seed=2)
    assert upload(runs_root, state_dir, "--jobs", "2") == 0  # two worker processes, one run each
    for run in ("exp1", "exp2"):
        rows = assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], run)
        assert any("eval/loss" in r for r in rows)  # deeper directories become key prefixes
    (folder,) = [os.path.dirname(p) for p in txlog.find_run_files(wandb_env["WANDB_DIR"], run_id_for(runs_root, "exp1"))]
    run = txlog.load_offline_run(txlog.find_run_files(wandb_env["WANDB_DIR"], run_id_for(runs_root, "exp1"))[0])
    assert run.display_name == "exp1" and run.run_id == run_id_for(runs_root, "exp1")


def test_images_keep_their_pixels(runs_root, state_dir, wandb_env):
    rng = np.random.default_rng(5)
    pictures = {step: rng.integers(0, 255, (3, 9, 7), dtype=np.uint8) for step in (0, 3, 8)}
    w = SummaryWriter(str(runs_root / "pics"))
    for step, img in pictures.items():
        w.add_image("x", img, step)
    w.close()
    assert upload(runs_root, state_dir) == 0
    got = image_pixels(wandb_env["WANDB_DIR"], run_id_for(runs_root, "pics"))
    assert set(got) == {("x", s) for s in pictures}
    for step, img in pictures.items():
        assert np.array_equal(got[("x", step)], img.transpose(1, 2, 0))


def test_rerun_sends_nothing_and_new_data_goes_to_the_same_run(runs_root, state_dir, wandb_env):
    wandb_dir = wandb_env["WANDB_DIR"]
    write_run(SummaryWriter, runs_root / "exp", steps=100, image_every=0, seed=3)
    assert upload(runs_root, state_dir) == 0
    rid = run_id_for(runs_root, "exp")
    first = history_of(wandb_dir, rid)

    assert upload(runs_root, state_dir) == 0  # nothing new: no new rows anywhere
    assert history_of(wandb_dir, rid) == first

    # new data: a second writer in the same directory, and bytes appended to the older file
    write_run(SummaryWriter, runs_root / "exp", steps=50, start=100, image_every=0, eval_every=0, seed=4,
              suffix=".second")
    older = sorted((runs_root / "exp").glob("*tfevents*"))[0]
    donor = runs_root.parent / "donor"
    w = SummaryWriter(str(donor))
    for step in range(200, 210):
        w.add_scalar("appended", float(step), step)
    w.close()
    (donor_file,) = donor.glob("*tfevents*")
    with open(older, "ab") as f:
        for payload in list(iter_records(str(donor_file)))[1:]:  # skip its file_version event
            f.write(frame(payload))

    assert upload(runs_root, state_dir) == 0
    rows = assert_exactly_once(runs_root, wandb_dir, "exp")
    assert rows[: len(first)] == first
    assert sum(1 for r in rows if "appended" in r) == 10
    assert len(txlog.find_run_files(wandb_dir, rid)) == 2  # the same run id, resumed


def test_root_level_files_form_a_run_named_after_the_root(tmp_path, state_dir, wandb_env):
    root = tmp_path / "lonely"
    w = SummaryWriter(str(root))
    w.add_scalar("x", 1.5, 0)
    w.close()
    assert upload(root, state_dir) == 0
    rows = history_of(wandb_env["WANDB_DIR"], run_id_for(root, ""))
    assert [(r["x"], r["global_step"]) for r in rows] == [(1.5, 0)]


def test_junk_and_corrupt_files_are_reported_and_the_rest_goes_on(runs_root, state_dir, wandb_env, capsys):
    write_run(SummaryWriter, runs_root / "good", steps=30, hist_every=0, image_every=0, eval_every=0)
    (runs_root / "junk").mkdir()
    (runs_root / "junk" / "events.out.tfevents.junk").write_bytes(b"this is not a tfevents file at all" * 10)
    rc = upload(runs_root, state_dir)
    assert rc == 1  # something could not be read: the exit code says so
    err = capsys.readouterr().err
    assert "events.out.tfevents.junk" in err and "Traceback" not in err
    assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "good")


def _cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "tracelet_daemon", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["upload", "/no/such/dir"], "does not exist"),
    (["upload", __file__], "is not a directory"),
    (["upload", ".", "--backend", "nope"], "unknown backend"),
    (["watch", "/no/such/dir"], "does not exist"),
    (["upload", ".", "--mode", "sideways"], "unknown W&B mode"),
])
def test_usage_errors_are_one_line_and_exit_2(args, message, tmp_path):
    proc = _cli(*args, "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_state_dir_inside_root_is_refused(runs_root):
    proc = _cli("upload", str(runs_root), "--state-dir", str(runs_root / "state"))
    assert proc.returncode == 2 and "must not be inside" in proc.stderr


def test_version():
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("tracelet ")


def test_no_api_key_means_offline_and_a_sync_hint(runs_root, tmp_path, wandb_env):
    """With no key and no mode, never touch the network: go offline and say how to sync."""
    w = SummaryWriter(str(runs_root / "a"))
    w.add_scalar("x", 2.0, 1)
    w.close()
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY")}
    env["HOME"] = str(tmp_path / "home")  # no netrc either
    env["WANDB_BASE_URL"] = "http://127.0.0.1:9"  # if it did try the network, it would fail fast
    proc = _cli("upload", str(runs_root), "--state-dir", str(tmp_path / "st"), "--no-progress", env=env, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "wandb sync" in proc.stderr and str(tmp_path / "st") in proc.stderr
    (path,) = txlog.find_run_files(str(tmp_path / "st"), run_id_for(runs_root, "a"))
    assert "offline-run-" in path
    # the printed command is one wandb accepts: dry-run it
    (line,) = [ln for ln in proc.stderr.splitlines() if "wandb sync" in ln]
    import glob
    import shlex

    cmd = shlex.split(line.split("with: ", 1)[1])
    cmd = [*cmd[:2], "--dry-run", *[p for arg in cmd[2:] for p in sorted(glob.glob(arg))]]
    dry = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert dry.returncode == 0 and "Would sync 1 run" in dry.stdout + dry.stderr, dry.stderr


def test_small_batches_never_split_a_step_into_two_rows(runs_root, state_dir, wandb_env):
    write_run(SummaryWriter, runs_root / "tiny", steps=120, tags=("a", "b", "c", "d"), hist_every=0,
              image_every=0, eval_every=0)
    assert upload(runs_root, state_dir, "--max-batch-bytes", "1024") == 0
    rows = assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "tiny")
    steps = [r["global_step"] for r in rows]
    assert len(steps) == len(set(steps)) == 120
    assert all({"a", "b", "c", "d"} <= set(r) for r in rows)
