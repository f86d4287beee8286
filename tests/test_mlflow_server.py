"""`tracelet upload --backend mlflow` into a real `mlflow server`, read back through MLflow's client.

Logs come from the real writers (tensorboardX always, torch where installed); what MLflow holds is
compared with what TensorBoard's own loader and tbparse find in the files: every scalar exactly
once (float32), hparams as params, and every other type where docs/data-types.md says it goes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import HAVE_TORCH, run_id_for, writer_class
from mlflow_server import (  # noqa: F401
    NEEDS_MLFLOW,
    client,
    comparable,
    find_run,
    metric_points,
    mlflow_env,
    mlflow_points,
    mlflow_server,
)
from types_helpers import (
    assert_same_points,
    gif_bytes,
    have,
    summary_writer_types,
    tb_points,
    tbparse_scalars,
)

from tracelet_daemon.cli import main

pytestmark = [pytest.mark.slow, NEEDS_MLFLOW]

KINDS = ("scalar", "histogram", "image", "text", "audio", "video", "pr_curve")
SERIES = {
    "tensorboardX": {"loss_parts/train": "loss_parts/train", "loss_parts/val": "loss_parts/val"},
    "torch": {"loss_parts_train": "loss_parts/train", "loss_parts_val": "loss_parts/val"},
}


def _graph(w) -> None:
    import torch

    w.add_graph(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()), torch.zeros(1, 3))


def write_types(kind: str, run_dir) -> None:
    """Every SummaryWriter method, plus a GIF clip (what add_video stores) without moviepy."""
    rng = np.random.default_rng(5)
    w = writer_class(kind)(str(run_dir))
    summary_writer_types(w, rng, audio=have("soundfile") or kind == "torch", figure=have("matplotlib"),
                         graph=_graph if HAVE_TORCH else None, video=False)
    if kind == "torch":
        from tensorboard.compat.proto.summary_pb2 import Summary
    else:
        from tensorboardX.proto.summary_pb2 import Summary

    gif = gif_bytes(rng.integers(0, 255, (3, 6, 6, 3), dtype=np.uint8))
    w._get_file_writer().add_summary(Summary(value=[Summary.Value(tag="clip", image=Summary.Image(
        height=6, width=6, colorspace=3, encoded_image_string=gif))]), 5)
    w.close()


def upload(root, state_dir, uri, *extra: str) -> int:
    return main(["upload", str(root), "--backend", "mlflow", "--tracking-uri", uri, "--state-dir", str(state_dir),
                 "--no-progress", "--log-level", "warning", *extra])


def want_points(run_dir, series=None):
    points, config, graphs = tb_points(run_dir, series_dirs=series)
    return comparable(+type(points)({k: n for k, n in points.items() if k[2] in KINDS})), config, graphs


@pytest.mark.parametrize("kind", ["tensorboardX", "torch"])
def test_every_type_lands_exactly_once_and_a_rerun_adds_nothing(kind, runs_root, tmp_path, mlflow_server,
                                                                 mlflow_env):
    from helpers import write_run

    write_types(kind, runs_root / "types")
    write_run(writer_class(kind), runs_root / "train", steps=300, seed=1)
    project = f"types-{kind}"
    uri = mlflow_server.uri
    assert upload(runs_root, tmp_path / "state", uri, "--project", project) == 0

    held = {}
    for name, series in (("types", SERIES[kind]), ("train", None)):
        run = find_run(uri, run_id_for(runs_root, name), project)
        want, config, graphs = want_points(runs_root / name, series)
        got = mlflow_points(uri, run.info.run_id, str(tmp_path / f"dl-{name}"))
        assert_same_points(got, want, f"{kind}/{name}")
        assert {k for k in ("scalar", "histogram", "image") if any(p[2] == k for p in want)} <= \
            {p[2] for p in got}
        assert run.data.tags["mlflow.runName"] == name
        assert run.info.status == "FINISHED"
        if config:
            assert run.data.params == {k: str(v) for k, v in config.items()}
        if graphs:
            files = [f.path for f in client(uri).list_artifacts(run.info.run_id, "tensorboard")]
            assert any(p.endswith(".pbtxt") for p in files), files
        held[name] = (got, run.data.metrics["tracelet.seq"])
    types_run = find_run(uri, run_id_for(runs_root, "types"), project)
    assert {p[2] for p in held["types"][0]} >= {"scalar", "histogram", "image", "text", "pr_curve", "video"}
    assert types_run.data.tags.get("mlflow.loggedImages") == "True"

    # a rerun with the same state sends nothing; one with a lost state store resumes from the
    # checkpoint MLflow holds, and whatever it sends again is an identical point (dropped)
    assert upload(runs_root, tmp_path / "state", uri, "--project", project) == 0
    assert upload(runs_root, tmp_path / "state-lost", uri, "--project", project) == 0
    for name in ("types", "train"):
        run = find_run(uri, run_id_for(runs_root, name), project)  # still exactly one run
        got = mlflow_points(uri, run.info.run_id, str(tmp_path / f"dl2-{name}"))
        assert got == held[name][0]
        assert run.data.metrics["tracelet.seq"] == held[name][1]


def test_scalars_agree_with_tbparse(runs_root, tmp_path, mlflow_server, mlflow_env):
    from helpers import write_run
    from tensorboardX import SummaryWriter

    write_run(SummaryWriter, runs_root / "exp", steps=400, tags=("loss", "acc", "lr"), seed=2)
    assert upload(runs_root, tmp_path / "state", mlflow_server.uri, "--project", "tbparse") == 0
    run = find_run(mlflow_server.uri, run_id_for(runs_root, "exp"), "tbparse")
    got = metric_points(mlflow_server.uri, run.info.run_id)
    want = type(got)()
    for (dir_name, tag, step, value), n in tbparse_scalars(runs_root / "exp").items():
        want[(f"{dir_name}/{tag}" if dir_name else tag, step, value)] += n
    assert got == want and sum(got.values()) == 3 * 400 + 20


def test_run_metadata_becomes_params_tags_and_notes(runs_root, tmp_path, mlflow_server, mlflow_env, capfd):
    """run.json (the shim's file protocol): config → params, tags, notes, name; a changed param
    keeps its first value and the latest goes to a tag of the same name."""
    from tensorboardX import SummaryWriter

    run_dir = runs_root / "meta"
    w = SummaryWriter(str(run_dir))
    w.add_scalar("loss", 1.0, 0)
    w.close()
    meta = run_dir / ".tracelet" / "run.json"
    meta.parent.mkdir()

    def describe(config: dict, tags: list[str]) -> None:
        meta.write_text(json.dumps({"format": "tracelet.run/1", "name": "Meta Run", "notes": "**why** it ran",
                                    "group": "g1", "tags": tags, "config": config}))

    describe({"lr": 0.1, "model": {"depth": 50, "act": "relu"}, "bad key(1)": 1}, ["baseline", "v1"])
    uri = mlflow_server.uri
    assert upload(runs_root, tmp_path / "state", uri, "--project", "meta") == 0
    run = find_run(uri, run_id_for(runs_root, "meta"), "meta")
    assert run.data.params == {"lr": "0.1", "model.depth": "50", "model.act": "relu", "bad key_1_": "1"}
    tags = run.data.tags
    assert (tags["mlflow.runName"], tags["mlflow.note.content"], tags["tracelet.group"]) == \
        ("Meta Run", "**why** it ran", "g1")
    assert tags["baseline"] == tags["v1"] == ""
    assert tags["tracelet.directory"] == str(run_dir)

    describe({"lr": 0.01, "model": {"depth": 50, "act": "relu"}}, ["baseline"])
    w = SummaryWriter(str(run_dir), filename_suffix=".more")
    w.add_scalar("loss", 0.5, 1)
    w.close()
    assert upload(runs_root, tmp_path / "state", uri, "--project", "meta") == 0
    run = find_run(uri, run_id_for(runs_root, "meta"), "meta")
    assert run.data.params["lr"] == "0.1" and run.data.tags["lr"] == "0.01"
    assert "v1" not in run.data.tags and "baseline" in run.data.tags
    assert "param 'lr' cannot change in MLflow" in capfd.readouterr().err


def test_status_shows_where_each_run_is(runs_root, tmp_path, mlflow_server, mlflow_env):
    from tensorboardX import SummaryWriter

    w = SummaryWriter(str(runs_root / "where"))
    w.add_scalar("loss", 1.0, 0)
    w.close()
    state = tmp_path / "state"
    assert upload(runs_root, state, mlflow_server.uri, "--project", "where") == 0
    run = find_run(mlflow_server.uri, run_id_for(runs_root, "where"), "where")
    out = subprocess.run([sys.executable, "-m", "tracelet_daemon", "status", "--state-dir", str(state)],
                         capture_output=True, text=True, timeout=60, env=os.environ.copy(), check=False)
    assert out.returncode == 0, out.stderr
    url = f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert f"where: {url}" in out.stdout
    assert "backend mlflow" in out.stdout and "W&B" not in out.stdout
