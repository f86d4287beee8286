"""W&B-native work keeps working: an active wandb.run, a sweep trial, and Lightning's
TensorBoardLogger. Each in its own process (wandb reads its environment once per process)."""

from __future__ import annotations

import os

import pytest

from helpers import HAVE_TORCH, NEEDS_TORCH, offline_runs, txlog
from shim_helpers import artifacts_by_name, check, run_python, shim_env, the_run, values_of

pytestmark = pytest.mark.slow


def _only_runs(wandb_dir: str) -> list[str]:
    root = os.path.join(wandb_dir, "wandb")
    return sorted(n for n in os.listdir(root) if n.startswith("offline-run-"))


def test_an_active_wandb_run_is_used_not_another(tmp_path, runs_root, state_dir, wandb_env):
    code = """
    import os, wandb, tracelet
    from tensorboardX import SummaryWriter
    run = wandb.init(project="native", id="user-run-1", config={"user_key": 1})
    run.log({"user_metric": 1.0})
    exp = tracelet.start_logging(exp_name="attached", config={"tags": ["from-tracelet"], "lr": 0.01})
    assert exp.uploader == "attached" and exp.run_id == "user-run-1", exp
    w = SummaryWriter()
    for step in range(20):
        w.add_scalar("tb/loss", 1.0 / (step + 1), step)
    exp.log_artifact({"acc": 0.5}, artifact_path="results/summary.json")
    tracelet.stop_logging()
    assert wandb.run is run  # still the user's, still open
    run.log({"user_metric": 2.0})
    art = wandb.Artifact("user-data", type="dataset")
    with open("data.txt", "w") as f:
        f.write("x")
    art.add_file("data.txt")
    run.log_artifact(art)  # W&B-native artifact flows are untouched
    run.finish()
    """
    check(run_python(code, shim_env(runs_root, state_dir), tmp_path))
    wandb_dir = wandb_env["WANDB_DIR"]
    assert len(_only_runs(wandb_dir)) == 1  # no second run
    ((_path, run),) = offline_runs(wandb_dir, "user-run-1")
    assert run.finished and run.project == "native"
    assert values_of(run, "tb/loss") == {s: pytest.approx(1.0 / (s + 1)) for s in range(20)}
    assert [r["user_metric"] for r in run.history if "user_metric" in r] == [1.0, 2.0]
    steps = [r["_step"] for r in run.history]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one shared _step counter
    assert run.config["user_key"] == 1 and run.config["lr"] == 0.01 and "from-tracelet" in run.tags
    assert set(artifacts_by_name(run)) == {"summary", "user-data"}


def test_a_sweep_trial_logs_into_the_sweeps_run(tmp_path, runs_root, state_dir, wandb_env):
    """wandb.agent hands a trial its run id and parameters through these variables."""
    params = tmp_path / "sweep-config.yaml"
    params.write_text("lr:\n  value: 0.5\n")
    env = shim_env(runs_root, state_dir, WANDB_SWEEP_ID="sweep123", WANDB_RUN_ID="trial-7",
                   WANDB_SWEEP_PARAM_PATH=str(params))
    code = """
    import tracelet
    from tensorboardX import SummaryWriter
    exp = tracelet.start_logging(exp_name="trial", project="sweeps", config={"lr": 0.1, "layers": 2})
    assert exp.uploader == "attached" and exp.run_id == "trial-7", exp
    assert exp.config["lr"] == 0.5 and exp.config["layers"] == 2, exp.config  # the sweep's value wins
    w = SummaryWriter()
    for step in range(10):
        w.add_scalar("val_loss", step * 0.1, step)
    tracelet.stop_logging()
    """
    check(run_python(code, env, tmp_path))
    ((_path, run),) = offline_runs(wandb_env["WANDB_DIR"], "trial-7")
    assert run.finished and run.config["lr"] == 0.5 and run.config["layers"] == 2
    assert values_of(run, "val_loss") == {s: pytest.approx(s * 0.1) for s in range(10)}
    assert len(_only_runs(wandb_env["WANDB_DIR"])) == 1


@pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)
def test_lightning_tensorboard_logger(tmp_path, runs_root, state_dir, wandb_env):
    pytest.importorskip("lightning", reason="lightning is not installed")
    code = """
    import warnings
    warnings.filterwarnings("ignore")
    import torch, tracelet
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    class Model(L.LightningModule):
        def __init__(self, lr=0.05, hidden=8):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        def training_step(self, batch, _i):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    tracelet.start_logging(backend="wandb", exp_name="lightning")
    trainer = L.Trainer(max_epochs=2, logger=TensorBoardLogger("tb_logs"), log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Model(), torch.utils.data.DataLoader(data, batch_size=16))
    tracelet.stop_logging()
    """
    check(run_python(code, shim_env(runs_root, state_dir), tmp_path, timeout=180))
    run = the_run(wandb_env["WANDB_DIR"], runs_root, "lightning")
    assert sorted(values_of(run, "train_loss")) == list(range(8))  # 4 batches x 2 epochs
    assert sorted(set(values_of(run, "epoch").values())) == [0, 1]
    assert run.config["lr"] == 0.05 and run.config["hidden"] == 8
    assert txlog.load_offline_run(run.path).finished
