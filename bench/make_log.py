"""Generate (or reuse) the reference TensorBoard log the benchmarks read.

Shape at ``--scale 1`` (about 12.6 MB, one run directory, one event file):

* 20 scalar tags x 10,000 steps, one ``add_scalar`` per value (200,000 events): the common case
  of a training loop logging metrics one by one, and the one that stresses per-event overhead;
* 200 histograms of 10,000 normal values under tag ``weights``, spread evenly over the run;
* 20 random 64x64 RGB uint8 images (``add_image``), spread evenly over the run.

Every count scales with ``--scale`` (``--scale 10``: 100,000 steps, 2M scalar events, 2,000
histograms, 200 images, ~126 MB; ``--scale 0.1`` is the smoke-test log).

The log is written with tensorboardX (works without torch), seeded and with explicit wall
times, so two generations differ only in the wall time of the leading ``file_version`` record.
The event file is renamed to a fixed name. Logs are cached under ``--out``; a ``meta.json``
written last marks a complete log, so an interrupted generation is simply redone.

Layout::

    OUT/scale-<s>/logs/run/events.out.tfevents.1700000000.tracelet-bench
    OUT/scale-<s>/meta.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

SCALAR_TAGS = 20
BASE_STEPS = 10_000
BASE_HISTOGRAMS = 200
BASE_IMAGES = 20
HISTOGRAM_SAMPLES = 10_000
IMAGE_SIZE = 64
HISTOGRAM_TAG = "weights"
SEED = 20240501
WALL_START = 1_700_000_000.0
WALL_PER_STEP = 0.05
RUN_NAME = "run"
EVENT_FILE = "events.out.tfevents.1700000000.tracelet-bench"
FORMAT_VERSION = 1  # bump when the log's content changes, so stale caches are regenerated


@dataclass(frozen=True)
class LogSpec:
    """What a log of a given scale contains; also what the benchmarks expect to see delivered."""

    scale: float
    steps: int
    scalar_tags: int
    histograms: int
    images: int
    format_version: int = FORMAT_VERSION

    @property
    def scalars(self) -> int:
        return self.steps * self.scalar_tags

    @classmethod
    def for_scale(cls, scale: float) -> LogSpec:
        if scale <= 0:
            raise ValueError("scale must be positive")
        steps = max(1, round(BASE_STEPS * scale))
        return cls(
            scale=scale,
            steps=steps,
            scalar_tags=SCALAR_TAGS,
            histograms=min(steps, max(1, round(BASE_HISTOGRAMS * scale))),
            images=min(steps, max(1, round(BASE_IMAGES * scale))),
        )


@dataclass(frozen=True)
class LogInfo:
    """A generated log on disk."""

    root: str  # the directory to hand to `tracelet upload` (holds one run directory)
    run_dir: str
    event_file: str
    size_bytes: int
    spec: LogSpec
    generated_seconds: float

    def to_json(self) -> dict:
        d = asdict(self)
        d["spec"] = asdict(self.spec)
        return d


def default_out_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tracelet-bench")


def scale_label(scale: float) -> str:
    return f"{scale:g}".replace(".", "p")


def spread(count: int, steps: int) -> list[int]:
    """`count` distinct steps spread evenly over 0..steps-1 (first and last included)."""
    return sorted({int(round(x)) for x in np.linspace(0, steps - 1, count)})


def ensure_log(scale: float = 1.0, out: str | None = None, *, force: bool = False,
               quiet: bool = False) -> LogInfo:
    """Return the cached log for `scale`, generating it first if missing or stale."""
    spec = LogSpec.for_scale(scale)
    base = os.path.join(out or default_out_dir(), f"scale-{scale_label(scale)}")
    cached = None if force else _load_cached(base, spec)
    if cached is not None:
        return cached
    if not quiet:
        print(f"generating reference log (scale {scale:g}) under {base} ...", file=sys.stderr, flush=True)
    return _generate(base, spec)


def _load_cached(base: str, spec: LogSpec) -> LogInfo | None:
    try:
        with open(os.path.join(base, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get("spec") != asdict(spec) or not os.path.isfile(meta.get("event_file", "")):
        return None
    if os.path.getsize(meta["event_file"]) != meta.get("size_bytes"):
        return None
    return LogInfo(meta["root"], meta["run_dir"], meta["event_file"], meta["size_bytes"], spec,
                   meta.get("generated_seconds", 0.0))


def _generate(base: str, spec: LogSpec) -> LogInfo:
    """Write into a scratch dir next to `base`, then move it in place and write meta.json last."""
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    shutil.rmtree(base, ignore_errors=True)
    scratch = tempfile.mkdtemp(prefix=".gen-", dir=os.path.dirname(base) or ".")
    try:
        start = time.perf_counter()
        written = write_log(os.path.join(scratch, "logs", RUN_NAME), spec)
        os.replace(written, os.path.join(os.path.dirname(written), EVENT_FILE))
        elapsed = time.perf_counter() - start
        os.replace(scratch, base)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    root = os.path.join(base, "logs")
    run_dir = os.path.join(root, RUN_NAME)
    event_file = os.path.join(run_dir, EVENT_FILE)
    info = LogInfo(root, run_dir, event_file, os.path.getsize(event_file), spec, elapsed)
    with open(os.path.join(base, "meta.json"), "w") as f:
        json.dump(info.to_json(), f, indent=2)
    return info


def write_log(run_dir: str, spec: LogSpec) -> str:
    """Write the log with tensorboardX; returns the event file it created."""
    from tensorboardX import SummaryWriter

    rng = np.random.default_rng(SEED)
    scalars = _scalar_series(rng, spec)
    hist_steps = set(spread(spec.histograms, spec.steps))
    image_steps = set(spread(spec.images, spec.steps))
    tags = [f"train/metric_{k:02d}" for k in range(spec.scalar_tags)]
    os.makedirs(run_dir, exist_ok=True)
    writer = SummaryWriter(run_dir, max_queue=1000, flush_secs=3600)
    try:
        for step in range(spec.steps):
            wall = WALL_START + step * WALL_PER_STEP
            for k, tag in enumerate(tags):
                writer.add_scalar(tag, scalars[step, k], step, walltime=wall)
            if step in hist_steps:
                values = rng.normal(loc=step / spec.steps, scale=1.0, size=HISTOGRAM_SAMPLES)
                writer.add_histogram(HISTOGRAM_TAG, values, step, walltime=wall)
            if step in image_steps:
                pixels = rng.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
                writer.add_image("samples", pixels, step, walltime=wall, dataformats="HWC")
    finally:
        writer.close()
    files = [n for n in os.listdir(run_dir) if "tfevents" in n]
    if len(files) != 1:
        raise RuntimeError(f"tensorboardX wrote {len(files)} event files in {run_dir}")
    return os.path.join(run_dir, files[0])


def _scalar_series(rng: np.random.Generator, spec: LogSpec) -> np.ndarray:
    """Loss-like curves (decaying trend plus noise), one column per tag."""
    t = np.arange(spec.steps, dtype=np.float64)[:, None] / max(spec.steps, 1)
    decay = np.exp(-3.0 * t) * rng.uniform(0.5, 2.0, size=(1, spec.scalar_tags))
    noise = rng.normal(0.0, 0.02, size=(spec.steps, spec.scalar_tags))
    return (decay + noise).astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every count (default 1)")
    ap.add_argument("--out", default=None, help=f"cache directory (default {default_out_dir()})")
    ap.add_argument("--force", action="store_true", help="regenerate even if a cached log exists")
    ap.add_argument("--json", action="store_true", help="print the log's description as JSON")
    args = ap.parse_args(argv)
    info = ensure_log(args.scale, args.out, force=args.force)
    if args.json:
        print(json.dumps(info.to_json(), indent=2))
    else:
        s = info.spec
        print(f"{info.root}\n  {info.event_file}\n  {info.size_bytes / 1e6:.1f} MB: {s.steps:,} steps x "
              f"{s.scalar_tags} scalar tags = {s.scalars:,} scalars, {s.histograms} histograms, "
              f"{s.images} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
