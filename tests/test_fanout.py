"""Several backends at once (issue 13, item 5): W&B and MLflow fed from one root, each with its
own run identity, sequence numbers and acknowledged offsets; one backend's outage holds back only
itself, and a backend added later replays the history without touching the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tensorboardX import SummaryWriter

from helpers import assert_exactly_once, offline_runs, run_id_for, tb_scalar_points, write_run
from mlflow_server import NEEDS_MLFLOW, MlflowServer, find_run, metric_points, mlflow_env  # noqa: F401
from tracelet_daemon.cli import main

pytestmark = [pytest.mark.slow, NEEDS_MLFLOW]


def _mlflow_scalars(uri: str, run_id: str) -> dict:
    run = find_run(uri, run_id)
    return dict(metric_points(uri, run.info.run_id))


def _assert_mlflow_exactly_once(uri: str, root, run_rel: str) -> None:
    got = _mlflow_scalars(uri, run_id_for(root, run_rel))
    want = tb_scalar_points(os.path.join(str(root), run_rel))
    assert all(n == 1 for n in got.values()), "a value was stored twice"
    assert set(got) == set(want), (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5])


def test_two_backends_at_once_and_a_backend_added_later(runs_root, tmp_path, wandb_env, mlflow_env, capfd):
    for i, name in enumerate(("a", "b")):
        write_run(SummaryWriter, runs_root / name, steps=120, hist_every=60, image_every=60, seed=i)
    state = str(tmp_path / "state")
    uri = f"sqlite:///{state}/mlflow/mlflow.db"
    base = ["upload", str(runs_root), "--state-dir", state, "--no-progress", "--log-level", "warning"]

    assert main([*base, "--backend", "wandb"]) == 0  # W&B alone first
    # MLflow added later: it replays the whole history; W&B has nothing new and is not touched
    assert main([*base, "--backend", "wandb", "--backend", "mlflow"]) == 0
    for name in ("a", "b"):
        assert len(offline_runs(wandb_env["WANDB_DIR"], run_id_for(runs_root, name))) == 1
        assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], name)
        _assert_mlflow_exactly_once(uri, runs_root, name)
    assert sorted(n for n in os.listdir(state) if n.endswith(".sqlite3")) == ["state-mlflow.sqlite3",
                                                                              "state.sqlite3"]
    err = capfd.readouterr().err
    assert "wandb sync" in err and "mlflow ui" in err  # each backend says where its data is

    # new data goes to both, once; the comma form and the environment variable name both backends
    write_run(SummaryWriter, runs_root / "a", steps=30, start=120, hist_every=0, image_every=0,
              eval_every=0, seed=7, suffix=".more")
    os.environ["TRACELET_BACKEND"] = "wandb,mlflow"
    try:
        assert main(base) == 0
    finally:
        del os.environ["TRACELET_BACKEND"]
    assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "a")
    _assert_mlflow_exactly_once(uri, runs_root, "a")


def _status(state: str) -> dict:
    try:
        with open(os.path.join(state, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _acked(state: str, backend: str) -> dict[str, int]:
    out = {}
    for run in _status(state).get("runs", []):
        if run.get("backend") == backend:
            for f in run["files"]:
                out[f["path"]] = f["acked"]
    return out


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    with open(log_path, errors="replace") as f:
        tail = f.read()[-3000:]
    raise AssertionError(f"watch (exit {proc.poll()}) timed out waiting for {what}; its log ends:\n{tail}")


def test_mlflow_down_holds_back_only_mlflow(runs_root, tmp_path, wandb_env, mlflow_env):
    server = MlflowServer(str(tmp_path / "mlflow")).start()
    state = str(tmp_path / "state")
    writer = SummaryWriter(str(runs_root / "live"), max_queue=1, flush_secs=1)
    proc = None
    log_path = str(tmp_path / "watch.log")
    try:
        for step in range(20):
            writer.add_scalar("loss", 1.0 / (step + 1), step)
        writer.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tracelet_daemon", "watch", str(runs_root), "--state-dir", state,
             "--backend", "wandb", "--backend", "mlflow", "--tracking-uri", server.uri,
             "--rescan-interval", "0.5", "--log-level", "info"],
            stdout=subprocess.DEVNULL, stderr=open(log_path, "w"), env=os.environ.copy())
        (path,) = [str(p) for p in (runs_root / "live").glob("*tfevents*")]

        def both_caught_up() -> bool:
            size = os.path.getsize(path)
            return _acked(state, "wandb").get(path) == size and _acked(state, "mlflow").get(path) == size

        _wait(both_caught_up, 180, "both backends to acknowledge the first values", proc, log_path)
        server.kill()  # MLflow goes away
        for step in range(20, 60):
            writer.add_scalar("loss", 1.0 / (step + 1), step)
        writer.flush()  # tensorboardX writes from a thread of its own: compare with the size now
        _wait(lambda: _acked(state, "wandb").get(path) == os.path.getsize(path), 120, "W&B to stay live",
              proc, log_path)
        assert _acked(state, "mlflow").get(path, 0) < os.path.getsize(path)  # MLflow's backlog waits in the file
        snap = _status(state)
        assert snap["backends"] == ["wandb", "mlflow"]
        mlflow_run = next(r for r in snap["runs"] if r["backend"] == "mlflow")
        assert mlflow_run["last_error"], "the outage is visible in the status"
        server.start()  # back on the same port and store: MLflow catches up
        _wait(both_caught_up, 240, "MLflow to catch up", proc, log_path)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        with open(log_path) as f:
            err = f.read()
        assert proc.returncode == 0, err[-3000:]
        assert "retrying in" in err  # backoff while MLflow was down
    finally:
        writer.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        server.kill()
    assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "live")
    server.start()
    try:
        got = _mlflow_scalars(server.uri, run_id_for(runs_root, "live"))
    finally:
        server.kill()
    assert sorted((k, s) for (k, s, _v), n in got.items() for _ in range(n)) == [("loss", s) for s in range(60)]


def test_unknown_backend_in_a_list_is_a_usage_error(runs_root, tmp_path, capsys):
    assert main(["upload", str(runs_root), "--backend", "wandb", "--backend", "nope",
                 "--state-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


SHIM_SCRIPT = """
import tracelet
from tensorboardX import SummaryWriter

exp = tracelet.start_logging(exp_name="both", project="shim", backend=["wandb", "mlflow"], sidecar=False,
                             config={"lr": 1e-3})
w = SummaryWriter()
for step in range(50):
    w.add_scalar("loss", 1.0 / (step + 1), step)
tracelet.stop_logging()
print("uploader:", exp.uploader)
"""


def test_the_shim_feeds_both_backends_in_process(tmp_path, runs_root, state_dir, wandb_env, mlflow_env):
    from shim_helpers import check, run_python, shim_env

    proc = check(run_python(SHIM_SCRIPT, shim_env(runs_root, state_dir), tmp_path, timeout=300))
    assert "uploader: in-process" in proc.stdout
    assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "both")
    uri = f"sqlite:///{state_dir}/mlflow/mlflow.db"
    run = find_run(uri, run_id_for(runs_root, "both"), "shim")
    got = metric_points(uri, run.info.run_id)
    assert sorted((k, s) for (k, s, _v), n in got.items() for _ in range(n)) == [("loss", s) for s in range(50)]
    assert run.data.params["lr"] == "0.001"
