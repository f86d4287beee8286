"""A stand-in training job for the deployment examples: writes a TensorBoard log step by step.

    python train.py --logdir /runs/demo --steps 300 --interval 0.5

Needs tensorboardX (or swap in torch.utils.tensorboard). Files are world-readable (umask 022)
so the tracelet sidecar, running as another user, can read them.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time

from tensorboardX import SummaryWriter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logdir", default=os.environ.get("LOGDIR", "/runs/demo"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between steps")
    args = ap.parse_args()
    os.umask(0o022)
    rng = random.Random(0)
    writer = SummaryWriter(args.logdir, flush_secs=2)
    loss = 2.0
    for step in range(args.steps):
        loss = loss * 0.99 + rng.gauss(0, 0.01)
        writer.add_scalar("loss", loss, step)
        writer.add_scalar("lr", 0.1 * (0.5 + 0.5 * math.cos(math.pi * step / args.steps)), step)
        if step % 50 == 0:
            writer.add_histogram("weights", [rng.gauss(0, 1) for _ in range(1000)], step)
        time.sleep(args.interval)
    writer.close()


if __name__ == "__main__":
    main()
