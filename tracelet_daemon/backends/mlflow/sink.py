"""The MLflow backend: one MLflow run per run directory, exactly once from what the server holds.

How the exactly-once protocol maps onto MLflow (docs/mlflow.md has the long version):

* **Identity.** MLflow chooses run ids, so a run is found again by its tag ``tracelet.run_id``
  (``search_runs``). Find-or-create is not atomic in MLflow (4 threads made 4 runs), so one
  owner creates: the backend, under a lock, in the one daemon process that replays the run.
* **Numbering and acknowledgement.** Every batch of rows ends with one request carrying the
  metric ``tracelet.seq`` at step = value = the last row's sequence number (and the checkpoint
  tag). It is sent only after every earlier request of the run succeeded, and one ``log_batch``
  request is one transaction, so the server holding ``tracelet.seq`` = N means it holds all rows
  up to N. ``durable_seq()`` is read back from the server at open (the newest ``tracelet.seq``
  of ``runs/get``), so recovery starts from what MLflow really holds, not from what was sent.
* **Replays only fill gaps.** Timestamps are the rows' wall times in integer ms and artifact
  names derive from the row, so re-sending rows the server partly holds adds nothing: its SQL
  store drops an identical (key, value, step, timestamp) point, and a file logged again at
  the same path replaces itself.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Sequence

from ...errors import BackendError, UsageError
from ...metadata import ArtifactRequest, RunMetadata
from ...values import Row
from ..base import Backend, RunSink, RunSpec
from .batching import Request, pack
from .convert import LOGGED_IMAGES_TAG, Converted, convert_rows, millis, path_of
from .keys import KeyMap, image_key
from .params import MAX_TAG_VALUE, ParamLedger, clip, flatten
from .pipeline import Pipeline
from .store import Target, resolve, run_location, ui_command

log = logging.getLogger("tracelet.mlflow")

MARKER = "tracelet.seq"  # metric: step = value = highest row sequence number committed
CHECKPOINT_TAG = "tracelet.checkpoint"  # tag: {"v": 1, "seq": N, "files": {relative path: offset}}
RUN_ID_TAG = "tracelet.run_id"
DIRECTORY_TAG = "tracelet.directory"
GROUP_TAG, JOB_TYPE_TAG = "tracelet.group", "tracelet.job_type"
LABELS_TAG = "tracelet.tags"  # JSON list of the run's tags (labels) tracelet set: removed ones are deleted
RUN_NAME_TAG, NOTE_TAG = "mlflow.runName", "mlflow.note.content"
_ROWS_PER_SLICE = 512  # rows converted at a time: memory stays flat whatever the batch size


def short(exc: BaseException) -> str:
    """The first line of an MLflow or requests error, bounded (they quote whole URLs and retries)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


class WarnOnce:
    """Each distinct problem of a run is logged once, however often its cause repeats."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._seen: set[str] = set()

    def __call__(self, key: str, msg: str) -> None:
        if key not in self._seen:
            self._seen.add(key)
            log.warning("%s: %s", self._prefix, msg)


class MlflowRunSink(RunSink):
    def __init__(self, backend: MlflowBackend, spec: RunSpec) -> None:
        self._backend = backend
        self.spec = spec
        self._client = backend.client()
        self._warn = WarnOnce(spec.name)
        self._keys = KeyMap(self._warn, {MARKER: "tb/" + MARKER})
        md = spec.metadata or RunMetadata()
        try:
            self.experiment_id = backend.experiment_id(spec.project or backend.project)
            run = backend.find_or_create(self.experiment_id, spec)
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow and requests raise many kinds
            raise BackendError(f"MLflow could not open run {spec.run_id} at {backend.target.display}:"
                               f" {short(exc)}") from exc
        self.run_id = run.info.run_id
        data = run.data
        self._durable = int(data.metrics[MARKER]) if MARKER in data.metrics else -1
        self._checkpoint = _parse_checkpoint(data.tags.get(CHECKPOINT_TAG), self._durable)
        self._ledger = ParamLedger(data.params, self._warn)
        self._meta_keys: set[str] = set()  # run metadata wins over hparams found in events
        self._labels: set[str] = _labels_of(data.tags.get(LABELS_TAG))
        self._acked = self._last_written = self._durable
        self._commit: tuple[int, int] | None = None  # (seq, timestamp ms) of a marker not yet sent
        self._commit_tags: list[tuple[str, str]] = []
        self._tail: Request | None = None  # the last request of a write: sent with the marker
        self._images_tagged = data.tags.get(LOGGED_IMAGES_TAG) is not None
        self._pipe = Pipeline(backend.depth)
        self._tmp = tempfile.mkdtemp(prefix="tracelet-mlflow-")
        self._closed = False
        try:
            self._send_now(*self._metadata_entities(md, run.info.run_name))
        except Exception as exc:  # noqa: BLE001
            self._release()
            raise BackendError(f"MLflow refused metadata of {spec.name} at {backend.target.display}:"
                               f" {short(exc)}") from exc
        backend._opened(self)

    # -- RunSink ---------------------------------------------------------------------------------
    @property
    def location(self) -> str:
        return run_location(self._backend.target, self.experiment_id, self.run_id)

    def durable_seq(self) -> int:
        return self._durable

    def recovered_checkpoint(self) -> dict | None:
        return self._checkpoint

    def write(self, rows: Sequence[Row]) -> None:
        rows = [r for r in rows if r.seq > self._last_written]
        if not rows:
            return
        try:
            for i in range(0, len(rows), _ROWS_PER_SLICE):
                self._write_slice(rows[i:i + _ROWS_PER_SLICE])
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"MLflow refused rows of {self.spec.name}: {short(exc)}") from exc
        last = rows[-1]
        self._last_written = last.seq
        self._commit = (last.seq, millis(last.wall_time))
        self._commit_tags = []

    def checkpoint(self, seq: int, positions: dict[str, int]) -> None:
        if self._commit is not None and self._commit[0] == seq:
            text = json.dumps({"v": 1, "seq": seq, "files": positions}, sort_keys=True)
            if len(text) <= MAX_TAG_VALUE:
                self._commit_tags = [(CHECKPOINT_TAG, text)]
            else:
                self._warn("checkpoint", f"file positions of {len(positions)} files do not fit a tag"
                           f" ({len(text)} > {MAX_TAG_VALUE} characters); no checkpoint is kept in MLflow")
        self._flush("a checkpoint")

    def acknowledged(self) -> int:
        # called from the engine's loop outside its error handling: never raises; a failure
        # here poisons the pipeline and the next write() raises it
        if self._commit is not None:
            try:
                self._flush("rows")
            except BackendError as exc:
                self._warn("ack:" + str(exc), str(exc))
        return self._acked

    def finish(self, timeout: float) -> int:
        if self._closed:
            return self._acked
        if self._pipe.failed is None:
            try:
                self._flush("the last rows")
                self._client.set_terminated(self.run_id, "FINISHED")
            except Exception as exc:  # noqa: BLE001 - the engine replays what was not confirmed
                log.error("%s: MLflow finish failed: %s", self.spec.name, short(exc))
        self._release()
        return self._acked

    def update_metadata(self, metadata: RunMetadata) -> None:
        try:
            self._send_now(*self._metadata_entities(metadata, None))
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"MLflow refused metadata of {self.spec.name}: {short(exc)}") from exc

    def log_artifact(self, request: ArtifactRequest) -> None:
        try:
            for src, target in request.files:  # as mlflow.log_artifact(path, artifact_path) places them
                self._upload(target, src=src)
            manifest = {"name": request.name, "type": request.type, "description": request.description,
                        "metadata": request.metadata, "aliases": list(request.aliases),
                        "files": [t for _s, t in request.files]}
            self._upload(f"tracelet/artifacts/{path_of(request.id)}.json",
                         json.dumps(manifest, indent=1, sort_keys=True, default=str).encode())
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"MLflow refused artifact {request.name!r} of {self.spec.name}: {short(exc)}") from exc

    # -- sending -----------------------------------------------------------------------------------
    def _write_slice(self, rows: list[Row]) -> None:
        conv = convert_rows(rows, self._keys, lambda k: image_key(self._keys(k)), self._warn, Converted())
        params, tags = self._ledger.plan({k: v for k, v in flatten(conv.params).items() if k not in self._meta_keys},
                                         self._keys)
        tag_items = list(tags.items())
        if conv.images and not self._images_tagged:
            tag_items.append((LOGGED_IMAGES_TAG, "True"))
            self._images_tagged = True
        for name, content in conv.files:  # before the metrics: the marker waits for them all the same
            self._pipe.submit(lambda n=name, c=content: self._upload(n, c))
        for req in pack(conv.metrics, params.items(), tag_items):
            if self._tail is not None:
                tail = self._tail
                self._pipe.submit(lambda r=tail: self._send(r))
            self._tail = req

    def _flush(self, what: str) -> None:
        """Send the held-back last request with the marker, once all before it succeeded."""
        if self._commit is None:
            return
        seq, ts = self._commit
        try:
            self._pipe.barrier()
            tail, self._tail = self._tail or Request(), None
            marker = (MARKER, float(seq), ts, seq)
            if not (tail.fits_metric(MARKER) and all(tail.fits_pair(k, v) for k, v in self._commit_tags)):
                self._send(tail)
                tail = Request()
            tail.metrics.append(marker)
            tail.tags.extend(self._commit_tags)
            self._send(tail)
        except Exception as exc:  # noqa: BLE001
            self._pipe.poison(exc)  # the sink stays failed until the engine opens the run again
            raise BackendError(f"MLflow did not confirm {what} of {self.spec.name}"
                               f" (rows up to #{seq}): {short(exc)}") from exc
        self._commit, self._commit_tags = None, []
        self._acked = max(self._acked, seq)

    def _send_now(self, params: Iterable[tuple[str, str]], tags: Iterable[tuple[str, str]]) -> None:
        for req in pack((), params, tags):
            self._send(req)

    def _send(self, req: Request) -> None:
        """One log_batch call; a request MLflow refuses as invalid is halved until the one bad
        entity is found, which is reported and left out (a permanent refusal must not stall the run)."""
        from mlflow.entities import Metric, Param, RunTag

        if not len(req):
            return
        try:
            self._client.log_batch(
                self.run_id,
                metrics=[Metric(k, v, ts, step) for k, v, ts, step in req.metrics],
                params=[Param(k, v) for k, v in req.params],
                tags=[RunTag(k, v) for k, v in req.tags],
            )
        except Exception as exc:  # noqa: BLE001
            if error_code(exc) != "INVALID_PARAMETER_VALUE":
                raise
            if len(req) == 1:
                entity = (req.metrics or req.params or req.tags)[0]
                self._warn("refused:" + entity[0], f"MLflow refused {entity[0]!r}: {short(exc)}; left out")
                return
            for half in _halves(req):
                self._send(half)

    def _upload(self, artifact_path: str, content: bytes | None = None, src: str | None = None) -> None:
        """Log `content` (or the file `src`) as the artifact `artifact_path`, at exactly that name."""
        folder, name = os.path.split(artifact_path)
        tmp = tempfile.mkdtemp(dir=self._tmp)
        try:
            path = os.path.join(tmp, name)
            if src is None:
                with open(path, "wb") as f:
                    f.write(content or b"")
            else:
                try:
                    os.link(src, path)  # no copy of a large model file where a link will do
                except OSError:
                    shutil.copyfile(src, path)
            self._client.log_artifact(self.run_id, path, folder or None)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _metadata_entities(self, md: RunMetadata, current_name: str | None
                           ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(params, tags) for run metadata: config → params, the rest → tags."""
        self._meta_keys |= set(flatten(md.config))
        params, changed = self._ledger.plan(md.config, self._keys)
        tags = dict(changed)
        name = md.name or self.spec.name
        if name and name != current_name:
            tags[RUN_NAME_TAG] = name
        if md.notes is not None:
            tags[NOTE_TAG] = clip(md.notes, MAX_TAG_VALUE, "notes", NOTE_TAG, self._warn)
        for key, value in ((GROUP_TAG, md.group), (JOB_TYPE_TAG, md.job_type)):
            if value is not None:
                tags[key] = clip(value, MAX_TAG_VALUE, "tag", key, self._warn)
        labels = {self._keys(t) for t in md.tags}
        for label in sorted(labels):
            tags.setdefault(label, "")
        if labels != self._labels:
            tags[LABELS_TAG] = json.dumps(sorted(labels))
        for gone in sorted(self._labels - labels):
            try:
                self._client.delete_tag(self.run_id, gone)
            except Exception as exc:  # noqa: BLE001 - already gone, or not ours to delete
                log.debug("%s: tag %r not deleted: %s", self.spec.name, gone, short(exc))
        self._labels = labels
        return list(params.items()), list(tags.items())

    def _release(self) -> None:
        self._closed = True
        self._pipe.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._backend._closed(self)


def _halves(req: Request) -> list[Request]:
    entities = [("metrics", m) for m in req.metrics] + [("params", p) for p in req.params] + \
               [("tags", t) for t in req.tags]
    mid = len(entities) // 2
    out = []
    for part in (entities[:mid], entities[mid:]):
        r = Request()
        for kind, item in part:
            getattr(r, kind).append(item)
        out.append(r)
    return out


def _labels_of(text: str | None) -> set[str]:
    try:
        labels = json.loads(text) if text else []
    except ValueError:
        return set()
    return {t for t in labels if isinstance(t, str)} if isinstance(labels, list) else set()


def _parse_checkpoint(text: str | None, durable: int) -> dict | None:
    if not text or durable < 0:
        return None
    try:
        cp = json.loads(text)
    except ValueError:
        return None
    if not isinstance(cp, dict) or not isinstance(cp.get("seq"), int) or cp["seq"] > durable:
        return None
    files = cp.get("files")
    cp["files"] = dict(files) if isinstance(files, dict) else {}
    return cp


class MlflowBackend(Backend):
    name = "mlflow"

    def __init__(self, *, project: str | None = None, tracking_uri: str | None = None,
                 state_dir: str | None = None, in_flight: int | None = None, entity: str | None = None,
                 mode: str | None = None) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise UsageError("--backend mlflow needs MLflow: pip install 'tracelet[mlflow]'")
        self.target: Target = resolve(tracking_uri, state_dir)
        self.project = project or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "tracelet"
        if entity:
            log.warning("--entity/$WANDB_ENTITY is a W&B setting; MLflow has no entities (ignored)")
        if mode:
            log.info("W&B mode %r does not apply to MLflow (ignored)", mode)
        default_depth = 2 if self.target.remote else 1  # SQLite in-process: one writer is fastest
        self.depth = int(in_flight or os.environ.get("TRACELET_MLFLOW_IN_FLIGHT") or default_depth)
        self._client = None
        self._lock = threading.Lock()  # find-or-create has one owner (MLflow cannot make it atomic)
        self._experiments: dict[str, str] = {}
        self._open: set[MlflowRunSink] = set()
        self._locations: dict[str, str] = {}

    def client(self):  # noqa: ANN201 - an mlflow.MlflowClient
        with self._lock:
            if self._client is None:
                if self.target.embedded:
                    os.makedirs(self.target.artifact_root, exist_ok=True)
                from mlflow import MlflowClient

                self._client = MlflowClient(tracking_uri=self.target.uri)
            return self._client

    def experiment_id(self, name: str) -> str:
        client = self.client()
        with self._lock:
            if name in self._experiments:
                return self._experiments[name]
            exp = client.get_experiment_by_name(name)
            if exp is None:
                location = (os.path.join(self.target.artifact_root, path_of(name))
                            if self.target.embedded else None)
                try:
                    exp_id = client.create_experiment(name, artifact_location=location)
                except Exception as exc:  # noqa: BLE001 - created meanwhile by someone else?
                    exp = client.get_experiment_by_name(name)
                    if exp is None:
                        raise exc from None
                    exp_id = exp.experiment_id
            elif exp.lifecycle_stage != "active":
                raise BackendError(f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments"
                                   " restore) or choose another --project")
            else:
                exp_id = exp.experiment_id
            self._experiments[name] = exp_id
            return exp_id

    def find_or_create(self, experiment_id: str, spec: RunSpec):  # noqa: ANN201 - an mlflow Run
        """The run tagged with `spec.run_id`, created if there is none (under the one lock)."""
        from mlflow.entities import ViewType

        client = self.client()
        with self._lock:
            found = client.search_runs([experiment_id], f"tags.`{RUN_ID_TAG}` = '{spec.run_id}'",
                                       run_view_type=ViewType.ACTIVE_ONLY, max_results=10,
                                       order_by=["attributes.start_time ASC"])
            if found:
                if len(found) > 1:
                    log.warning("%s: %d MLflow runs carry %s=%s (created by concurrent writers); using"
                                " the oldest, %s", spec.name, len(found), RUN_ID_TAG, spec.run_id,
                                found[0].info.run_id)
                run = found[0]
                if run.info.status != "RUNNING":
                    client.update_run(run.info.run_id, status="RUNNING")
                return run
            return client.create_run(experiment_id, run_name=spec.name,
                                     tags={RUN_ID_TAG: spec.run_id, DIRECTORY_TAG: spec.directory})

    def open_run(self, spec: RunSpec) -> RunSink:
        return MlflowRunSink(self, spec)

    def _opened(self, sink: MlflowRunSink) -> None:
        self._open.add(sink)
        self._locations[sink.spec.name] = sink.location

    def _closed(self, sink: MlflowRunSink) -> None:
        self._open.discard(sink)

    def summary(self) -> list[str]:
        if not self._locations:
            return []
        if self.target.embedded:
            return [f"MLflow runs are in {self.target.uri} ({len(self._locations)} run(s) this session)",
                    f"look at them with: {ui_command(self.target)}"]
        return [f"MLflow run {name}: {loc}" for name, loc in sorted(self._locations.items())]

    def close(self) -> None:
        for sink in list(self._open):
            sink.finish(timeout=30)
