"""Logging into a W&B run that already exists in this process (``wandb.run``, a sweep trial).

Used by the in-process ``tracelet`` shim when the training code already has a W&B run: inside
``wandb.agent`` (a sweep) or after its own ``wandb.init``. tracelet then adds its rows, config and
artifacts to *that* run instead of opening a second one:

* the run is never initialised or finished here: it belongs to whoever created it;
* rows are logged **without** ``step=``: the user's own ``wandb.log`` calls share W&B's ``_step``
  counter, so tracelet cannot number ``_step`` itself. The TensorBoard step is still logged as
  ``global_step`` and each key tracelet logs is given it as x-axis (``define_metric``), never
  ``"*"``, so the user's own keys keep their axis;
* run metadata only adds: config keys are updated (sweep-locked values stay as the sweep set them,
  W&B ignores those updates), tags are merged, notes set if given; name, group and job_type stay
  the user's.

Weaker exactly-once guarantee (documented in docs/python-api.md): without our own ``_step``
numbering there is nothing in W&B's transaction log to confirm rows by, so a row counts as
acknowledged when ``run.log`` returns. Normal operation logs every value once; but rows that
wandb-core still buffers when the process is killed are lost, and rows journaled but not
acknowledged before a crash are replayed into whatever run is active on the next start (which
may be a different W&B run). A run that tracelet owns (the normal in-process and sidecar modes)
keeps the full guarantee.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ...errors import BackendError
from ...metadata import ArtifactRequest, RunMetadata
from ...values import Row
from ..base import Backend, RunSink, RunSpec
from . import runops
from .convert import STEP_KEY, convert_row

log = logging.getLogger("tracelet.wandb")


class AttachedRunSink(RunSink):
    """A RunSink over an existing ``wandb`` Run: never ``init``, never ``finish``."""

    def __init__(self, backend: AttachedBackend, spec: RunSpec) -> None:
        self._backend = backend
        self.spec = spec
        self.run = backend.run
        self._written = -1
        self._axes: set[str] = set()
        self._warn_once = runops.WarnOnce()
        try:
            self.run.define_metric(STEP_KEY)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"the active W&B run refused define_metric: {exc}") from exc
        if spec.metadata is not None:
            self.update_metadata(spec.metadata)

    @property
    def location(self) -> str:
        try:
            url = self.run.url
        except Exception:  # noqa: BLE001 - offline runs have no URL
            url = None
        return str(url or self.run.settings.sync_dir or "")

    def durable_seq(self) -> int:
        return -1  # nothing in the user's run says which of our rows it holds

    def write(self, rows: Sequence[Row]) -> None:
        for row in rows:
            if row.seq <= self._written:
                continue
            converted = convert_row(row, lambda key, msg: self._warn_once(key, f"{self.spec.name}: {msg}"))
            try:
                if converted.config:
                    self.run.config.update(converted.config, allow_val_change=True)
                for name, content in converted.files:
                    self._save_file(name, content)
                data = converted.history
                for key in data:
                    if key not in self._axes:
                        self.run.define_metric(key, step_metric=STEP_KEY)
                        self._axes.add(key)
                data[STEP_KEY] = row.step
                self.run.log(data, commit=True)
            except Exception as exc:  # noqa: BLE001
                raise BackendError(f"the active W&B run refused a row of {self.spec.name}: {exc}") from exc
            self._written = row.seq

    def acknowledged(self) -> int:
        return self._written  # see the module docstring: the weaker guarantee of an attached run

    def finish(self, timeout: float) -> int:
        self._backend._closed(self)
        return self._written  # the run stays open: it is not ours to finish

    def update_metadata(self, metadata: RunMetadata) -> None:
        try:
            if metadata.config:
                self.run.config.update(metadata.config, allow_val_change=True)
            if metadata.tags:
                merged = tuple(dict.fromkeys((*tuple(self.run.tags or ()), *metadata.tags)))
                if merged != tuple(self.run.tags or ()):
                    self.run.tags = merged
            if metadata.notes and self.run.notes != metadata.notes:
                self.run.notes = metadata.notes
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"the active W&B run refused metadata of {self.spec.name}: {exc}") from exc

    def log_artifact(self, request: ArtifactRequest) -> None:
        try:
            runops.log_artifact(self.run, request)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"the active W&B run refused artifact {request.name!r}: {exc}") from exc

    def _save_file(self, name: str, content: bytes) -> None:
        if not runops.save_file(self.run, name, content):
            self._warn_once("file:" + name, f"{self.spec.name}: refusing file name {name!r}")


class AttachedBackend(Backend):
    """Every run the engine opens goes into the one active W&B run `run`."""

    name = "wandb"

    def __init__(self, run) -> None:  # noqa: ANN001 - a wandb Run
        self.run = run
        self.mode = "attached"
        self._open: set[AttachedRunSink] = set()

    def open_run(self, spec: RunSpec) -> RunSink:
        sink = AttachedRunSink(self, spec)
        self._open.add(sink)
        return sink

    def _closed(self, sink: AttachedRunSink) -> None:
        self._open.discard(sink)

    def summary(self) -> list[str]:
        return [f"logged into the active W&B run {self.run.id}"]

    def close(self) -> None:
        self._open.clear()
