"""The W&B backend: one W&B run per run directory, rows replayed with their sequence numbers.

Exactly-once rests on two choices:

* ``Row.seq`` is logged as W&B's own ``_step`` (``run.log(..., step=seq)``). It only grows,
  across restarts too, so a resumed run continues where the last one stopped and wandb itself
  drops anything at or below a step it already has. The TensorBoard step is ``global_step``,
  made the x-axis with ``define_metric``, so TensorBoard steps may repeat or go backwards.
* What W&B holds is read back from its own transaction log (``run-<id>.wandb``), not assumed
  from ``run.log`` returning (wandb-core can die with rows still in memory).
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Sequence

from ...errors import BackendError
from ...values import Histogram, Image, ImageBatch, Row, Value
from ..base import Backend, RunSink, RunSpec
from . import txlog
from .mode import resolve_mode

log = logging.getLogger("tracelet.wandb")

MAX_HIST_BINS = 512
STEP_KEY = "global_step"
RESERVED = frozenset({STEP_KEY, "_step", "_runtime", "_timestamp"})
_ACK_INTERVAL = 1.0

LEAN_SETTINGS = dict(
    x_disable_stats=True,
    console="off",
    x_save_requirements=False,
    disable_git=True,
    x_disable_machine_info=True,
)


def safe_key(key: str) -> str:
    """W&B's own history keys are renamed ``tb/<key>`` so a TensorBoard tag cannot shadow them."""
    return f"tb/{key}" if key in RESERVED else key


def _finite_edges(edges: Sequence[float]) -> list[float]:
    out = []
    for x in edges:
        out.append(x if math.isfinite(x) else (math.copysign(1.7976931348623157e308, x) if not math.isnan(x) else 0.0))
    return out


def to_wandb(value: Value):
    """A typed value as the object ``run.log`` takes."""
    import wandb

    if isinstance(value, float):
        return value
    if isinstance(value, Histogram):
        h = value.rebinned(MAX_HIST_BINS)
        return wandb.Histogram(np_histogram=(list(h.counts), _finite_edges(h.edges)))
    if isinstance(value, Image):
        return wandb.Image(_pil(value))
    if isinstance(value, ImageBatch):
        return [wandb.Image(_pil(i)) for i in value.images]
    raise TypeError(f"no W&B form for {type(value).__name__}")


def _pil(img: Image):
    from PIL import Image as PILImage

    pic = PILImage.open(io.BytesIO(img.encoded))
    pic.load()
    return pic


class WandbRunSink(RunSink):
    def __init__(self, backend: WandbBackend, spec: RunSpec) -> None:
        import wandb

        self._backend = backend
        self.spec = spec
        wandb_dir = backend.wandb_dir
        earlier = txlog.find_run_files(wandb_dir, spec.run_id)
        settings = wandb.Settings(**LEAN_SETTINGS)
        try:
            self.run = wandb.init(
                id=spec.run_id,
                name=spec.name,
                project=spec.project or backend.project,
                entity=spec.entity or backend.entity,
                dir=wandb_dir,
                mode=backend.mode,
                resume="allow",
                reinit="create_new",
                settings=settings,
                config=dict(spec.extra.get("config", {}) or {}) or None,
            )
        except Exception as exc:  # noqa: BLE001 - wandb raises many kinds; the engine retries
            raise BackendError(f"W&B could not open run {spec.run_id}: {exc}") from exc
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)
        self._txlog_path = str(self.run.settings.sync_file or "")
        self._tail = txlog.TxlogReader(self._txlog_path) if self._txlog_path else None
        self._acked = -1
        self._exited = False
        self._last_poll = 0.0
        self._warned: set[str] = set()
        if backend.mode == "online":
            self._durable = int(self.run.starting_step) - 1
        else:
            self._durable = max((txlog.max_history_step(p) for p in earlier), default=-1)
        self._acked = self._durable
        self._last_written = self._durable
        backend._opened(self)

    @property
    def location(self) -> str:
        if self._backend.mode == "online":
            return str(self.run.url or "")
        return str(self.run.settings.sync_dir or "")

    def durable_seq(self) -> int:
        return self._durable

    def write(self, rows: Sequence[Row]) -> None:
        for row in rows:
            if row.seq <= self._last_written:
                continue  # W&B already has it (or would drop it as an old step)
            data = {}
            for key, value in row.values.items():
                try:
                    data[safe_key(key)] = to_wandb(value)
                except Exception as exc:  # noqa: BLE001 - one bad value must not sink the row
                    self._warn_once(key, f"{self.spec.name}: value of {key!r} at step {row.step} not sent: {exc}")
                if key in RESERVED:
                    self._warn_once("reserved:" + key, f"{self.spec.name}: tag {key!r} is a W&B name; logged as 'tb/{key}'")
            data[STEP_KEY] = row.step
            data["_timestamp"] = row.wall_time
            try:
                self.run.log(data, step=row.seq, commit=True)
            except Exception as exc:  # noqa: BLE001
                raise BackendError(f"W&B refused a row of {self.spec.name}: {exc}") from exc
            self._last_written = row.seq

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)

    def _poll_txlog(self) -> None:
        if self._tail is None or not os.path.exists(self._txlog_path):
            return
        try:
            for rec in self._tail.read_new():
                kind = rec.WhichOneof("record_type")
                if kind == "history":
                    self._acked = max(self._acked, txlog._history_step(rec))
                elif kind == "exit":
                    self._exited = True
        except (OSError, txlog.TxlogError) as exc:
            self._warn_once("txlog", f"cannot read {self._txlog_path}: {exc}")

    def acknowledged(self) -> int:
        now = time.monotonic()
        if now - self._last_poll >= _ACK_INTERVAL:
            self._last_poll = now
            self._poll_txlog()
        return self._acked

    def finish(self, timeout: float) -> int:
        try:
            self.run.finish()
        except Exception as exc:  # noqa: BLE001
            log.error("%s: W&B finish failed: %s", self.spec.name, exc)
        deadline = time.monotonic() + timeout
        # the .wandb tail (with the exit record) lands shortly after finish() returns
        while True:
            self._poll_txlog()
            if self._exited or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if not self._exited:
            log.warning("%s: W&B log %s has no exit record after %.0fs", self.spec.name, self._txlog_path, timeout)
        self._backend._closed(self)
        return self._acked


class WandbBackend(Backend):
    name = "wandb"

    def __init__(self, *, project: str | None = None, entity: str | None = None,
                 mode: str | None = None, wandb_dir: str | None = None) -> None:
        self.mode = resolve_mode(mode)
        self.project = project or os.environ.get("WANDB_PROJECT") or "tracelet"
        self.entity = entity or os.environ.get("WANDB_ENTITY") or None
        self.wandb_dir = wandb_dir or os.environ.get("WANDB_DIR") or os.getcwd()
        self._open: set[WandbRunSink] = set()
        self._locations: dict[str, str] = {}

    def open_run(self, spec: RunSpec) -> RunSink:
        return WandbRunSink(self, spec)

    def _opened(self, sink: WandbRunSink) -> None:
        self._open.add(sink)
        self._locations[sink.spec.run_id] = sink.location

    def _closed(self, sink: WandbRunSink) -> None:
        self._open.discard(sink)

    def summary(self) -> list[str]:
        if not self._locations:
            return []
        if self.mode == "online":
            return [f"W&B run {rid}: {loc}" for rid, loc in sorted(self._locations.items())]
        if self.mode == "disabled":
            return ["W&B mode is 'disabled': nothing was stored"]
        root = os.path.join(self.wandb_dir, "wandb")
        return [
            f"offline W&B runs are in {root} ({len(self._locations)} run(s) this session)",
            f"upload them with: wandb sync {os.path.join(root, 'offline-run-*')}",
        ]

    def close(self) -> None:
        for sink in list(self._open):
            sink.finish(timeout=30)
