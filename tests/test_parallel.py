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
