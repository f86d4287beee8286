"""Write one TensorBoard run with every data type tracelet replays, then look at it in W&B.

    python examples/all_types.py /tmp/all-types
    tracelet upload /tmp/all-types --mode offline --state-dir /tmp/all-types-state
    tracelet inspect /tmp/all-types-state/wandb/offline-run-*-demo-*

Uses tensorboardX only (a test dependency); audio needs `soundfile`. docs/data-types.md says
what each type becomes.
"""

from __future__ import annotations

import io
import sys

import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary


def gif(frames: np.ndarray) -> bytes:
    pics = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    pics[0].save(buf, format="GIF", save_all=True, append_images=pics[1:], duration=200, loop=0)
    return buf.getvalue()


def main(root: str) -> None:
    rng = np.random.default_rng(0)
    w = SummaryWriter(f"{root}/demo")
    for step in range(20):
        w.add_scalar("loss", float(np.exp(-step / 8) + rng.normal() * 0.02), step)  # history value
        w.add_scalars("acc", {"train": step / 20, "val": step / 25}, step)  # keys acc/train, acc/val
        if step % 5 == 0:
            w.add_histogram("weights", rng.normal(size=5000) / (step + 1), step)  # wandb.Histogram
            w.add_image("sample", rng.integers(0, 255, (3, 32, 32), dtype=np.uint8), step)  # wandb.Image
            w.add_text("notes", f"**step {step}**: all good", step)  # wandb.Table (global_step, text)
            w.add_pr_curve("pr", rng.integers(0, 2, 100), rng.random(100), step)  # line chart + pr_table
            try:
                w.add_audio("tone", np.sin(np.linspace(0, 400 * (step + 1), 8000)), step, sample_rate=8000)
            except ImportError:
                pass  # tensorboardX's add_audio needs soundfile
    frames = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    clip = Summary.Image(height=32, width=32, colorspace=3, encoded_image_string=gif(frames))
    video = Summary(value=[Summary.Value(tag="clip", image=clip)])
    w._get_file_writer().add_summary(video, 10)  # what add_video writes: wandb.Video
    w.add_hparams({"lr": 0.01, "optimizer": "adam"}, {"hparam/final_loss": 0.1})  # config + history
    w.close()
    print(f"wrote {root}/demo; now: tracelet upload {root} --mode offline --state-dir {root}-state")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "all-types")
