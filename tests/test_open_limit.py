"""--max-open-runs: idle runs are finished and resumed on new data, with no loss or duplication."""

from __future__ import annotations

import threading
import time

import pytest
from tensorboardX import SummaryWriter

from helpers import assert_exactly_once, run_id_for
from tracelet_daemon import backends
from tracelet_daemon.backends.wandb import txlog
from tracelet_daemon.engine import Engine, Options
from tracelet_daemon.state import StateStore

pytestmark = pytest.mark.slow


def test_open_runs_stay_bounded_and_nothing_is_lost(runs_root, state_dir, wandb_env):
    names = ["a", "b", "c", "d"]
    writers = {n: SummaryWriter(str(runs_root / n), flush_secs=1, max_queue=1) for n in names}
    store = StateStore(state_dir)
    engine = Engine(str(runs_root), backends.create("wandb"), store,
                    Options(rescan_interval=0.3, max_open_runs=2, status_interval=0.2))
    peak = []
    stop = threading.Event()
    thread = threading.Thread(target=engine.watch, args=(stop,),
                              kwargs={"on_tick": lambda e, snap: peak.append(snap["totals"]["open_runs"])})
    thread.start()
    try:
        step = 0
        for round_ in range(3):  # each round, every run gets new data, one after another
            for name in names:
                for _ in range(10):
                    writers[name].add_scalar("x", float(step), step)
                    step += 1
                writers[name].flush()
                target = engine.report.rows + 10
                deadline = time.monotonic() + 30
                while engine.report.rows < target and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.3)
    finally:
        for w in writers.values():
            w.close()
        time.sleep(1.0)
        stop.set()
        thread.join(120)
        store.close()
    assert peak and max(peak) <= 2
    for name in names:
        assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], name)
    # runs were finished while idle and resumed later: more than one W&B folder per run
    assert any(len(txlog.find_run_files(wandb_env["WANDB_DIR"], run_id_for(runs_root, n))) > 1 for n in names)
