"""The run-directory file protocol: run.json, artifacts/, Lightning's hparams.yaml, applied once."""

from __future__ import annotations

import json
import os

import pytest
from tensorboardX import SummaryWriter

from helpers import offline_runs, run_id_for
from tracelet_daemon.cli import main
from tracelet_daemon.metadata import MetadataError, load_artifact, load_run_metadata

pytestmark = pytest.mark.slow


def upload(root, state_dir) -> int:
    return main(["upload", str(root), "--state-dir", state_dir, "--no-progress", "--log-level", "warning"])


def _run_json(run_dir, **fields):
    os.makedirs(run_dir / ".tracelet", exist_ok=True)
    (run_dir / ".tracelet" / "run.json").write_text(json.dumps({"format": "tracelet.run/1", **fields}))


def _artifact(run_dir, aid, name, kind, files, **extra):
    base = run_dir / ".tracelet" / "artifacts" / aid
    (base / "files").mkdir(parents=True)
    entries = []
    for fname, content in files.items():
        (base / "files" / fname).write_bytes(content)
        entries.append({"path": f"files/{fname}", "name": fname})
    (base / "manifest.json").write_text(json.dumps(
        {"format": "tracelet.artifact/1", "name": name, "type": kind, "files": entries, **extra}))


def test_run_json_and_artifacts_land_once(runs_root, state_dir, wandb_env):
    run_dir = runs_root / "exp"
    w = SummaryWriter(str(run_dir))
    w.add_scalar("loss", 0.5, 1)
    w.close()
    _run_json(run_dir, name="resnet_baseline", tags=["pytorch", "baseline"], notes="first try",
              group="resnet", job_type="training", config={"model": {"arch": "resnet50"}, "lr": 1e-3})
    _artifact(run_dir, "0001-model", "model", "model", {"model.pth": b"\x00weights" * 50}, aliases=["best"])
    assert upload(runs_root, state_dir) == 0
    ((_path, run),) = offline_runs(wandb_env["WANDB_DIR"], run_id_for(runs_root, "exp"))
    assert run.display_name == "resnet_baseline"
    assert run.tags == ["pytorch", "baseline"] and run.notes == "first try"
    assert (run.group, run.job_type) == ("resnet", "training")
    assert run.config["model"] == {"arch": "resnet50"} and run.config["lr"] == 1e-3
    assert [(a["name"], a["type"], a["files"]) for a in run.artifacts] == [("model", "model", ["model.pth"])]
    assert "best" in run.artifacts[0]["aliases"]

    # a rerun with nothing new opens nothing; a new artifact and a config change are applied once
    assert upload(runs_root, state_dir) == 0
    assert len(offline_runs(wandb_env["WANDB_DIR"], run_id_for(runs_root, "exp"))) == 1
    _run_json(run_dir, name="resnet_baseline", config={"model": {"arch": "resnet50"}, "lr": 1e-3, "epochs": 3})
    _artifact(run_dir, "0002-summary", "summary", "results", {"summary.json": b'{"acc": 0.9}'})
    assert upload(runs_root, state_dir) == 0
    runs = offline_runs(wandb_env["WANDB_DIR"], run_id_for(runs_root, "exp"))
    assert len(runs) == 2
    latest = runs[-1][1]
    assert latest.config["epochs"] == 3
    assert [a["name"] for a in latest.artifacts] == ["summary"]


def test_a_run_with_metadata_but_no_events_yet_is_created(runs_root, state_dir, wandb_env):
    _run_json(runs_root / "fresh", config={"seed": 7})
    assert upload(runs_root, state_dir) == 0
    ((_p, run),) = offline_runs(wandb_env["WANDB_DIR"], run_id_for(runs_root, "fresh"))
    assert run.config["seed"] == 7 and run.history == []


def test_lightning_hparams_yaml_becomes_config(runs_root, state_dir, wandb_env):
    run_dir = runs_root / "version_0"
    w = SummaryWriter(str(run_dir))
    w.add_scalar("val_loss", 0.3, 10)
    w.close()
    (run_dir / "hparams.yaml").write_text("lr: 0.02\nbatch_size: 64\nlayers:\n- 128\n- 64\n")
    assert upload(runs_root, state_dir) == 0
    ((_p, run),) = offline_runs(wandb_env["WANDB_DIR"], run_id_for(runs_root, "version_0"))
    assert run.config["lr"] == 0.02 and run.config["batch_size"] == 64 and run.config["layers"] == [128, 64]


def test_bad_metadata_is_one_clear_error_and_the_rest_goes_on(runs_root, state_dir, wandb_env, capsys):
    run_dir = runs_root / "bad"
    w = SummaryWriter(str(run_dir))
    w.add_scalar("x", 1.0, 0)
    w.close()
    os.makedirs(run_dir / ".tracelet")
    (run_dir / ".tracelet" / "run.json").write_text("{not json")
    _artifact(run_dir, "0001-evil", "evil", "model", {"a.bin": b"x"})
    manifest = run_dir / ".tracelet" / "artifacts" / "0001-evil" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"] = [{"path": "../../../../../../etc/passwd", "name": "passwd"}]
    manifest.write_text(json.dumps(data))
    assert upload(runs_root, state_dir) == 0
    err = capsys.readouterr().err
    assert "run.json" in err and "outside the artifact" in err and "Traceback" not in err
    ((_p, run),) = offline_runs(wandb_env["WANDB_DIR"], run_id_for(runs_root, "bad"))
    assert run.artifacts == [] and [r["x"] for r in run.history] == [1]


def test_protocol_validation(tmp_path):
    _run_json(tmp_path, tags="not-a-list")
    with pytest.raises(MetadataError, match="tags"):
        load_run_metadata(str(tmp_path))
    (tmp_path / ".tracelet" / "run.json").write_text(json.dumps({"format": "tracelet.run/9"}))
    with pytest.raises(MetadataError, match="newer"):
        load_run_metadata(str(tmp_path))
    _artifact(tmp_path, "0001-x", "bad name!", "model", {"f": b"1"})
    with pytest.raises(MetadataError, match="artifact name"):
        load_artifact(str(tmp_path), "0001-x")
