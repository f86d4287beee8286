"""A complete tracelet example: a small MLP trained on random data, logged with a plain
TensorBoard SummaryWriter and landed in Weights & Biases by tracelet.

    python examples/mlp_example.py                 # offline W&B unless an API key is configured
    tracelet watch runs &  python examples/mlp_example.py   # the same, through a sidecar

What lands in the W&B run: scalars per batch (train/loss, train/lr) and per epoch
(epoch/train_loss, epoch/val_loss, epoch/val_acc), weight and gradient histograms per epoch, the
hyperparameters (W&B config), tags/notes/group/job_type, and three artifacts: the loss plot
(type "plot"), the saved model (type "model") and a JSON summary (type "results").

Nothing in the training code mentions W&B. With a sidecar running, this process does not
even import wandb. Settings: TRACELET_RUNS_ROOT (default ./runs), TRACELET_SIDECAR,
TRACELET_STATE_DIR, WANDB_MODE (see docs/python-api.md).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

import tracelet  # noqa: E402


def make_data(n: int, features: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    y = (x @ w + 0.5 * torch.randn(n, classes, generator=g)).argmax(dim=1)
    return x, y


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--exp-name", default="mlp_example")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    exp = tracelet.start_logging(
        exp_name=args.exp_name, project="tracelet-examples", backend="wandb",
        config={"name": "mlp-random-data", "tags": ["mlp", "example"], "notes": "MLP on random data",
                "group": "examples", "job_type": "training", "save_code": True,
                "seed": args.seed, "batch_size": args.batch_size},
    )
    exp.log_params({"model": {"architecture": "mlp", "hidden": args.hidden, "layers": 2},
                    "optimizer": {"name": "sgd", "lr": args.lr, "momentum": 0.9}, "epochs": args.epochs})

    features, classes = 16, 3
    x_train, y_train = make_data(512, features, classes, args.seed)
    x_val, y_val = make_data(128, features, classes, args.seed + 1)
    model = nn.Sequential(nn.Linear(features, args.hidden), nn.ReLU(), nn.Linear(args.hidden, classes))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    loss_fn = nn.CrossEntropyLoss()

    writer = SummaryWriter()  # no log_dir: tracelet points it at the experiment's run directory
    step, history = 0, {"train_loss": [], "val_loss": [], "val_acc": []}
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train))
        losses = []
        for i in range(0, len(x_train), args.batch_size):
            idx = perm[i : i + args.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/lr", opt.param_groups[0]["lr"], step)
            losses.append(loss.item())
            step += 1
        for name, param in model.named_parameters():
            writer.add_histogram(f"weights/{name}", param.detach(), epoch)
            writer.add_histogram(f"grads/{name}", param.grad.detach(), epoch)
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
            val_loss = loss_fn(logits, y_val).item()
            val_acc = (logits.argmax(dim=1) == y_val).float().mean().item()
        train_loss = sum(losses) / len(losses)
        writer.add_scalar("epoch/train_loss", train_loss, epoch)
        writer.add_scalar("epoch/val_loss", val_loss, epoch)
        writer.add_scalar("epoch/val_acc", val_acc, epoch)
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        history["val_acc"].append(val_acc)
        sched.step()

    with tempfile.TemporaryDirectory(prefix="mlp-example-") as out:  # artifacts are copies
        log_results(exp, history, model, out, step, args.epochs)
    writer.close()
    tracelet.stop_logging()
    print(f"run directory: {exp.run_dir}; sent by {exp.uploader} ({exp.reason})")
    return history


def log_results(exp, history: dict, model, out: str, steps: int, epochs: int) -> None:  # noqa: ANN001
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(history["train_loss"], label="train")
    ax.plot(history["val_loss"], label="val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    exp.log_artifact(fig, artifact_path="plots/training_loss.png")
    plt.close(fig)

    model_path = os.path.join(out, "model.pth")
    torch.save(model.state_dict(), model_path)
    exp.log_artifact(model_path, artifact_path="models/")

    summary = {"final_train_loss": history["train_loss"][-1], "final_val_loss": history["val_loss"][-1],
               "final_val_acc": history["val_acc"][-1], "epochs": epochs, "steps": steps}
    summary_path = os.path.join(out, "summary.json")
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
    exp.log_artifact(summary_path, artifact_path="results/")


if __name__ == "__main__":
    main()
