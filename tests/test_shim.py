"""`import tracelet` in the test process: writers, params, metrics, artifacts, lifecycle, protocol.

Real SummaryWriters, real offline W&B (in-process uploader), read back from the .wandb log.
"""

from __future__ import annotations

import json
import os
import time

import pytest

import tracelet
from helpers import assert_exactly_once, offline_runs, run_id_for, writer_class
from shim_helpers import the_run, values_of
from tracelet import _artifacts
from tracelet._experiment import decide
from tracelet._protocol import ArtifactBuilder, RunFile
from tracelet_daemon.cli import main
from tracelet_daemon.metadata import artifact_ids, fingerprint, load_artifact, load_run_metadata

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_experiment_left():
    yield
    tracelet.stop_logging()


def start(runs_root, state_dir, name, **kwargs):
    kwargs.setdefault("sidecar", False)
    return tracelet.start_logging(exp_name=name, runs_root=runs_root, state_dir=state_dir, **kwargs)


def upload(root, state_dir) -> int:
    return main(["upload", str(root), "--state-dir", state_dir, "--no-progress", "--log-level", "warning"])


@pytest.mark.parametrize("writer", ["tensorboardX", "torch"])
def test_writers_with_and_without_log_dir_land_in_the_experiment(runs_root, state_dir, wandb_env, tmp_path, writer):
    import numpy as np

    cls = writer_class(writer)
    exp = start(runs_root, state_dir, "explicit")
    default = cls()  # no log_dir: the run directory
    assert os.path.realpath(default.get_logdir() if hasattr(default, "get_logdir") else default.logdir) \
        == os.path.realpath(exp.run_dir)
    outside = cls(str(tmp_path / "elsewhere"))  # explicit, outside the runs root: followed
    nested = cls(str(tmp_path / "elsewhere" / "eval"))  # below it: a key prefix, as in a run directory
    fresh = cls(str(runs_root / "fresh" / "sub"))  # explicit, a new directory of the runs root
    for step in range(20):
        default.add_scalar("loss", 1.0 / (step + 1), step)
        outside.add_scalar("outside/acc", step / 20, step)
        nested.add_scalar("loss", step * 0.5, step)
        fresh.add_scalar("fresh", step * 2.0, step)
        if step % 10 == 0:
            default.add_histogram("weights", np.linspace(-1.0, 1.0, 50) * step, step)
    exp.log_metric("metric", 0.25)
    exp.log_metric("metric", 0.5)
    exp.log_metric("metric", 0.75, step=10)
    tracelet.stop_logging()  # the writers are flushed, not closed

    rows = assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "explicit")  # links are in the run dir
    keys = {k for r in rows for k in r}
    assert {"loss", "outside/acc", "eval/loss", "fresh", "metric", "weights"} <= keys
    assert {r["global_step"]: r["metric"] for r in rows if "metric" in r} == {0: 0.25, 1: 0.5, 10: 0.75}
    # the fresh directory is not a run of its own for a sidecar, and the in-process run is skipped too
    assert load_run_metadata(str(runs_root / "fresh")).uploader == "none"
    assert load_run_metadata(exp.run_dir).uploader == "in-process"
    assert upload(runs_root, str(tmp_path / "sidecar-state")) == 0
    assert offline_runs(wandb_env["WANDB_DIR"], run_id_for(runs_root, "fresh")) == []
    assert len(offline_runs(wandb_env["WANDB_DIR"], run_id_for(runs_root, "explicit"))) == 1
    for w in (default, outside, nested, fresh):
        w.close()


def test_context_manager_stops_on_an_exception(runs_root, state_dir, wandb_env):
    from tensorboardX import SummaryWriter

    with pytest.raises(ZeroDivisionError):
        with start(runs_root, state_dir, "boom", config={"lr": 0.1}) as exp:
            w = SummaryWriter()
            for step in range(5):
                w.add_scalar("x", float(step), step)
            1 / 0  # noqa: B018
    assert tracelet.get_active_experiment() is None and not exp.active
    run = the_run(wandb_env["WANDB_DIR"], runs_root, "boom")
    assert values_of(run, "x") == {s: float(s) for s in range(5)} and run.config["lr"] == 0.1
    tracelet.stop_logging()  # idempotent
    exp.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        exp.log_params({"late": 1})


def test_a_second_start_logging_ends_the_first_cleanly(runs_root, state_dir, wandb_env):
    first = start(runs_root, state_dir, "first", config={"tags": ["a"]})
    first.log_metric("v", 1.0, step=0)
    second = start(runs_root, state_dir, "second")
    assert not first.active and tracelet.get_active_experiment() is second
    second.log_metric("v", 2.0, step=0)
    tracelet.stop_logging()
    tracelet.stop_logging()
    assert values_of(the_run(wandb_env["WANDB_DIR"], runs_root, "first"), "v") == {0: 1.0}
    assert values_of(the_run(wandb_env["WANDB_DIR"], runs_root, "second"), "v") == {0: 2.0}
    assert RunFile(first.run_dir).read()["finished"] is True


def test_params_stay_nested_and_merge(runs_root, state_dir, wandb_env):
    import numpy as np

    exp = start(runs_root, state_dir, "params", config={"lr": 0.1, "notes": "n", "group": "g"})
    exp.log_params({"model": {"architecture": "resnet50", "dropout": 0.1}, "optimizer.lr": 1e-3})
    exp.log_params({"model": {"dropout": 0.2}, "shape": (3, 4), "seed": np.int64(7)})
    assert exp.config["model"] == {"architecture": "resnet50", "dropout": 0.2}
    tracelet.stop_logging()
    run = the_run(wandb_env["WANDB_DIR"], runs_root, "params")
    assert run.config["model"] == {"architecture": "resnet50", "dropout": 0.2}
    assert run.config["optimizer.lr"] == 1e-3 and run.config["lr"] == 0.1
    assert run.config["shape"] == [3, 4] and run.config["seed"] == 7
    assert (run.notes, run.group) == ("n", "g")


def test_resume(runs_root, state_dir, wandb_env):
    wandb_dir = wandb_env["WANDB_DIR"]
    exp = start(runs_root, state_dir, "res")
    for step in range(5):
        exp.log_metric("v", float(step), step=step)
    tracelet.stop_logging()
    again = start(runs_root, state_dir, "res", config={"resume": "allow"})
    assert again.run_dir == exp.run_dir and again.resumed
    for step in range(5, 8):
        again.log_metric("v", float(step), step=step)
    tracelet.stop_logging()
    rows = assert_exactly_once(runs_root, wandb_dir, "res")  # two W&B folders, one run id
    assert sorted(r["global_step"] for r in rows) == list(range(8))

    fresh = start(runs_root, state_dir, "res")  # no resume: a new run directory and W&B run
    assert os.path.basename(fresh.run_dir) == "res-2"
    tracelet.stop_logging()
    auto = start(runs_root, state_dir, "res", config={"resume": "auto"})  # the last one finished cleanly
    assert os.path.basename(auto.run_dir) == "res-3"
    tracelet.stop_logging()
    data = RunFile(auto.run_dir).read()
    RunFile(auto.run_dir).write({**data, "finished": False})  # as a crashed process leaves it
    crashed = start(runs_root, state_dir, "res", config={"resume": "auto"})
    assert crashed.run_dir == auto.run_dir
    tracelet.stop_logging()
    with pytest.raises(ValueError, match="must"):
        start(runs_root, state_dir, "never-seen", config={"resume": "must"})


def test_sidecar_mode_writes_only_files_and_a_sidecar_applies_them(runs_root, state_dir, wandb_env, tmp_path):
    from tensorboardX import SummaryWriter

    exp = start(runs_root, state_dir, "files-only", sidecar=True,
                config={"name": "Files Only", "tags": ["x"], "job_type": "eval", "batch": 64})
    assert exp.uploader == "sidecar"
    w = SummaryWriter()
    for step in range(10):
        w.add_scalar("loss", 10.0 - step, step)
    exp.log_artifact({"acc": 0.9, "classes": ["a", "b"]}, artifact_path="results/summary.json")
    tracelet.stop_logging()
    assert offline_runs(wandb_env["WANDB_DIR"], run_id_for(runs_root, "files-only")) == []  # nothing sent
    md = load_run_metadata(exp.run_dir)
    assert md.uploader == "sidecar" and md.finished and md.name == "Files Only"

    assert upload(runs_root, str(tmp_path / "sidecar-state")) == 0
    run = the_run(wandb_env["WANDB_DIR"], runs_root, "files-only")
    assert run.display_name == "Files Only" and run.job_type == "eval" and run.config["batch"] == 64
    assert values_of(run, "loss") == {s: 10.0 - s for s in range(10)}
    assert [(a["name"], a["type"], a["files"]) for a in run.artifacts] == [("summary", "results",
                                                                            ["results/summary.json"])]
    w.close()


def test_disabled_mode_sends_nothing(runs_root, state_dir, wandb_env, tmp_path):
    exp = start(runs_root, state_dir, "off", config={"mode": "disabled"})
    exp.log_metric("x", 1.0)
    tracelet.stop_logging()
    assert exp.uploader == "none"
    assert upload(runs_root, str(tmp_path / "sidecar-state")) == 0
    assert offline_runs(wandb_env["WANDB_DIR"], run_id_for(runs_root, "off")) == []


# -- the decision rule ------------------------------------------------------------------------------
def _heartbeat(root, age: float, pid: int | None = None) -> None:
    """A sidecar's status.json in the state dir the shim looks at (TRACELET_SIDECAR_STATE_DIR)."""
    state = root.parent / "sidecar-state"
    state.mkdir(exist_ok=True)
    (state / "status.json").write_text(json.dumps({
        "version": 1, "pid": pid or os.getpid(), "host": "elsewhere", "root": str(root), "live": True,
        "uploader": "sidecar", "heartbeat": time.time() - age}))


def test_the_decision_rule(runs_root, monkeypatch):
    monkeypatch.delenv("TRACELET_SIDECAR", raising=False)
    monkeypatch.setenv("TRACELET_SIDECAR_STATE_DIR", str(runs_root.parent / "sidecar-state"))
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)

    def rule(**kw):
        kw.setdefault("mode", None)
        kw.setdefault("explicit", None)
        kw.setdefault("recorded", None)
        return decide(runs_root=str(runs_root), **kw)[0]

    assert rule() == "in-process"  # no sidecar
    _heartbeat(runs_root, age=1.0)
    assert rule() == "sidecar"  # a live sidecar follows the root
    assert rule(explicit=False) == "in-process"
    monkeypatch.setenv("TRACELET_SIDECAR", "0")
    assert rule() == "in-process"
    assert rule(explicit=True) == "sidecar"  # the argument beats the variable
    monkeypatch.setenv("TRACELET_SIDECAR", "auto")
    _heartbeat(runs_root, age=300.0)
    assert rule() == "in-process"  # a stale heartbeat: nobody follows the root
    assert rule(recorded="sidecar") == "sidecar"  # a resumed run keeps its uploader
    assert rule(mode="disabled", explicit=True) == "none"
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
    assert rule(explicit=True) == "attached"  # a sweep trial logs into the sweep's run
    monkeypatch.setenv("TRACELET_SIDECAR", "maybe")
    monkeypatch.delenv("WANDB_SWEEP_ID")
    with pytest.raises(ValueError, match="sidecar"):
        rule()


# -- the protocol, writer side ----------------------------------------------------------------------
def test_run_json_changes_are_always_visible(tmp_path):
    rf = RunFile(str(tmp_path))
    seen = set()
    for i in range(20):  # equal sizes, faster than the clock's tick: mtime still moves
        rf.write({"config": {"v": i % 10}})
        seen.add(fingerprint(str(tmp_path)))
    assert len(seen) == 20
    assert not [n for n in os.listdir(tmp_path / ".tracelet") if n.endswith(".tmp")]


def test_artifact_ids_sort_in_publication_order(tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"123")
    ids = []
    for i in range(12):
        b = ArtifactBuilder(str(tmp_path / "run"))
        b.add_file(str(src), f"dir/f{i}.bin")
        ids.append(b.publish(f"a{i}", "model").id)
    leftover = ArtifactBuilder(str(tmp_path / "run"))  # never published: invisible to readers
    assert artifact_ids(str(tmp_path / "run")) == ids == sorted(ids)
    req = load_artifact(str(tmp_path / "run"), artifact_ids(str(tmp_path / "run"))[-1])
    assert (req.name, req.type, [n for _p, n in req.files]) == ("a11", "model", ["dir/f11.bin"])
    leftover.discard()


@pytest.mark.parametrize("kind, artifact_path, want", [
    ("file", "models/", ("model", "model", "models/model.pth")),
    ("file", None, ("model", "model", "model.pth")),
    ("file", "checkpoints/best.pth", ("best", "model", "checkpoints/best.pth")),
    ("dataframe", "predictions.csv", ("predictions", "results", "predictions.csv")),
    ("dataframe", "data/train.parquet", ("train", "dataset", "data/train.parquet")),
    ("dataframe", None, ("table", "dataset", "table.csv")),
    ("figure", "plots/training_loss.png", ("training_loss", "plot", "plots/training_loss.png")),
    ("figure", None, ("figure", "plot", "figure.png")),
    ("json", "results/", ("summary", "results", "results/summary.json")),
    ("file", "misc/", ("model", "model", "misc/model.pth")),
])
def test_artifact_naming_scheme(tmp_path, kind, artifact_path, want):
    obj = str(tmp_path / "model.pth")
    p = _artifacts.plan(kind, obj, artifact_path)
    member = "/".join(x for x in (p.folder, p.filename) if x)
    assert (_artifacts.artifact_name(p, obj, kind), _artifacts.artifact_type(p), member) == want


def test_artifact_objects(runs_root, state_dir, tmp_path):
    pytest.importorskip("pandas", reason="pandas is not installed (test extra)")
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is not installed (test extra)")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    exp = start(runs_root, state_dir, "objects", sidecar=True)
    ckpt = tmp_path / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "a.pt").write_bytes(b"a")
    (ckpt / "sub" / "b.pt").write_bytes(b"b")
    d = exp.log_artifact(str(ckpt), artifact_path="checkpoints/")
    assert (d.name, d.type, d.files) == ("checkpoints", "model", ("checkpoints/a.pt", "checkpoints/sub/b.pt"))
    df = exp.log_artifact(pd.DataFrame({"x": [1, 2]}), artifact_path="predictions.csv")
    assert pd.read_csv(os.path.join(df.directory, "files", "predictions.csv"))["x"].tolist() == [1, 2]
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    png = exp.log_artifact(fig, artifact_path="plots/loss.png")
    assert open(os.path.join(png.directory, "files", "plots", "loss.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    plt.close(fig)
    named = exp.log_artifact(str(ckpt / "a.pt"), name="my model", type="weights", aliases=["best"])
    assert (named.name, named.type) == ("my-model", "weights")
    assert load_artifact(exp.run_dir, os.path.basename(named.directory)).aliases == ("best",)
    with pytest.raises(TypeError, match="cannot store"):
        exp.log_artifact(object())
    with pytest.raises(FileNotFoundError):
        exp.log_artifact(str(tmp_path / "missing.pt"))
    tracelet.stop_logging()
