"""Exactly once into MLflow across crashes of tracelet and of the MLflow server itself.

* SIGKILL `tracelet upload --backend mlflow` at seeded random points inside the replay (20 by
  default, `TRACELET_MLFLOW_CHAOS_KILLS`), restart it, and compare what MLflow holds with the files:
  0 lost, 0 repeated, one MLflow run per run directory.
* Kill the MLflow server (its whole process group) while `tracelet watch` replays into it and data
  keeps arriving: the daemon stays up with an exponential backoff and a status line naming the
  error, memory stays flat, and once the server is back on the same store everything lands once.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import run_id_for, write_run
from mlflow_server import NEEDS_MLFLOW, comparable, find_run, mlflow_env, mlflow_points, mlflow_server  # noqa: F401
from tensorboardX import SummaryWriter
from test_outage import _rss_mib  # the W&B outage test's reading of VmRSS
from types_helpers import assert_same_points, tb_points

pytestmark = [pytest.mark.slow, NEEDS_MLFLOW]

KILLS = int(os.environ.get("TRACELET_MLFLOW_CHAOS_KILLS", "20"))
KINDS = ("scalar", "histogram", "image")


def _cmd(verb, root, state_dir, uri, project, *extra):
    return [sys.executable, "-m", "tracelet_daemon", verb, str(root), "--backend", "mlflow", "--tracking-uri", uri,
            "--state-dir", str(state_dir), "--project", project, "--log-level", "info", *extra]


def _lines(stream, out: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        out.put(line)
    out.put(None)


def _wait_for_open(proc: subprocess.Popen, lines: queue.Queue, timeout: float = 120.0) -> bool:
    """Block until the upload has a run open in MLflow (so the kill lands inside the replay)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            return False
        if " opened at " in line or " resumed at " in line:
            return True
    return False


def _assert_exactly_once(root, uri, project, names, dst) -> None:
    for name in names:
        run = find_run(uri, run_id_for(root, name), project)  # exactly one MLflow run
        points, _config, _graphs = tb_points(root / name)
        want = comparable(+type(points)({k: n for k, n in points.items() if k[2] in KINDS}))
        assert_same_points(mlflow_points(uri, run.info.run_id, f"{dst}/{name}"), want, name)


def test_sigkill_at_seeded_points_neither_loses_nor_repeats(runs_root, tmp_path, mlflow_server, mlflow_env):
    names = ("alpha", "beta")
    for i, name in enumerate(names):
        write_run(SummaryWriter, runs_root / name, steps=4000, tags=("loss", "acc", "lr", "grad"),
                  hist_every=400, image_every=1000, eval_every=40, seed=10 + i)
    state = tmp_path / "state"
    cmd = _cmd("upload", runs_root, state, mlflow_server.uri, "chaos", "--no-progress", "--max-batch-bytes", "16384")
    rng = random.Random(20261130)
    landed = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=os.environ.copy())
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
        _wait_for_open(proc, lines)
        time.sleep(rng.uniform(0.0, 0.8))  # somewhere inside the replay of a run
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait(timeout=60)
    final = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600, check=False)
    assert final.returncode == 0, final.stderr[-3000:]
    assert landed >= KILLS * 3 // 4, f"only {landed} of {KILLS} kills landed while the upload ran"
    _assert_exactly_once(runs_root, mlflow_server.uri, "chaos", names, str(tmp_path / "dl"))
    print(f"{landed} kills landed mid-upload")


def _status(state_dir) -> dict:
    try:
        with open(os.path.join(state_dir, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc is None or proc.poll() is None, f"the daemon exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _all_acknowledged(state_dir) -> bool:
    runs = _status(state_dir).get("runs") or []
    files = [f for r in runs for f in r.get("files", [])]
    return bool(files) and all(f.get("acked") == os.path.getsize(f["path"]) for f in files)


def test_mlflow_server_killed_mid_replay_recovers_with_nothing_lost_or_repeated(runs_root, tmp_path, mlflow_server,
                                                                                mlflow_env):
    run_dir = runs_root / "live"
    write_run(SummaryWriter, run_dir, steps=3000, tags=("loss", "acc", "lr"), hist_every=300, image_every=1000,
              eval_every=30, seed=7)
    state = str(tmp_path / "state")
    log_path = tmp_path / "watch.log"
    cmd = _cmd("watch", runs_root, state, mlflow_server.uri, "outage", "--rescan-interval", "0.5",
               "--max-batch-bytes", "16384")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=os.environ.copy())
    try:
        def some_rows_acked() -> bool:
            runs = _status(state).get("runs") or []
            return bool(runs) and runs[0].get("acked_seq", -1) >= 5

        _wait(some_rows_acked, 180, "the first acknowledged rows", proc)
        mlflow_server.kill()  # the whole group: server, uvicorn and its workers
        down_since = time.monotonic()
        write_run(SummaryWriter, run_dir, steps=500, start=3000, tags=("loss", "acc", "lr"), hist_every=250,
                  image_every=0, eval_every=50, seed=8, suffix=".during-outage")

        def failing() -> bool:
            return _status(state).get("totals", {}).get("errors", {}).get("backend", 0) >= 3

        _wait(failing, 180, "three failed attempts", proc)
        rss_early = _rss_mib(proc.pid)
        time.sleep(8)  # more failed attempts: memory must not grow with them
        rss_late = _rss_mib(proc.pid)
        (run,) = _status(state)["runs"]
        assert "MLflow" in run["last_error"] and not run["open"], run["last_error"]
        assert proc.poll() is None, "the daemon died while MLflow was down"
        mlflow_server.start()  # same store, same port
        print(f"MLflow was down {time.monotonic() - down_since:.0f}s")
        _wait(lambda: _all_acknowledged(state), 300, "every byte to be acknowledged after the restart", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        if mlflow_server.proc is None:
            mlflow_server.start()  # leave the shared server running for the tests after this one
    err = log_path.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "retrying in 2s" in err and "retrying in 4s" in err, err[-3000:]  # exponential backoff
    assert "Traceback" not in err
    assert rss_late < rss_early + 30, (rss_early, rss_late)
    _assert_exactly_once(runs_root, mlflow_server.uri, "outage", ["live"], str(tmp_path / "dl"))
