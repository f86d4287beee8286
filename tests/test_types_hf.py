"""Hugging Face Trainer's TensorBoardCallback: the runs/<date>_<host> directory is the run, its
train/ and eval/ scalars and its `args` text land exactly once."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("torch", reason="the Trainer needs torch")
pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")
pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (pip install accelerate)")

from helpers import run_id_for  # noqa: E402
from types_helpers import (WandbRun, assert_rows_once, assert_same_points, env_for, tb_points,  # noqa: E402
                           upload)

pytestmark = pytest.mark.slow


def _train(output_dir) -> None:
    import torch
    from transformers import Trainer, TrainingArguments

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def forward(self, x, labels=None):
            out = self.layer(x).squeeze(-1)
            return {"loss": ((out - labels) ** 2).mean(), "logits": out}

    torch.manual_seed(0)
    data = [{"x": torch.tensor([float(i % 5), 1.0]), "labels": torch.tensor(float(i % 2))} for i in range(16)]
    args = TrainingArguments(output_dir=str(output_dir), report_to=["tensorboard"], logging_steps=1,
                             max_steps=6,
                             per_device_train_batch_size=4, eval_strategy="steps", eval_steps=3,
                             save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    Trainer(model=Tiny(), args=args, train_dataset=data, eval_dataset=data[:4]).train()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    root = tmp / "output"  # Trainer's output_dir: the callback writes runs/<Mon><DD>_<HH-MM-SS>_<host>/
    _train(root)
    (session,) = os.listdir(root / "runs")
    mp = pytest.MonkeyPatch()
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "TRACELET_STATE_DIR"):
        mp.delenv(var, raising=False)
    env = env_for(tmp)
    for k, v in env.items():
        mp.setenv(k, v)
    rc, logs = upload(root, tmp / "state")
    run_rel = os.path.join("runs", session)
    run = WandbRun(env["WANDB_DIR"], run_id_for(root, run_rel))
    yield {"root": root, "rc": rc, "run": run, "run_dir": root / run_rel}
    mp.undo()


def test_every_value_lands_exactly_once(corpus):
    assert corpus["rc"] == 0
    run = corpus["run"]
    assert_rows_once(run)
    want, _config, _graphs = tb_points(corpus["run_dir"])
    assert_same_points(run.points(), want, "hf")
    keys = {k for r in run.history for k in r}
    assert {"train/loss", "train/learning_rate", "eval/loss"} <= keys
    assert not any(k.startswith("runs/") for k in keys)


def test_training_arguments_text_is_kept(corpus):
    texts = [c for (k, _s, kind, c) in corpus["run"].points() if kind == "text" and k == "args"]
    assert len(texts) == 1
    ((args_json,),) = texts[0]
    assert json.loads(args_json)["max_steps"] == 6
