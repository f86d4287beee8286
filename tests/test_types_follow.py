"""Every file of a directory is followed on its own: data a writer appends to an older file after a
newer file appeared in the same directory is replayed (wandb's own TensorBoard sync follows only
the newest file and loses it). Golden: all types, compared with TensorBoard's loader."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboardX import SummaryWriter

from helpers import run_id_for
from types_helpers import WandbRun, assert_rows_once, assert_same_points, tb_points, upload

pytestmark = pytest.mark.slow


def _types(w, rng, steps) -> None:
    for step in steps:
        w.add_scalar("loss", float(rng.normal()), step)
        w.add_histogram("weights", rng.normal(size=500), step)
        w.add_image("sample", rng.integers(0, 255, (3, 5, 4), dtype=np.uint8), step)
        w.add_text("note", f"step {step}", step)
        w.add_pr_curve("pr", rng.integers(0, 2, 20), rng.random(20), step, num_thresholds=5)


def test_appends_to_an_older_file_after_a_newer_one_appeared(runs_root, state_dir, wandb_env):
    rng = np.random.default_rng(3)
    run_dir = runs_root / "exp"
    old = SummaryWriter(str(run_dir), filename_suffix=".old")
    _types(old, rng, range(0, 5))
    old.flush()
    rc, _ = upload(runs_root, state_dir)
    assert rc == 0

    new = SummaryWriter(str(run_dir), filename_suffix=".new")  # a newer file in the same directory
    _types(new, rng, range(100, 103))
    new.flush()
    _types(old, rng, range(5, 10))  # ... and the older file keeps growing
    old.close()
    new.close()
    files = sorted(run_dir.glob("*tfevents*"))
    assert len(files) == 2
    rc, _ = upload(runs_root, state_dir)
    assert rc == 0

    run = WandbRun(wandb_env["WANDB_DIR"], run_id_for(runs_root, "exp"))
    assert len(run.folders) == 2  # the same W&B run, resumed
    assert_rows_once(run)
    want, _config, _graphs = tb_points(run_dir)
    assert_same_points(run.points(), want, "exp")
    steps = {s for (k, s, _kind, _c) in run.points() if k == "loss"}
    assert steps == set(range(10)) | {100, 101, 102}
