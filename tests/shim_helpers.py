"""Helpers for the `import tracelet` shim tests: subprocesses, a real sidecar, reading runs back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from helpers import assert_exactly_once, histogram_points, offline_runs, run_id_for, txlog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")


def shim_env(runs_root, state_dir, **extra: str) -> dict[str, str]:
    """The test's environment (offline W&B from conftest) plus the shim's own settings."""
    env = os.environ.copy()
    env.update(TRACELET_RUNS_ROOT=str(runs_root), TRACELET_STATE_DIR=str(state_dir))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_python(code: str, env: dict[str, str], cwd, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run `code` (dedented) as a script file in `cwd`; raise with its output if it fails."""
    path = os.path.join(str(cwd), f"script_{time.monotonic_ns()}.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(code))
    proc = subprocess.run([sys.executable, path], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


class Sidecar:
    """A real `python -m tracelet_daemon watch ROOT` process."""

    def __init__(self, root, state_dir, env: dict[str, str] | None = None) -> None:
        self.root = str(root)
        self.state_dir = str(state_dir)
        cmd = [sys.executable, "-m", "tracelet_daemon", "watch", self.root, "--state-dir", str(state_dir),
               "--rescan-interval", "0.5", "--log-level", "info"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env or os.environ.copy())

    def wait_advertised(self, timeout: float = 30.0) -> None:
        """Until its live status.json is in its state dir (what the shim's detection looks for)."""
        from tracelet_daemon.status import read_status

        deadline = time.monotonic() + timeout
        while not (read_status(self.state_dir) or {}).get("live"):
            if self.proc.poll() is not None:
                raise AssertionError(f"the sidecar exited: {self.proc.communicate()[1]}")
            if time.monotonic() > deadline:
                raise AssertionError("the sidecar did not advertise itself")
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


def the_run(wandb_dir: str, runs_root, run_rel: str):
    """The one finished offline W&B run of `run_rel` (waits for its exit record)."""
    runs = offline_runs(wandb_dir, run_id_for(runs_root, run_rel))
    assert runs, f"no W&B run for {run_rel}"
    assert len(runs) == 1, f"{len(runs)} local folders for {run_rel}"
    path, run = runs[0]
    assert run.finished, f"{path} has no exit record"
    return run


def artifacts_by_name(run) -> dict[str, dict]:
    return {a["name"]: a for a in run.artifacts}


def values_of(run, key: str) -> dict[int, float]:
    """global_step -> value of `key` in the run's history."""
    return {row["global_step"]: row[key] for row in run.history if key in row}


# -- the snippet and the MLP example, shared by the in-process and sidecar tests ----------
SNIPPET_SETUP = """
import os, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from {module} import SummaryWriter

with open("model.pth", "wb") as f:
    f.write(os.urandom(300))
predictions_df = pd.DataFrame({{"id": [1, 2, 3], "pred": [0.1, 0.7, 0.2]}})
fig, ax = plt.subplots()
ax.plot([3.0, 2.0, 1.0])
"""

WANDB_ARTIFACT = """
import wandb
with open("labels.txt", "w") as f:
    f.write("cat\\ndog\\n")
wandb_artifact = wandb.Artifact("labels", type="dataset", description="class labels", metadata={"classes": 2})
wandb_artifact.add_file("labels.txt")
"""

# the snippet, verbatim (without the wandb.Artifact line when that is not wanted)
SNIPPET = """
import tracelet
tracelet.start_logging(exp_name="wandb_experiment", project="my_project", backend="wandb",
    config={"entity": "me", "name": "resnet_baseline", "tags": ["pytorch", "baseline"],
            "notes": "Initial baseline run", "group": "resnet_experiments", "job_type": "training",
            "mode": "offline", "save_code": True, "resume": "auto"})
writer = SummaryWriter()               # no log_dir: writes into the experiment's run directory
writer.add_scalar("loss", 0.5, 1)
exp = tracelet.get_active_experiment()
exp.log_params({"model": {"architecture": "resnet50", "dropout": 0.1}, "optimizer.lr": 1e-3})
exp.log_artifact("model.pth", artifact_path="models/")
exp.log_artifact(predictions_df, artifact_path="predictions.csv")     # pandas DataFrame
exp.log_artifact(fig, artifact_path="plots/training_loss.png")        # matplotlib Figure
{wandb_line}
tracelet.stop_logging()
print("uploader:", exp.uploader)
print("wandb imported:", "wandb" in sys.modules)
"""


def snippet(module: str, with_wandb_artifact: bool) -> str:
    wandb_line = "exp.log_artifact(wandb_artifact)                                       # a wandb.Artifact, as is"
    return (SNIPPET_SETUP.format(module=module) + (WANDB_ARTIFACT if with_wandb_artifact else "")
            + SNIPPET.replace("{wandb_line}", wandb_line if with_wandb_artifact else ""))


def check_snippet_run(run, *, with_wandb_artifact: bool, script_stem: str) -> None:
    assert run.display_name == "resnet_baseline" and run.project == "my_project"
    assert run.tags == ["pytorch", "baseline"] and run.notes == "Initial baseline run"
    assert (run.group, run.job_type) == ("resnet_experiments", "training")
    assert [(r["global_step"], r["loss"]) for r in run.history if "loss" in r] == [(1, 0.5)]
    assert run.config["model"] == {"architecture": "resnet50", "dropout": 0.1}
    assert run.config["optimizer.lr"] == 1e-3
    assert not {"entity", "name", "tags", "mode", "save_code", "resume"} & set(run.config)  # settings, not params
    entity = {rec.run.entity for rec in txlog.read_records(run.path) if rec.WhichOneof("record_type") == "run"}
    assert entity == {"me"}
    arts = {name: (a["type"], a["files"]) for name, a in artifacts_by_name(run).items()}
    want = {"model": ("model", ["models/model.pth"]), "predictions": ("results", ["predictions.csv"]),
            "training_loss": ("plot", ["plots/training_loss.png"]),
            f"source-{script_stem}": ("source", [f"code/{script_stem}.py"])}
    if with_wandb_artifact:
        want["labels"] = ("dataset", ["labels.txt"])
    assert arts == want



def check_mlp_run(runs_root, wandb_dir: str, *, epochs: int) -> None:
    """Every value of the example's tfevents files exactly once, plus config, metadata, artifacts."""
    rows = assert_exactly_once(runs_root, wandb_dir, "mlp_example")
    run = the_run(wandb_dir, runs_root, "mlp_example")
    assert run.run_id == run_id_for(runs_root, "mlp_example")
    assert run.display_name == "mlp-random-data" and run.project == "tracelet-examples"
    assert run.tags == ["mlp", "example"] and run.notes == "MLP on random data"
    assert (run.group, run.job_type) == ("examples", "training")
    assert run.config["model"] == {"architecture": "mlp", "hidden": 32, "layers": 2}
    assert run.config["optimizer"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    assert (run.config["epochs"], run.config["seed"], run.config["batch_size"]) == (epochs, 0, 32)
    batches = 512 // 32
    assert sorted(values_of(run, "train/loss")) == list(range(epochs * batches))
    assert sorted(values_of(run, "train/lr")) == list(range(epochs * batches))
    for key in ("epoch/train_loss", "epoch/val_loss", "epoch/val_acc"):
        assert sorted(values_of(run, key)) == list(range(epochs))
    hists = histogram_points(rows)
    for kind in ("weights", "grads"):
        for param in ("0.weight", "0.bias", "2.weight", "2.bias"):
            assert sorted(s for (k, s, _n, _b) in hists if k == f"{kind}/{param}") == list(range(epochs))
    arts = {name: (a["type"], a["files"]) for name, a in artifacts_by_name(run).items()}
    assert arts == {"training_loss": ("plot", ["plots/training_loss.png"]), "model": ("model", ["models/model.pth"]),
                    "summary": ("results", ["results/summary.json"]),
                    "source-mlp_example": ("source", ["code/mlp_example.py"])}
