"""Typed values → what the W&B SDK takes. Pure except for building wandb media objects.

A row splits three ways: history values (``run.log``), run config updates (hyperparameters) and
files to attach to the run. Adding a type means one branch in ``to_wandb`` (or a new ``Value``
kind routed to config/files in ``convert_row``); the sink never changes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ...values import Histogram, Image, ImageBatch, Row, Value

MAX_HIST_BINS = 512
STEP_KEY = "global_step"
RESERVED = frozenset({STEP_KEY, "_step", "_runtime", "_timestamp"})
_DBL_MAX = 1.7976931348623157e308


@dataclass
class Converted:
    """One row, ready for the SDK."""

    history: dict[str, object] = field(default_factory=dict)
    config: dict[str, object] = field(default_factory=dict)
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (name under files/, content)


def safe_key(key: str) -> str:
    """W&B's own history keys are renamed ``tb/<key>`` so a TensorBoard tag cannot shadow them."""
    return f"tb/{key}" if key in RESERVED else key


def _finite(x: float) -> float:
    if math.isnan(x):
        return 0.0
    return x if math.isfinite(x) else math.copysign(_DBL_MAX, x)


def _pil(img: Image):
    from PIL import Image as PILImage

    pic = PILImage.open(io.BytesIO(img.encoded))
    pic.load()
    return pic


def to_wandb(value: Value):
    """A typed history value as the object ``run.log`` takes."""
    import wandb

    if isinstance(value, float):
        return value
    if isinstance(value, Histogram):
        h = value.rebinned(MAX_HIST_BINS)
        return wandb.Histogram(np_histogram=(list(h.counts), [_finite(e) for e in h.edges]))
    if isinstance(value, Image):
        return wandb.Image(_pil(value))
    if isinstance(value, ImageBatch):
        return [wandb.Image(_pil(i)) for i in value.images]
    raise TypeError(f"no W&B form for {type(value).__name__}")


def convert_row(row: Row, warn: Callable[[str, str], None]) -> Converted:
    """Split and convert one row; a value that cannot be converted is warned about and left out.

    `warn(key, message)` is called at most once per distinct key by the caller's own bookkeeping.
    """
    out = Converted()
    for key, value in row.values.items():
        if key in RESERVED:
            warn("reserved:" + key, f"tag {key!r} is a W&B name; logged as 'tb/{key}'")
        try:
            out.history[safe_key(key)] = to_wandb(value)
        except Exception as exc:  # noqa: BLE001 - one bad value must not sink the row
            warn(key, f"value of {key!r} at step {row.step} not sent: {exc}")
    return out


def finite_edges(edges: Sequence[float]) -> list[float]:
    return [_finite(e) for e in edges]
