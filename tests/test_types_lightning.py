"""PyTorch Lightning's TensorBoardLogger: version_N directories are runs, self.log values and
save_hyperparameters land exactly once, hparams.yaml becomes run config."""

from __future__ import annotations

import logging
import os

import pytest

pytest.importorskip("torch", reason="Lightning needs torch")
pytest.importorskip("lightning", reason="PyTorch Lightning is not installed (pip install lightning)")


from helpers import run_id_for  # noqa: E402
from types_helpers import (WandbRun, assert_rows_once, assert_same_points, env_for, tb_points,  # noqa: E402
                           upload)

pytestmark = pytest.mark.slow

VERSIONS = ("lightning_logs/version_0", "lightning_logs/version_1")


def _fit(save_dir, lr: float) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger

    class Tiny(L.LightningModule):
        def __init__(self, lr=0.1, hidden=4, name="tiny", layers=None):
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _i):
            x, y = batch
            loss = ((self.layer(x).squeeze(-1) - y) ** 2).mean()
            self.log("train_loss", loss)
            self.log("const", 0.5, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, _i):
            x, y = batch
            self.log("val_loss", ((self.layer(x).squeeze(-1) - y) ** 2).mean())

        def on_train_epoch_end(self):
            tb = self.logger.experiment
            tb.add_histogram("weights", self.layer.weight.detach(), self.global_step)
            self.logger.log_metrics({"parts": {"a": 1.0, "b": 2.0}}, self.global_step)  # add_scalars

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 2), torch.randn(16))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = L.Trainer(max_epochs=2, logger=TensorBoardLogger(str(save_dir)), log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", devices=1)
    trainer.fit(Tiny(lr=lr, layers=[4, 8]), loader, loader)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lightning")
    root = tmp / "project"  # the save_dir: it holds lightning_logs/version_N/
    logging.getLogger("lightning").setLevel(logging.ERROR)
    for lr in (0.1, 0.2):
        _fit(root, lr)
    mp = pytest.MonkeyPatch()
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "TRACELET_STATE_DIR"):
        mp.delenv(var, raising=False)
    env = env_for(tmp)
    for k, v in env.items():
        mp.setenv(k, v)
    rc, logs = upload(root, tmp / "state")
    runs = {v: WandbRun(env["WANDB_DIR"], run_id_for(root, v.replace("/", os.sep))) for v in VERSIONS}
    yield {"root": root, "rc": rc, "logs": logs, "runs": runs, "wandb_dir": env["WANDB_DIR"]}
    mp.undo()


def test_each_version_is_its_own_run(corpus):
    assert corpus["rc"] == 0
    folders = [f for f in os.listdir(os.path.join(corpus["wandb_dir"], "wandb"))
               if f.startswith("offline-run-")]
    assert len(folders) == 2
    for version, run in corpus["runs"].items():
        assert run.history, version
        assert all(not k.startswith("version_") for r in run.history for k in r)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_value_lands_exactly_once(corpus, version):
    run = corpus["runs"][version]
    assert_rows_once(run)
    series = {"parts_a": "parts/a", "parts_b": "parts/b"}  # log_metrics with a dict: add_scalars
    want, _config, _graphs = tb_points(corpus["root"] / version, series_dirs=series)
    assert_same_points(run.points(), want, version)
    keys = {k for r in run.history for k in r}
    assert {"train_loss", "val_loss", "epoch", "hp_metric", "weights", "parts/a", "parts/b"} <= keys


@pytest.mark.parametrize("version, lr", zip(VERSIONS, (0.1, 0.2)))
def test_save_hyperparameters_become_config(corpus, version, lr):
    config = corpus["runs"][version].config
    assert config["lr"] == lr and config["hidden"] == 4 and config["name"] == "tiny"


def test_hparams_yaml_becomes_config(corpus):
    """hparams.yaml keeps what the event hparams flatten to strings (a list here)."""
    import yaml

    from tracelet_daemon import metadata  # noqa: F401 - the lead's run-metadata module

    version = VERSIONS[0]
    with open(corpus["root"] / version / "hparams.yaml") as f:
        wanted = yaml.safe_load(f)
    config = corpus["runs"][version].config
    # run metadata (hparams.yaml) wins over the event hparams, which stringify lists
    assert {k: config.get(k) for k in wanted} == wanted
