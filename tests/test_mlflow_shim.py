"""`tracelet.start_logging(backend="mlflow")`: in the training process, and through a sidecar.

The training script is a real subprocess writing with tensorboardX's SummaryWriter; what lands
is read back from MLflow with its own client and compared with tbparse.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import run_id_for
from mlflow_server import NEEDS_MLFLOW, find_run, metric_points, mlflow_env  # noqa: F401
from shim_helpers import check, run_python, shim_env
from types_helpers import tbparse_scalars

pytestmark = [pytest.mark.slow, NEEDS_MLFLOW]

SCRIPT = """
import os, sys
import tracelet
from tensorboardX import SummaryWriter

exp = tracelet.start_logging(exp_name="mlrun", project="shim", backend="mlflow", {sidecar}
                             config={{"tags": ["baseline"], "notes": "first try", "lr": 1e-3,
                                      "model": {{"depth": 3}}}})
w = SummaryWriter()  # no log_dir: the experiment's run directory
for step in range(120):
    w.add_scalar("loss", 1.0 / (step + 1), step)
    if step % 40 == 0:
        w.add_histogram("weights", [0.1 * i for i in range(50)], step)
exp.log_params({{"lr": 0.01, "batch": 64}})
with open("model.pth", "wb") as f:
    f.write(b"weights" * 100)
exp.log_artifact("model.pth", artifact_path="models/")
tracelet.stop_logging()
print("uploader:", exp.uploader)
print("wandb imported:", "wandb" in sys.modules)
"""


def _check_run(uri: str, runs_root, tmp_path) -> None:
    run = find_run(uri, run_id_for(runs_root, "mlrun"), "shim")
    got = metric_points(uri, run.info.run_id)
    want = type(got)()
    for (dir_name, tag, step, value), n in tbparse_scalars(runs_root / "mlrun").items():
        want[(f"{dir_name}/{tag}" if dir_name else tag, step, value)] += n
    assert got == want and len(want) == 120
    data = run.data
    # a param cannot change: it keeps the first value the uploader saw (0.001, or already 0.01
    # when it first read run.json after log_params), and a later value is the tag of that name
    assert {k: v for k, v in data.params.items() if k != "lr"} == {"model.depth": "3", "batch": "64"}
    assert data.params["lr"] in ("0.001", "0.01")
    assert data.tags.get("lr", data.params["lr"]) == "0.01"
    assert data.tags["mlflow.note.content"] == "first try" and data.tags["baseline"] == ""
    assert data.tags["mlflow.runName"] == "mlrun"
    from mlflow.artifacts import download_artifacts

    path = download_artifacts(run_id=run.info.run_id, artifact_path="models/model.pth", tracking_uri=uri,
                              dst_path=str(tmp_path / "dl"))
    with open(path, "rb") as f:
        assert f.read() == b"weights" * 100
    hist = [f.path for f in __import__("mlflow").MlflowClient(uri).list_artifacts(
        run.info.run_id, "tensorboard/histograms/weights")]
    assert len(hist) == 3


def test_in_process_into_the_embedded_store(tmp_path, runs_root, state_dir, mlflow_env):
    env = shim_env(runs_root, state_dir)
    proc = check(run_python(SCRIPT.format(sidecar="sidecar=False,"), env, tmp_path, timeout=300))
    assert "uploader: in-process" in proc.stdout
    assert "wandb imported: False" in proc.stdout  # an MLflow user never loads W&B
    uri = f"sqlite:///{state_dir}/mlflow/mlflow.db"
    _check_run(uri, runs_root, tmp_path)
    leftovers = {"mlflow.db", "mlruns", "mlartifacts"} & set(os.listdir(tmp_path))  # the script's cwd
    assert not leftovers, f"MLflow wrote {leftovers} into the working directory"


def test_through_a_sidecar(tmp_path, runs_root, state_dir, mlflow_env):
    from tracelet_daemon.status import read_status

    sidecar_state = tmp_path / "sidecar-state"
    cmd = [sys.executable, "-m", "tracelet_daemon", "watch", str(runs_root), "--backend", "mlflow",
           "--state-dir", str(sidecar_state), "--rescan-interval", "0.5", "--log-level", "info"]
    sidecar = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while not (read_status(str(sidecar_state)) or {}).get("live"):
            assert sidecar.poll() is None and time.monotonic() < deadline, "the sidecar did not start"
            time.sleep(0.1)
        env = shim_env(runs_root, state_dir, TRACELET_SIDECAR_STATE_DIR=str(sidecar_state))
        proc = check(run_python(SCRIPT.format(sidecar=""), env, tmp_path, timeout=300))
        assert "uploader: sidecar" in proc.stdout and "wandb imported: False" in proc.stdout
        uri = f"sqlite:///{sidecar_state}/mlflow/mlflow.db"

        def landed() -> bool:  # the writer finished the run; the sidecar finishes it in MLflow
            try:
                run = find_run(uri, run_id_for(runs_root, "mlrun"), "shim")
            except AssertionError:
                return False
            return run.info.status == "FINISHED" and run.data.metrics.get("tracelet.seq", -1) >= 119

        deadline = time.monotonic() + 180
        while not landed():
            assert sidecar.poll() is None and time.monotonic() < deadline, "the sidecar did not finish the run"
            time.sleep(0.5)
    finally:
        sidecar.send_signal(signal.SIGTERM)
        _out, err = sidecar.communicate(timeout=120)
    assert sidecar.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    _check_run(uri, runs_root, tmp_path)
    assert not os.path.exists(state_dir)  # the training process kept no uploader state


def test_a_sidecar_feeding_another_backend_is_not_used(tmp_path, runs_root, monkeypatch):
    """A live W&B sidecar on the root would send an MLflow experiment to W&B: upload in-process."""
    import json

    from tracelet import _experiment

    live = {"live": True, "root": str(runs_root), "pid": os.getpid(), "host": "h", "backend": "wandb",
            "heartbeat": time.time(), "uploader": "sidecar"}
    monkeypatch.setattr(_experiment, "live_sidecar", lambda _root: live)
    monkeypatch.delenv("TRACELET_SIDECAR", raising=False)
    uploader, why = _experiment.decide(mode=None, explicit=None, recorded=None, runs_root=str(runs_root),
                                       backend="mlflow")
    assert uploader == "in-process" and "sends to wandb" in why, why
    assert _experiment.decide(mode=None, explicit=None, recorded=None, runs_root=str(runs_root),
                              backend="wandb")[0] == "sidecar"
    assert json.dumps(live)  # the status is what live_sidecar hands over
