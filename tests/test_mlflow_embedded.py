"""`--backend mlflow` with no tracking URI: the embedded SQLite store inside the state directory.

Nothing is written to the working directory (MLflow's defaults would put mlflow.db and ./mlruns
there), the closing summary says how to look at the store, and what it holds is read back with
MLflow's own client and compared with TensorBoard's loader and tbparse.
"""

from __future__ import annotations

import os

import pytest
from helpers import run_id_for, write_run
from mlflow_server import NEEDS_MLFLOW, comparable, find_run, mlflow_env, mlflow_points  # noqa: F401
from tensorboardX import SummaryWriter
from types_helpers import assert_same_points, tb_points

from tracelet_daemon.cli import main

pytestmark = [pytest.mark.slow, NEEDS_MLFLOW]


def test_embedded_store_lives_in_the_state_directory(runs_root, tmp_path, monkeypatch, capfd, mlflow_env):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for i, name in enumerate(("a", "b")):
        write_run(SummaryWriter, runs_root / name, steps=250, hist_every=50, image_every=100, seed=i)
    state = tmp_path / "state"
    args = ["upload", str(runs_root), "--backend", "mlflow", "--state-dir", str(state), "--no-progress",
            "--log-level", "warning"]
    assert main(args) == 0
    err = capfd.readouterr().err
    uri = f"sqlite:///{state}/mlflow/mlflow.db"
    assert f"look at them with: mlflow ui --backend-store-uri {uri}" in err
    assert os.listdir(cwd) == [], "MLflow wrote into the working directory"

    held = {}
    for name in ("a", "b"):
        run = find_run(uri, run_id_for(runs_root, name))  # experiment "tracelet" by default
        assert run.info.artifact_uri.startswith(str(state / "mlflow" / "artifacts"))
        points, _config, _graphs = tb_points(runs_root / name)
        want = comparable(+type(points)({k: n for k, n in points.items() if k[2] in ("scalar", "histogram", "image")}))
        held[name] = mlflow_points(uri, run.info.run_id, str(tmp_path / "dl" / name))
        assert_same_points(held[name], want, name)

    assert main(args) == 0  # a rerun: nothing new, nothing repeated
    for name in ("a", "b"):
        run = find_run(uri, run_id_for(runs_root, name))
        assert mlflow_points(uri, run.info.run_id, str(tmp_path / "dl2" / name)) == held[name]
    assert os.listdir(cwd) == []


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "./mlruns"])
def test_a_file_store_is_refused_in_one_line(uri, runs_root, tmp_path, capfd, mlflow_env):
    (runs_root / "x").mkdir()
    args = ["upload", str(runs_root), "--backend", "mlflow", "--tracking-uri", uri, "--state-dir",
            str(tmp_path / "state"), "--no-progress"]
    assert main(args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "file store" in err[0] and "sqlite:///" in err[0], err


def test_find_or_create_from_several_threads_makes_one_run(tmp_path, mlflow_env):
    """MLflow's find-or-create is not atomic (4 threads made 4 runs in 5 of 5 trials); the
    backend owns creation, so however many callers race, one run carries the id."""
    import threading

    from tracelet_daemon.backends import RunSpec, create

    backend = create("mlflow", state_dir=str(tmp_path / "state"), project="race")
    exp = backend.experiment_id("race")
    spec = RunSpec("race-0123456789", "race", str(tmp_path / "race"))
    found: list[str] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        found.append(backend.find_or_create(exp, spec).info.run_id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(found) == 4 and len(set(found)) == 1
    find_run(backend.target.uri, spec.run_id, "race")  # exactly one run carries the tag
