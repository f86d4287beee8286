"""Test helpers: read back what W&B holds and what the tfevents files hold, independently."""

from __future__ import annotations

import io
import math
import os
import time
from collections import Counter

import numpy as np

from tracelet_daemon.backends.wandb import txlog
from tracelet_daemon.runs import run_ref

try:
    import torch  # noqa: F401
    from torch.utils.tensorboard import SummaryWriter as TorchWriter

    HAVE_TORCH = True
except Exception:  # noqa: BLE001 - torch absent or broken: torch tests skip
    TorchWriter = None
    HAVE_TORCH = False

NEEDS_TORCH = "torch is not installed; the tensorboardX variant of this test still runs"


def wait_finished(path: str, timeout: float = 30.0) -> txlog.OfflineRun:
    """The .wandb tail can land just after finish(): wait for the exit record."""
    deadline = time.monotonic() + timeout
    while True:
        run = txlog.load_offline_run(path)
        if run.finished or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def history_of(wandb_dir: str, run_id: str, *, require_exit: bool = True) -> list[dict]:
    """Every history row of every local folder of `run_id`, in order, as `wandb sync` uploads them."""
    rows: list[dict] = []
    for _path, run in offline_runs(wandb_dir, run_id, require_exit=require_exit):
        rows.extend(run.history)
    return rows


def offline_runs(wandb_dir: str, run_id: str, *, require_exit: bool = True):
    """(path, OfflineRun) for every local folder of `run_id`, oldest first.

    Only the newest folder must have an exit record: earlier ones may come from killed processes.
    """
    paths = txlog.find_run_files(wandb_dir, run_id)
    out = []
    for i, path in enumerate(paths):
        last = i == len(paths) - 1
        out.append((path, wait_finished(path) if (require_exit and last) else txlog.load_offline_run(path)))
    return out


def run_id_for(root, run_rel: str) -> str:
    return run_ref(str(root), run_rel).run_id


def scalar_points(rows: list[dict]) -> Counter:
    """(key, global_step, float32 value) -> how many times W&B holds it."""
    out: Counter = Counter()
    for row in rows:
        for key, value in row.items():
            if key.startswith("_") or key == "global_step" or isinstance(value, (dict, list)):
                continue
            out[(key, row["global_step"], _f32(value))] += 1
    return out


def _f32(value) -> float | str:
    if isinstance(value, str):  # NaN / Infinity come back as strings from JSON in some paths
        return value
    v = float(np.float32(value))
    return "nan" if math.isnan(v) else v


def tb_scalar_points(run_dir: str) -> Counter:
    """What tbparse (an independent parser) finds, keyed like tracelet keys them."""
    from tbparse import SummaryReader

    df = SummaryReader(str(run_dir), pivot=False, extra_columns={"dir_name"}).scalars
    out: Counter = Counter()
    if df.empty:
        return out
    for tag, step, value, dir_name in zip(df["tag"], df["step"], df["value"], df["dir_name"]):
        key = f"{dir_name}/{tag}" if dir_name else tag
        out[(key, int(step), _f32(value))] += 1
    return out


def histogram_points(rows: list[dict]) -> Counter:
    """(key, global_step, total count, bins) for every histogram W&B holds."""
    out: Counter = Counter()
    for row in rows:
        for key, value in row.items():
            if isinstance(value, dict) and value.get("_type") == "histogram":
                out[(key, row["global_step"], int(sum(value["values"])), len(value["values"]))] += 1
    return out


def image_pixels(wandb_dir: str, run_id: str) -> dict[tuple[str, int], np.ndarray]:
    """Decoded pixels of every image W&B holds, by (key, global_step)."""
    from PIL import Image

    out = {}
    for path, run in offline_runs(wandb_dir, run_id):
        folder = os.path.dirname(path)
        for row in run.history:
            for key, value in row.items():
                if isinstance(value, dict) and value.get("_type") == "image-file":
                    with Image.open(os.path.join(folder, "files", value["path"])) as img:
                        out[(key, row["global_step"])] = np.asarray(img.convert("RGB"))
    return out


def png_pixels(encoded: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as img:
        return np.asarray(img.convert("RGB"))


def writer_class(kind: str):
    """The real SummaryWriter of `kind` ("tensorboardX" or "torch")."""
    if kind == "torch":
        import pytest

        if not HAVE_TORCH:
            pytest.skip(NEEDS_TORCH)
        return TorchWriter
    from tensorboardX import SummaryWriter

    return SummaryWriter


def write_run(writer_cls, run_dir, *, steps=200, start=0, tags=("loss", "acc"), hist_every=50,
              image_every=100, eval_every=20, seed=0, suffix="") -> None:
    """A realistic training log: scalars per step, histograms, images and an eval/ subdirectory.

    Writers name files by the second they start in; `suffix` keeps a second writer in the same
    directory within one second from truncating the first one's file.
    """
    rng = np.random.default_rng(seed)
    main = writer_cls(str(run_dir), filename_suffix=suffix)
    ev = writer_cls(os.path.join(str(run_dir), "eval"), filename_suffix=suffix)
    for step in range(start, start + steps):
        for i, tag in enumerate(tags):
            main.add_scalar(tag, float(rng.normal()) + i, step)
        if hist_every and step % hist_every == 0:
            main.add_histogram("weights", rng.normal(size=10_000), step)
        if image_every and step % image_every == 0:
            main.add_image("sample", rng.integers(0, 255, (3, 12, 10), dtype=np.uint8), step)
        if eval_every and step % eval_every == 0:
            ev.add_scalar("loss", float(rng.random()), step)
    main.close()
    ev.close()


def tb_histograms(run_dir) -> Counter:
    """(key, step, total count) of every histogram tbparse finds."""
    from tbparse import SummaryReader

    df = SummaryReader(str(run_dir), pivot=False, extra_columns={"dir_name"}).histograms
    out: Counter = Counter()
    if df.empty:
        return out
    for tag, step, counts, dir_name in zip(df["tag"], df["step"], df["counts"], df["dir_name"]):
        key = f"{dir_name}/{tag}" if dir_name else tag
        out[(key, int(step), int(round(float(np.sum(counts)))))] += 1
    return out


def tb_images(run_dir) -> dict[tuple[str, int], np.ndarray]:
    """Pixels of every image, read with TensorBoard's own EventFileLoader (tbparse needs TF)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    out = {}
    for dirpath, _dirs, files in os.walk(str(run_dir)):
        rel = os.path.relpath(dirpath, str(run_dir))
        prefix = "" if rel == "." else rel.replace(os.sep, "/")
        for name in sorted(f for f in files if "tfevents" in f):
            for event in LegacyEventFileLoader(os.path.join(dirpath, name)).Load():
                for v in event.summary.value:
                    if v.HasField("image"):
                        key = f"{prefix}/{v.tag}" if prefix else v.tag
                        out[(key, int(event.step))] = png_pixels(v.image.encoded_image_string)
    return out


def assert_exactly_once(root, wandb_dir: str, run_rel: str, *, require_exit: bool = True,
                        run_id: str | None = None) -> list[dict]:
    """W&B holds every scalar, histogram and image of the run's tfevents files exactly once
    (`run_id`: the W&B id, when it is not the one derived from the directory)."""
    rid = run_id or run_id_for(root, run_rel)
    rows = history_of(wandb_dir, rid, require_exit=require_exit)
    steps = [r["_step"] for r in rows]
    assert len(steps) == len(set(steps)), "a W&B row was sent twice"
    assert steps == sorted(steps), "W&B _step went backwards across folders"
    run_dir = os.path.join(str(root), run_rel) if run_rel else str(root)
    got, want = scalar_points(rows), tb_scalar_points(run_dir)
    missing, extra = want - got, got - want
    assert not missing and not extra, f"missing {list(missing)[:5]} extra {list(extra)[:5]}"
    hists = Counter((k, s, n) for (k, s, n, _bins) in histogram_points(rows).elements())
    assert hists == tb_histograms(run_dir)
    assert all(bins <= 512 for (_k, _s, _n, bins) in histogram_points(rows))
    want_images = tb_images(run_dir)
    got_images = image_pixels(wandb_dir, rid)
    assert set(got_images) == set(want_images)
    for key, pixels in want_images.items():
        assert np.array_equal(got_images[key], pixels), f"pixels differ for {key}"
    return rows
