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

import errno
import logging
import os
import time
from collections.abc import Sequence

from ...budget import one_line
from ...errors import BackendError, UsageError
from ...metadata import ArtifactRequest, RunMetadata
from ...values import Row
from ..base import Backend, RunSink, RunSpec
from . import owners, runops, txlog
from .convert import STEP_KEY, convert_row
from .mode import has_api_key, resolve_mode

log = logging.getLogger("tracelet.wandb")

_ACK_INTERVAL = 1.0

LEAN_SETTINGS = dict(
    x_disable_stats=True,
    console="off",
    x_save_requirements=False,
    disable_git=True,
    x_disable_machine_info=True,
)


# errors of the disk, not of one file's name or content: the batch fails and is retried
_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


class WandbRunSink(RunSink):
    def __init__(self, backend: WandbBackend, spec: RunSpec) -> None:
        import wandb

        self._backend = backend
        self.spec = spec
        wandb_dir = backend.wandb_dir
        earlier = txlog.find_run_files(wandb_dir, spec.run_id)
        settings = wandb.Settings(**LEAN_SETTINGS, init_timeout=backend.init_timeout)
        md = spec.metadata or RunMetadata()
        self._group, self._job_type = md.group, md.job_type
        self._meta_config_keys = set(md.config)  # run metadata wins over hparams found in events
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
                config=dict(md.config) or None,
                tags=list(md.tags) or None,
                notes=md.notes,
                group=md.group,
                job_type=md.job_type,
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
        self._warn_once = runops.WarnOnce()
        if backend.mode == "online":
            self._durable = int(self.run.starting_step) - 1
        else:
            self._durable = max((txlog.max_history_step(p) for p in earlier), default=-1)
        self._acked = self._durable
        self._last_written = self._durable
        self._earlier = earlier
        backend._opened(self)

    @property
    def location(self) -> str:
        if self._backend.mode == "online":
            return str(self.run.url or "")
        return str(self.run.settings.sync_dir or "")

    def durable_seq(self) -> int:
        return self._durable

    def write(self, rows: Sequence[Row]) -> None:
        warn = self._warn_convert
        for row in rows:
            if row.seq <= self._last_written:
                continue  # W&B already has it (or would drop it as an old step)
            converted = convert_row(row, warn)
            if converted.config:
                self._update_config(converted.config, row)
            for name, content in converted.files:
                self._save_file(name, content)
            data = converted.history
            data[STEP_KEY] = row.step
            data["_timestamp"] = row.wall_time
            try:
                self.run.log(data, step=row.seq, commit=True)
            except Exception as exc:  # noqa: BLE001
                raise BackendError(f"W&B refused a row of {self.spec.name}: {exc}") from exc
            self._last_written = row.seq

    def _update_config(self, config: dict, row: Row) -> None:
        """Hyperparameters found in events; ones W&B refuses are reported, the row still goes."""
        config = {k: v for k, v in config.items() if k not in self._meta_config_keys}
        if not config:
            return
        try:
            self.run.config.update(config, allow_val_change=True)
        except Exception as exc:  # noqa: BLE001 - a value of the log, not W&B, is at fault
            self._warn_once("config", f"{self.spec.name}: hyperparameters at step {row.step} not stored:"
                                      f" {one_line(exc)}")

    def _warn_convert(self, key: str, msg: str) -> None:
        self._warn_once(key, f"{self.spec.name}: {msg}")

    def checkpoint(self, seq: int, positions: dict[str, int]) -> None:
        # a summary key: written after the rows in W&B's log, hidden (leading "_") in W&B's UI
        try:
            self.run.summary.update({txlog.CHECKPOINT_KEY: {"v": 1, "seq": seq, "files": positions}})
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"W&B refused a checkpoint of {self.spec.name}: {exc}") from exc

    def recovered_checkpoint(self) -> dict | None:
        if self._durable < 0:
            return None
        if self._backend.mode == "online":
            cp = self.run.summary.get(txlog.CHECKPOINT_KEY)
            try:
                cp = dict(cp) if cp is not None else None
                if cp is not None:
                    cp["files"] = dict(cp.get("files") or {})
            except (TypeError, ValueError):
                return None
            return cp if cp and isinstance(cp.get("seq"), int) and cp["seq"] <= self._durable else None
        return txlog.last_checkpoint(self._earlier, self._durable)

    def update_metadata(self, metadata: RunMetadata) -> None:
        self._meta_config_keys |= set(metadata.config)
        try:
            if metadata.config:
                self.run.config.update(metadata.config, allow_val_change=True)
            if metadata.tags and tuple(self.run.tags or ()) != metadata.tags:
                self.run.tags = metadata.tags
            if metadata.notes is not None and self.run.notes != metadata.notes:
                self.run.notes = metadata.notes
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"W&B refused metadata of {self.spec.name}: {exc}") from exc
        if (metadata.group, metadata.job_type) != (self._group, self._job_type):
            self._warn_once("group", f"{self.spec.name}: group/job_type cannot change on a live W&B run;"
                                     " they apply the next time the run is opened")

    def log_artifact(self, request: ArtifactRequest) -> None:
        try:
            runops.log_artifact(self.run, request)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"W&B refused artifact {request.name!r} of {self.spec.name}: {exc}") from exc

    def _save_file(self, name: str, content: bytes) -> None:
        """A run file; one that cannot be written is reported and skipped, unless the disk is at fault."""
        try:
            saved = runops.save_file(self.run, name, content)
        except OSError as exc:
            if exc.errno in _DISK_ERRORS:
                raise BackendError(f"cannot write run file {name!r} of {self.spec.name}: {exc}") from exc
            saved, why = False, exc.strerror or str(exc)
        except Exception as exc:  # noqa: BLE001 - W&B refusing one file must not fail the batch
            saved, why = False, one_line(exc)
        else:
            why = "it escapes the run directory"
        if not saved:
            self._warn_once("file:" + name, f"{self.spec.name}: run file {name!r} not stored: {why}")

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


_BAD_NAME_CHARS = set('/\\#?%:') | {chr(c) for c in range(32)}


def _checked_name(what: str, value: str | None) -> str | None:
    """W&B rejects these characters in project and entity names; say so before any run starts."""
    if value is None:
        return None
    if not value.strip() or len(value) > 128 or _BAD_NAME_CHARS & set(value):
        raise UsageError(f"invalid W&B {what} name {value!r} (no / \\ # ? % : or control characters,"
                         " at most 128 characters)")
    return value


class WandbBackend(Backend):
    name = "wandb"

    def __init__(self, *, project: str | None = None, entity: str | None = None,
                 mode: str | None = None, wandb_dir: str | None = None,
                 init_timeout: float | None = None) -> None:
        self.mode = resolve_mode(mode)
        if self.mode == "online" and not has_api_key():
            raise UsageError("W&B online mode needs an API key: set WANDB_API_KEY (or WANDB_API_KEY_FILE),"
                             " run `wandb login`, or use --mode offline")
        # an unreachable server makes wandb.init block this long before it fails (wandb: 90 s);
        # the engine retries with backoff, so fail fast and keep the daemon responsive
        self.init_timeout = float(init_timeout or os.environ.get("TRACELET_WANDB_INIT_TIMEOUT") or 15)
        self.project = _checked_name("project", project or os.environ.get("WANDB_PROJECT") or "tracelet")
        self.entity = _checked_name("entity", entity or os.environ.get("WANDB_ENTITY") or None)
        self.wandb_dir = wandb_dir or os.environ.get("WANDB_DIR") or os.getcwd()
        self._open: set[WandbRunSink] = set()
        self._locations: dict[str, str] = {}

    def open_run(self, spec: RunSpec) -> RunSink:
        owners.claim(self.wandb_dir, spec.run_id, os.environ.get(owners.OWNER_ENV, ""))
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
