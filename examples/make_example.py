"""Regenerate the bundled example log in examples/runs (deterministic; needs tensorboardX).

Two runs of a toy training loop: scalars every step, weight histograms, sample images, and an
eval/ subdirectory that becomes the `eval/` key prefix in W&B.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
from tensorboardX import SummaryWriter


def main(out: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for seed, (name, lr) in enumerate((("baseline", 0.1), ("bigger-lr", 0.3))):
        rng = np.random.default_rng(seed)
        train = SummaryWriter(os.path.join(out, name), filename_suffix=".example")
        evaluation = SummaryWriter(os.path.join(out, name, "eval"), filename_suffix=".example")
        loss = 2.0
        for step in range(200):
            loss = loss * (1 - lr * 0.05) + float(rng.normal(0, 0.02))
            train.add_scalar("loss", loss, step)
            train.add_scalar("lr", lr, step)
            if step % 40 == 0:
                train.add_histogram("weights", rng.normal(0, 1 / (1 + step / 50), 2000), step)
                train.add_image("samples", rng.integers(0, 255, (3, 16, 16), dtype=np.uint8), step)
            if step % 20 == 19:
                evaluation.add_scalar("loss", loss * 1.1, step)
        train.close()
        evaluation.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs"))
