"""The loop that ties discovery, the reader, the decoder, the run mapper, the state store and a
backend together.

Order of operations for every batch of a run (the exactly-once protocol):

1. read whole records from each grown file of the run, bounded per batch;
2. decode them and group values into rows numbered ``next_seq...``;
3. journal "rows a..b come from these byte ranges" in the state store (fsynced);
4. hand the rows to the backend;
5. when the backend confirms it holds rows up to N, fold batches up to N into file offsets.

After a crash, opening a run asks the backend how far it really got and replays the journaled
ranges past that point, skipping rows the backend already has. Nothing is acknowledged on the
strength of a call returning.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from .status import SnapshotWriter
from .backends.base import Backend, RunSink, RunSpec
from .errors import BackendError, OversizeRecordError, ReaderError, RewrittenError, StateError
from .budget import short_tag
from .events import UndecodableEvent, decode_event
from .limits import Limits
from .metadata import (MetadataError, RunMetadata, artifact_ids, display_text, fingerprint, has_metadata,
                       load_artifact, load_run_metadata, staged, uploader_of)
from .records import as_handle, read_batch
from .runs import RunRef, group_rows, key_prefix, locate, make_run_id, run_ref, shard_of
from .sources import FileStat, Source, open_source
from .state import FileRecord, RunRecord, StateStore
from .values import Event

log = logging.getLogger("tracelet.engine")


@dataclass
class Options:
    max_batch_bytes: int = 8 << 20
    finish_timeout: float = 30.0  # wait for the backend to confirm the tail of a run
    rescan_interval: float = 10.0  # full rescans: the authority on which files exist (inotify is faster)
    ack_interval: float = 1.0
    use_inotify: bool = True
    retry_max: float = 60.0  # cap of the exponential backoff after a backend failure
    forget_after: float = 600.0  # a file or run directory gone this long leaves the state
    max_open_runs: int = 64  # watch: idle runs beyond this are finished, resumed on new data
    status_interval: float = 5.0  # seconds between status.json snapshots (the heartbeat) in watch
    only_runs: frozenset[str] | None = None  # run keys this engine may touch (parallel upload)
    # the tracelet shim (issue 4): who this engine is for run.json's "uploader" (runs naming another
    # uploader are skipped), whether it writes status.json (a sidecar's status is also how the shim
    # detects it; the in-process engine must not overwrite it) and whether watch() reads every run
    # to the end of its files before finishing at stop
    uploader: str = "sidecar"
    write_status: bool = True
    drain_on_stop: bool = False
    single_run: bool = False  # the root is one run directory; deeper directories are key prefixes
    limits: Limits = field(default_factory=Limits)  # what one hostile record or file may cost
    follow_symlinks: bool = False  # follow symlinked run directories and event files (opt-in)
    storage_options: dict | None = None  # object-store roots: fsspec options (may hold secrets)
    shard: tuple[int, int] | None = None  # (K, N): only runs whose stable hash is K modulo N
    idle_after: float = 300.0  # object stores: a run prefix unchanged this long is listed less often,
    idle_interval: float = 60.0  # down to once per this many seconds


@dataclass
class Report:
    runs: int = 0
    rows: int = 0
    events: int = 0
    bytes_read: int = 0
    corrupt_records: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by kind, for metrics
    quarantined: list[str] = field(default_factory=list)
    pending_tails: list[str] = field(default_factory=list)
    failed_runs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed_runs

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class _Cursor:
    """A file being followed: the read position runs ahead of the acknowledged offset."""

    __slots__ = ("path", "record", "offset", "stuck_size", "warned", "mtime", "verify_head", "gone_since",
                 "window")

    def __init__(self, record: FileRecord) -> None:
        self.path = record.path
        self.record = record
        self.offset = record.acked_offset
        self.stuck_size = -1  # size at which the tail was incomplete; no retry until it grows
        self.warned = False
        self.mtime = 0.0
        self.verify_head = record.head >= 0  # known from a previous life: check it is the same file
        self.gone_since = 0.0
        self.window: tuple[int, int] | None = None  # (offset, CRC-32 of the bytes before it)

    @property
    def prefix(self) -> str:
        return self.record.prefix


class _Worker:
    """One run: its files, its open sink (if any) and its sequence counter."""

    def __init__(self, ref: RunRef) -> None:
        self.ref = ref
        self.cursors: dict[str, _Cursor] = {}
        self.sink: RunSink | None = None
        self.record: RunRecord | None = None
        self.next_seq = 0
        self.reported: set[str] = set()
        self.retry_at = 0.0
        self.failures = 0
        self.journal_pending = False
        self.unfolded = 0  # journaled batches not yet folded into offsets
        self.last_event_time = 0.0  # wall time of the newest row sent
        self.last_error = ""
        self.last_active = 0.0  # monotonic time rows were last sent (for --max-open-runs)
        self.meta_fp = ""  # fingerprint of the metadata last applied (persisted)
        self.applied_artifacts: set[str] = set()
        self.writer_finished = False  # the writer's run.json says it is done

    def has_data(self, source: Source) -> bool:
        if self.journal_pending:
            return True
        for c in self.cursors.values():
            if c.record.status != "ok":
                continue
            st = source.stat(c.path)
            if st is None:
                continue
            c.record.size = st.size  # the size last seen: status and progress report it
            if st.size < c.offset or (c.record.inode and st.inode != c.record.inode):
                return True  # replaced or truncated: _check_identity reads it again
            if st.size > c.offset and st.size != c.stuck_size:
                return True
        return False


_HEAD_BYTES = 32


def _head_crc(path: str, source: Source) -> int | None:
    """CRC-32 of a file's first bytes (a tfevents file starts with a timestamped record)."""
    try:
        handle = as_handle(source.open(path))
        try:
            data = handle.pread(_HEAD_BYTES, 0)
        finally:
            handle.close()
    except OSError:
        return None
    return zlib.crc32(data) if len(data) == _HEAD_BYTES else None


def _valid_id(run_id: str) -> bool:
    return 0 < len(run_id) <= 64 and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in run_id)


def _cut_at_step_boundary(decoded: list, end: int) -> tuple[list, int]:
    """Drop the trailing events that share the last step, so that step is not split in two rows.

    Only used when a read stopped at the byte budget: the rest of that step is read next time.
    If every event has the same step, nothing is cut (the batch must make progress).
    """
    if not decoded:
        return decoded, end
    last_step = decoded[-1][2].step
    for i in range(len(decoded) - 1, -1, -1):
        if decoded[i][2].step != last_step:
            return decoded[: i + 1], decoded[i][0]
    return decoded, end


class Engine:
    def __init__(
        self,
        root: str | Source,
        backend: Backend,
        store: StateStore,
        options: Options | None = None,
        *,
        project: str | None = None,
        entity: str | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.options = options or Options()
        # a path or URL: the source it names; a Source: that one (tests, the in-process shim)
        self.source = root if isinstance(root, Source) else open_source(
            root, follow_symlinks=self.options.follow_symlinks, storage_options=self.options.storage_options,
            idle_after=self.options.idle_after, idle_max=self.options.idle_interval)
        self.root = self.source.root
        self.backend = backend
        self.store = store
        self.project = project
        self.entity = entity
        self.on_progress = on_progress
        self.report = Report()
        self._workers: dict[str, _Worker] = {}
        self._known: dict[str, str] = {}  # event file -> run key, for cheap rescans
        self._run_keys: dict[str, str] = {}  # run directory (relative) -> run key, likewise
        self.started = time.time()
        self.live = False  # watch mode: lag samples are meaningful
        self.lag_samples: deque[float] = deque(maxlen=2048)  # seconds, file write -> sink
        self.status_path = os.path.join(store.state_dir, "status.json")
        self._status_writer = SnapshotWriter(self.status_path)
        self._read_args = {"max_payload": self.options.limits.max_record_bytes, "opener": self.source.open}

    def _wanted(self, ref: RunRef, run_rel: str) -> bool:
        """Whether this engine may touch the run: --only-runs (parallel upload) and --shard."""
        if self.options.only_runs is not None and ref.key not in self.options.only_runs:
            return False
        shard = self.options.shard
        return shard is None or shard_of(run_rel or ref.name, shard[1]) == shard[0]

    # -- discovery -------------------------------------------------------------------------
    def register(self, paths: Iterable[str]) -> set[str]:
        """Start following `paths`; returns the keys of runs they belong to."""
        keys = set()
        known = self._known
        for path in paths:
            key = known.get(path)
            if key is not None and key in self._workers and path in self._workers[key].cursors:
                keys.add(key)  # the common case on every rescan: nothing to derive again
                continue
            try:
                run_rel, prefix = self._locate(path)
            except ValueError:
                continue
            ref = run_ref(self.root, run_rel)
            if not self._wanted(ref, run_rel):
                continue
            worker = self._workers.get(ref.key)
            if worker is None:
                worker = self._load_worker(ref)
            if path not in worker.cursors:
                worker.cursors[path] = _Cursor(FileRecord(path, ref.key, prefix))
            known[path] = ref.key
            self._run_keys.setdefault(run_rel, ref.key)
            keys.add(ref.key)
        return keys

    def _locate(self, path: str) -> tuple[str, str]:
        """locate(), or with Options.single_run every directory below the root as a key prefix."""
        run_rel, prefix = locate(self.root, path, self.source.subdirs)
        if self.options.single_run and run_rel:
            # every directory is a prefix, except those add_hparams names after the time
            return "", key_prefix("/".join([run_rel.replace(os.sep, "/"), prefix]))
        return run_rel, prefix

    def _load_worker(self, ref: RunRef) -> _Worker:
        worker = _Worker(ref)
        for path, rec in self.store.files_of(ref.key).items():
            worker.cursors[path] = _Cursor(rec)
        worker.meta_fp = self.store.meta_fingerprint(ref.key)
        worker.applied_artifacts = self.store.applied_artifacts(ref.key)
        for batch in self.store.batches(ref.key):
            worker.journal_pending = True
            for path, _start, end in batch.ranges:
                cursor = worker.cursors.get(path)
                if cursor is not None:
                    cursor.offset = max(cursor.offset, end)
        self._workers[ref.key] = worker
        return worker

    def rescan(self) -> set[str]:
        found = self.source.scan()
        keys = self.register(found)
        self._forget_vanished(set(found))
        if not self.source.local:  # run metadata and artifacts are a protocol of local roots
            return keys
        for run_rel in ([""] if self.options.single_run else self.source.run_dirs()):
            known = self._run_keys.get(run_rel)
            if known is not None and known in self._workers:
                keys.add(known)  # already followed: its metadata is checked when it is drained
                continue
            directory = os.path.join(self.root, run_rel) if run_rel else self.root
            if has_metadata(directory) or os.path.isdir(os.path.join(directory, ".tracelet")):
                ref = run_ref(self.root, run_rel)
                if not self._wanted(ref, run_rel):
                    continue
                if ref.key not in self._workers:
                    self._load_worker(ref)
                self._run_keys[run_rel] = ref.key
                keys.add(ref.key)
        return keys

    def pending_runs(self) -> dict[str, int]:
        """Runs that need work now, with their backlog in bytes (for planning parallel replay)."""
        out = {}
        for key, w in self._workers.items():
            if self._needs_open(w):
                out[key] = self._backlog(w) + 1
        return out

    def backlog_bytes(self) -> int:
        return sum(self._backlog(w) for w in self._workers.values())

    def _backlog(self, w: _Worker) -> int:
        total = 0
        for c in w.cursors.values():
            st = self.source.stat(c.path)
            if st is not None:
                total += max(0, st.size - c.offset)
        return total

    # -- opening and recovery --------------------------------------------------------------
    def _open(self, w: _Worker) -> None:
        rec = self.store.get_run(w.ref.key)
        state_lost = rec is None
        md = self._metadata(w)
        if rec is None:
            rec = RunRecord(w.ref.key, self._claim_run_id(w, md), w.ref.name, self.backend.name)
        spec = RunSpec(
            rec.run_id, (md.name if md and md.name else display_text(rec.name)), w.ref.directory,
            (md.project if md and md.project else self.project),
            (md.entity if md and md.entity else self.entity), metadata=md,
        )
        w.sink = self.backend.open_run(spec)
        durable = max(w.sink.durable_seq(), rec.acked_seq)
        batches = self.store.batches(w.ref.key)
        if durable >= rec.next_seq:
            self._recover_positions(w, durable, state_lost)
        rec.next_seq = max(rec.next_seq, durable + 1)
        rec.acked_seq = durable
        rec.location = w.sink.location
        self.store.put_run(rec)
        w.record = rec
        self.store.acknowledge(w.ref.key, durable)
        self._refresh_acked(w)
        w.unfolded = len(self.store.batches(w.ref.key))
        w.next_seq = rec.next_seq
        for batch in batches:
            if batch.seq_last > durable:
                self._replay(w, batch, durable)
        w.journal_pending = False
        self.report.runs += 1
        if self.source.local and os.path.isfile(os.path.join(w.ref.directory, "projector_config.pbtxt")):
            log.info("%s: TensorBoard projector data (add_embedding) is not replayed; it stays in %s",
                     w.ref.name, w.ref.directory)
        self._apply_metadata(w, opened_with=md)
        if durable >= 0:
            log.info("%s: run %s resumed at %s after row #%d", w.ref.name, rec.run_id, rec.location, durable)
        else:
            log.info("%s: run %s opened at %s", w.ref.name, rec.run_id, rec.location)

    def _claim_run_id(self, w: _Worker, md: RunMetadata | None) -> str:
        """The backend run id of a run opened for the first time, claimed once per state store.

        A run.json may name an id; another directory's id (claimed, or derived for a run this
        engine follows) is refused, so no run directory can hijack another's run: the run is
        then sent under its own derived id, losing nothing."""
        derived = w.ref.run_id
        wanted = derived
        if md is not None and md.run_id:
            others = {o.ref.run_id for k, o in self._workers.items() if k != w.ref.key}
            if not _valid_id(md.run_id):
                log.error("%s: run_id in its run.json is not a valid id; using %s", w.ref.name, derived)
            elif md.run_id in others:
                self.report.error("run_id_conflict")
                log.error("%s: run_id %s in its run.json is the id of another run directory; refused,"
                          " using its own id %s", w.ref.name, md.run_id, derived)
            else:
                wanted = md.run_id
        for attempt in range(100):
            owner = self.store.claim(wanted, w.ref.key)
            if owner == w.ref.key:
                return wanted
            self.report.error("run_id_conflict")
            log.error("%s: run id %s is already used by %s in this state store; refused, %s",
                      w.ref.name, wanted, display_text(owner, 200), "using its own id" if wanted != derived
                      else "using another id")
            wanted = derived if wanted != derived else make_run_id(w.ref.name, f"{w.ref.directory}#{attempt + 1}")
        raise StateError(f"{w.ref.name}: no free run id")

    def _recover_positions(self, w: _Worker, durable: int, state_lost: bool) -> None:
        """The backend holds rows the state store does not know of: take positions from it."""
        cp = w.sink.recovered_checkpoint()
        if cp is None:
            log.warning("%s: the backend holds rows up to #%d but the state store has no record of"
                        " them and the backend no checkpoint; reading the files from the start"
                        " (values may repeat)", w.ref.name, durable)
            return
        positions = cp.get("files") or {}
        for rel, offset in positions.items():
            path = self.source.join(w.ref.directory, rel)
            c = w.cursors.get(path)
            if c is None or not isinstance(offset, int):
                continue
            c.offset = c.record.acked_offset = max(c.offset, offset)
        log.warning("%s: %s; resuming from the checkpoint the backend holds (row #%d); rows #%d-#%d"
                    " may repeat", w.ref.name, "the state store had no record of this run" if state_lost
                    else "the state store was behind the backend", cp["seq"], cp["seq"] + 1, durable)
        self.report.error("state_recovered")

    def _replay(self, w: _Worker, batch, durable: int) -> None:
        """Re-read a journaled batch byte for byte and send the rows the backend lacks."""
        events: list[tuple[str, Event]] = []
        try:
            for path, start, end in batch.ranges:
                cursor = w.cursors.get(path) or _Cursor(FileRecord(path, w.ref.key, self._locate(path)[1]))
                events.extend(self._decode(w, cursor, read_batch(path, start, end=end, **self._read_args).records, count=False))
        except (OSError, ReaderError) as exc:
            log.error("%s: cannot replay rows #%d-#%d (%s); they are lost", w.ref.name, batch.seq_first, batch.seq_last, exc)
            return
        rows = group_rows(events, batch.seq_first)
        if len(rows) != batch.seq_last - batch.seq_first + 1:
            log.error("%s: journaled bytes changed since they were read; rows #%d-#%d not replayed",
                      w.ref.name, batch.seq_first, batch.seq_last)
            return
        todo = [r for r in rows if r.seq > durable]
        if todo:
            log.info("%s: replaying %d row(s) the backend did not confirm", w.ref.name, len(todo))
            w.sink.write(todo)

    # -- reading ---------------------------------------------------------------------------
    def _decode(self, w: _Worker, cursor: _Cursor, records: list[bytes], count: bool = True,
                ends: list[int] | None = None):
        """(prefix, event) pairs; with `ends`, (end offset, prefix, event) triples."""
        out: list = []
        prefix = cursor.prefix
        plugins = cursor.record.plugins
        for i, payload in enumerate(records):
            try:
                ev = decode_event(payload, plugins, limits=self.options.limits)
            except UndecodableEvent as exc:
                if count:
                    cursor.record.corrupt += 1
                    self.report.corrupt_records += 1
                    self.report.error("undecodable")
                    at = f" at byte {ends[i] - len(payload) - 16}" if ends is not None else ""
                    self._say_once(w, "undecodable:" + cursor.path, logging.WARNING,
                                   "%s: a record%s cannot be replayed (%s); skipped (further ones are"
                                   " counted, not logged)", cursor.path, at, exc)
                continue
            if ev is None:
                continue
            for tag, kind in ev.skipped:
                self._say_once(w, f"skip:{prefix}/{tag}:{kind}", logging.INFO,
                               "%s: tag %s (%s) is not replayed (see docs/data-types.md); skipped",
                               w.ref.name, short_tag(tag), kind)
            out.append((prefix, ev) if ends is None else (ends[i], prefix, ev))
        return out

    _MAX_REPORTED = 4096  # distinct messages remembered per run: a hostile file can make millions

    def _say_once(self, w: _Worker, key: str, level: int, msg: str, *args: object) -> None:
        if key in w.reported:
            return
        if len(w.reported) >= self._MAX_REPORTED:
            if len(w.reported) == self._MAX_REPORTED:
                w.reported.add("")
                log.warning("%s: more than %d distinct problems; further ones are counted, not logged",
                            w.ref.name, self._MAX_REPORTED)
            return
        w.reported.add(key)
        log.log(level, msg, *args)

    def _read_file(self, w: _Worker, c: _Cursor, budget: int):
        st = self.source.stat(c.path)
        if st is None:
            return None
        c.gone_since = 0.0
        self._check_identity(w, c, st)
        size, c.mtime = st.size, st.mtime
        c.record.size = size
        if size <= c.offset or size == c.stuck_size:
            return None
        expect = c.window[1] if c.window is not None and c.window[0] == c.offset else None
        try:
            rb = read_batch(c.path, c.offset, budget, expect_before=expect, **self._read_args)
        except RewrittenError:
            self._reset(c, st, f"it was rewritten (the bytes before byte {c.offset} changed)")
            return None
        except OSError as exc:
            self._say_once(w, "io:" + c.path, logging.WARNING, "cannot read %s: %s", c.path, exc.strerror or exc)
            return None
        c.window = (rb.end, rb.window_crc) if rb.window_crc is not None else None
        c.stuck_size = size if rb.pending is not None else -1
        if rb.fatal is not None:
            c.record.status = "quarantined"
            c.record.error = str(rb.fatal)
            self.report.quarantined.append(c.path)
            self.report.error("framing")
            log.error("%s; file quarantined, other files go on", rb.fatal)
        return rb

    def _check_identity(self, w: _Worker, c: _Cursor, st: FileStat) -> None:
        """Notice a file replaced or rewritten under a known path and read it from the start."""
        rec = c.record
        reason = ""
        if rec.inode and (st.dev, st.inode) != (rec.dev, rec.inode):
            reason = "it is a different file now (inode changed)"
        elif st.size < c.offset:
            reason = f"it is shorter ({st.size} bytes) than what was already read ({c.offset})"
        elif c.verify_head and rec.head >= 0 and st.size >= _HEAD_BYTES:
            if _head_crc(c.path, self.source) not in (rec.head, None):
                reason = "its first bytes changed"
        c.verify_head = False
        if reason:
            self._reset(c, st, reason)
        if not rec.inode:
            rec.dev, rec.inode = st.dev, st.inode
        if rec.head < 0 and st.size >= _HEAD_BYTES:
            head = _head_crc(c.path, self.source)
            rec.head = -1 if head is None else head

    def _reset(self, c: _Cursor, st: FileStat, reason: str) -> None:
        """Read a replaced file from the start (its old content was sent already: nothing repeats
        unless the new one repeats it)."""
        rec = c.record
        self.report.error("replaced")
        log.warning("%s: %s; reading it from the start", c.path, reason)
        rec.corrupt, rec.status, rec.error, rec.plugins = 0, "ok", "", {}
        rec.dev, rec.inode, rec.head = st.dev, st.inode, -1
        c.offset, c.stuck_size, c.window = 0, -1, None
        self.store.reset_file(rec)

    def _forget_vanished(self, seen: set[str]) -> None:
        """Files gone for `forget_after` seconds leave the state; so do runs with no files left."""
        now = time.monotonic()
        for key in list(self._workers):
            w = self._workers[key]
            gone = []
            for path, c in w.cursors.items():
                if path in seen or self.source.exists(path):
                    c.gone_since = 0.0
                    continue
                c.gone_since = c.gone_since or now
                if now - c.gone_since >= self.options.forget_after:
                    gone.append(path)
            if gone:
                log.info("%s: %d file(s) gone for %.0fs; forgetting them", w.ref.name, len(gone),
                         self.options.forget_after)
                self.store.forget_files(gone)
                for path in gone:
                    del w.cursors[path]
            if not w.cursors and not self.source.is_dir(w.ref.directory):
                if w.sink is not None:
                    log.info("%s: run directory is gone; finishing the run", w.ref.name)
                    self.finish(w)
                if gone or not self.store.files_of(key):
                    del self._workers[key]

    def _count_corrupt(self, w: _Worker, c: _Cursor, corrupt: list) -> None:
        if not corrupt:
            return
        c.record.corrupt += len(corrupt)
        self.report.corrupt_records += len(corrupt)
        for exc in corrupt:
            kind = "oversize" if isinstance(exc, OversizeRecordError) else "checksum"
            self.report.error(kind)
            self._say_once(w, f"{kind}:{c.path}", logging.WARNING, "%s: %s at byte %d; skipped (further"
                           " ones are counted in the state store, not logged)", c.path, exc.reason, exc.offset)

    def step(self, w: _Worker) -> int:
        """Read, journal and send one batch of `w`; returns the bytes consumed (0: nothing new)."""
        budget = self.options.max_batch_bytes
        newest_write = 0.0
        events: list[tuple[str, Event]] = []
        ranges: list[tuple[str, int, int]] = []
        touched: list[FileRecord] = []
        for path in sorted(w.cursors):
            c = w.cursors[path]
            if c.record.status != "ok":
                continue
            rb = self._read_file(w, c, budget)
            if rb is None:
                continue
            newest_write = max(newest_write, c.mtime)
            consumed = rb.end - rb.start
            if consumed or rb.fatal is not None:
                touched.append(c.record)
            if not consumed:
                continue
            decoded = self._decode(w, c, rb.records, ends=rb.ends)
            end = rb.end
            if rb.budget_limited:
                decoded, end = _cut_at_step_boundary(decoded, end)
                consumed = end - rb.start
            self._count_corrupt(w, c, [e for e in rb.corrupt if e.offset < end])
            ranges.append((path, rb.start, end))
            events.extend((prefix, ev) for _end, prefix, ev in decoded)
            c.offset = end
            budget -= consumed
            if budget <= 0:
                break
        if not touched:
            return 0
        if not ranges:
            for rec in touched:
                self.store.put_file(rec)
            return 0
        rows = group_rows(events, w.next_seq)
        seq_last = w.next_seq + len(rows) - 1
        self.store.journal(w.ref.key, w.next_seq, seq_last, ranges, touched)
        w.unfolded += 1
        w.next_seq = seq_last + 1
        if rows:
            w.last_active = time.monotonic()
            w.sink.write(rows)
            w.sink.checkpoint(seq_last, {self.source.relpath(p, w.ref.directory): c.offset
                                         for p, c in w.cursors.items()})
            self.report.rows += len(rows)
            self.report.events += len(events)
            w.last_event_time = max(w.last_event_time, max(r.wall_time for r in rows))
            if newest_write and self.live:
                self.lag_samples.append(max(0.0, time.time() - newest_write))
        consumed = sum(end - start for _, start, end in ranges)
        self.report.bytes_read += consumed
        if self.on_progress:
            self.on_progress(consumed)
        self._ack(w)
        return consumed

    def _ack(self, w: _Worker, upto: int | None = None, *, force: bool = False) -> None:
        """Fold what the backend confirmed into offsets (`force`: also batches without rows)."""
        if w.sink is None or w.record is None:
            return
        acked = w.sink.acknowledged() if upto is None else upto
        if acked > w.record.acked_seq or (force and w.unfolded and acked >= w.record.acked_seq):
            folded = self.store.acknowledge(w.ref.key, acked)
            w.unfolded -= folded
            w.record.acked_seq = max(w.record.acked_seq, acked)
            if folded:
                self._refresh_acked(w)

    def _refresh_acked(self, w: _Worker) -> None:
        for path, rec in self.store.files_of(w.ref.key).items():
            c = w.cursors.get(path)
            if c is not None:
                c.record.acked_offset = rec.acked_offset

    # -- run metadata and artifacts (the file protocol, see metadata.py) ----------------------
    def _metadata(self, w: _Worker) -> RunMetadata | None:
        if not self.source.local:
            return replace(RunMetadata(), group=w.ref.group) if w.ref.group else None
        try:
            md = load_run_metadata(w.ref.directory, self.options.limits)
        except MetadataError as exc:
            self.report.error("metadata")
            self._say_once(w, f"md:{exc}", logging.ERROR, "%s; ignored until the file changes", exc)
            return None
        if w.ref.group and not (md and md.group):  # a further add_hparams session: grouped under its run
            md = replace(md or RunMetadata(), group=w.ref.group)
        return md

    def _meta_pending(self, w: _Worker) -> bool:
        return self.source.local and repr(fingerprint(w.ref.directory)) != w.meta_fp

    def _apply_metadata(self, w: _Worker, opened_with: RunMetadata | None = None) -> None:
        """Push changed run metadata and new artifacts to the open run (each artifact once)."""
        if w.sink is None or not self.source.local:
            return
        fp = repr(fingerprint(w.ref.directory))
        if fp == w.meta_fp and opened_with is None:
            return
        md = opened_with if opened_with is not None else self._metadata(w)
        if opened_with is not None:  # it was read before the (slow) open: changed since?
            current = self._metadata(w)
            if current is not None and current != opened_with:
                md = current
                self._contained(w, "its metadata", w.sink.update_metadata, md)
        elif md is not None:
            self._contained(w, "its metadata", w.sink.update_metadata, md)
        limits = self.options.limits
        for aid in artifact_ids(w.ref.directory):
            if aid in w.applied_artifacts:
                continue
            try:
                request = load_artifact(w.ref.directory, aid, limits)
                with staged(w.ref.directory, request, os.path.join(self.store.state_dir, "staging"),
                            limits) as copy:
                    # BackendError: retried with the run; anything else: this artifact is skipped
                    self._contained(w, f"artifact {aid}", w.sink.log_artifact, copy, reraise=MetadataError)
            except MetadataError as exc:
                self.report.error("metadata")
                log.error("%s: %s; artifact skipped", w.ref.name, exc)
            else:
                log.info("%s: artifact %s:%s stored (%d file(s))", w.ref.name, request.type,
                         request.name, len(request.files))
            self.store.mark_artifact(w.ref.key, aid)
            w.applied_artifacts.add(aid)
        w.meta_fp = fp
        self.store.set_meta_fingerprint(w.ref.key, fp)
        w.writer_finished = bool(md and md.finished)

    def _contained(self, w: _Worker, what: str, fn: Callable, *args: object,
                   reraise: type[Exception] | None = None) -> None:
        """Run one metadata/artifact operation; an unexpected error skips that one item (reported
        once) instead of failing the run, which would be retried forever: a crash loop."""
        try:
            fn(*args)
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - contain per item
            if reraise is not None:
                raise reraise(f"{type(exc).__name__}: {exc}") from exc
            self.report.error("metadata")
            self._say_once(w, f"contained:{what}:{exc}", logging.ERROR, "%s: %s could not be applied"
                           " (%s: %s); skipped", w.ref.name, what, type(exc).__name__, str(exc)[:300])

    def _needs_open(self, w: _Worker) -> bool:
        return (w.has_data(self.source) or self._meta_pending(w)) and self._ours(w)

    def _ours(self, w: _Worker) -> bool:
        """False if the run's run.json names another uploader (e.g. the in-process shim's engine)."""
        owner = uploader_of(w.ref.directory) if self.source.local else None
        if owner is not None and owner != self.options.uploader:
            self._say_once(w, "uploader:" + owner, logging.INFO, "%s: its run.json says it is uploaded"
                           " by %r, not by this %s engine; skipped", w.ref.name, owner, self.options.uploader)
            return False
        return True

    # -- run lifecycle ---------------------------------------------------------------------
    def _drain(self, w: _Worker, stop: threading.Event | None = None) -> bool:
        """Open `w` if needed and send everything it has; False if the backend failed."""
        if time.monotonic() < w.retry_at:
            return False
        try:
            if w.sink is None:
                self._open(w)
            while self.step(w):
                if stop is not None and stop.is_set():
                    break
            self._apply_metadata(w)
            w.failures = 0
            return True
        except BackendError as exc:
            self.report.error("backend")
            w.last_error = str(exc)
            w.failures += 1
            delay = min(self.options.retry_max, 2.0 ** min(w.failures, 10))
            w.retry_at = time.monotonic() + delay
            log.error("%s (retrying in %.0fs)", exc, delay)
            self._abandon(w)
            return False
        except (StateError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - one run's unexpected failure must not stop the others
            self.report.error("internal")
            w.last_error = f"{type(exc).__name__}: {exc}"
            w.failures += 1
            delay = self.options.retry_max
            w.retry_at = time.monotonic() + delay
            log.error("%s: unexpected %s: %s (this run is retried in %.0fs; other runs go on)",
                      w.ref.name, type(exc).__name__, str(exc)[:300], delay, exc_info=log.isEnabledFor(logging.DEBUG))
            self._abandon(w)
            return False

    def _abandon(self, w: _Worker) -> None:
        """Drop an open sink after a failure; its journal makes the next open replay."""
        if w.sink is not None:
            try:
                w.sink.finish(timeout=5)
            except Exception:  # noqa: BLE001 - it already failed
                pass
        w.sink = None
        w.journal_pending = bool(self.store.batches(w.ref.key))
        for c in w.cursors.values():
            c.offset = max(c.record.acked_offset, self._journal_end(w, c.path))

    def _journal_end(self, w: _Worker, path: str) -> int:
        end = 0
        for batch in self.store.batches(w.ref.key):
            for p, _s, e in batch.ranges:
                if p == path:
                    end = max(end, e)
        return end

    def finish(self, w: _Worker) -> None:
        if w.sink is None:
            return
        acked = w.sink.finish(self.options.finish_timeout)
        self._ack(w, acked, force=True)
        w.sink = None
        if acked < w.next_seq - 1:
            log.warning("%s: backend confirmed rows up to #%d of #%d; the rest is replayed next time",
                        w.ref.name, acked, w.next_seq - 1)

    def close(self) -> None:
        """Finish every open run (drain, confirm, fold offsets)."""
        for w in list(self._workers.values()):
            try:
                self.finish(w)
            except Exception as exc:  # noqa: BLE001 - finish the others
                log.error("%s: finishing failed: %s", w.ref.name, exc)
        self._collect_tails()
        self.source.close()

    def _collect_tails(self) -> None:
        for w in self._workers.values():
            for c in w.cursors.values():
                if c.stuck_size >= 0:
                    self.report.pending_tails.append(
                        f"{c.path}: incomplete record at byte {c.offset}; it is read once complete"
                    )

    # -- commands --------------------------------------------------------------------------
    def upload(self) -> Report:
        """One pass over everything present, one run at a time, each finished when done."""
        self.rescan()
        for key in sorted(self._workers):
            w = self._workers[key]
            if not self._needs_open(w):
                continue
            if not self._drain(w):
                self.report.failed_runs.append(w.ref.name)
                continue
            self.finish(w)
            self.write_status()
        self._collect_tails()
        self.write_status()
        return self.report

    def _limit_open_runs(self) -> None:
        """Finish the least recently active runs beyond `max_open_runs` (each open W&B run costs
        memory in wandb-core); a finished run is resumed, with no loss, when new data arrives."""
        limit = self.options.max_open_runs
        open_runs = [w for w in self._workers.values() if w.sink is not None]
        if limit <= 0 or len(open_runs) <= limit:
            return
        open_runs.sort(key=lambda w: w.last_active)
        for w in open_runs[: len(open_runs) - limit]:
            log.info("%s: idle; finishing it to stay within %d open runs", w.ref.name, limit)
            self.finish(w)

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict:
        """A JSON-able snapshot for `tracelet status`, health probes and metrics."""
        runs = []
        for w in sorted(self._workers.values(), key=lambda w: w.ref.name):
            files = []
            for c in sorted(w.cursors.values(), key=lambda c: c.path):
                files.append({
                    "path": c.path, "prefix": c.prefix, "size": c.record.size, "read": c.offset,
                    "acked": c.record.acked_offset, "corrupt": c.record.corrupt,
                    "status": c.record.status, "error": c.record.error,
                    "pending_tail": c.stuck_size >= 0, "mtime": c.mtime,
                })
            rec = w.record
            runs.append({
                "name": w.ref.name, "directory": w.ref.directory,
                "run_id": rec.run_id if rec else w.ref.run_id,
                "location": rec.location if rec else "", "open": w.sink is not None,
                "next_seq": w.next_seq, "acked_seq": rec.acked_seq if rec else -1,
                "last_event_time": w.last_event_time, "last_error": w.last_error, "files": files,
            })
        lags = sorted(self.lag_samples)
        return {
            "version": 1, "pid": os.getpid(), "host": socket.gethostname(), "root": self.root,
            "backend": self.backend.name, "uploader": self.options.uploader, "live": self.live,
            "started": self.started, "heartbeat": time.time(),
            "totals": {
                "runs": len(self._workers), "open_runs": sum(1 for w in self._workers.values() if w.sink),
                "rows": self.report.rows, "events": self.report.events,
                "bytes_read": self.report.bytes_read, "corrupt_records": self.report.corrupt_records,
                "errors": dict(self.report.errors),
            },
            "lag_seconds": {
                "samples": len(lags),
                "p50": lags[len(lags) // 2] if lags else None,
                "p99": lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else None,
                "last": self.lag_samples[-1] if lags else None,
            },
            "runs": runs,
            "source": self.source.counters(),
        }

    def write_status(self) -> dict | None:
        """Write status.json (unless Options.write_status is off) and return the snapshot."""
        if not self.options.write_status:
            return None
        snapshot = self.status()
        self._status_writer.publish(snapshot)
        return snapshot

    def watch(self, stop: threading.Event, on_tick: Callable[[Engine, dict], None] | None = None) -> Report:
        """Follow the root until `stop` is set; then finish every run and return.

        `on_tick(engine, snapshot)` runs with every status snapshot (`status_interval`): sd_notify
        watchdog pings, metrics.
        """
        self.live = True
        watcher = self.source.hints(self.options.use_inotify)
        stop_waker = threading.Thread(target=lambda: (stop.wait(), watcher.wake(), self.source.interrupt()),
                                      daemon=True)
        stop_waker.start()
        log.info("watching %s (%s)", self.root, "inotify + rescans" if watcher.inotify else "polling rescans")
        next_scan = next_status = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_scan:
                    dirty = self.rescan() | set(self._workers)
                    next_scan = now + self.options.rescan_interval
                else:
                    dirty = set()
                for w in self._workers.values():
                    if w.sink is None and w.journal_pending:
                        dirty.add(w.ref.key)
                for key in sorted(dirty):
                    if stop.is_set():
                        break
                    w = self._workers[key]
                    if w.sink is not None or self._needs_open(w):
                        self._drain(w, stop)
                for w in self._workers.values():
                    if w.sink is not None:
                        self._ack(w, force=True)
                        if w.writer_finished and not w.has_data(self.source) and not self._register_unseen(w):
                            log.info("%s: the writer finished the run; finishing it", w.ref.name)
                            self.finish(w)
                self._limit_open_runs()
                if time.monotonic() >= next_status:
                    snapshot = self.write_status()
                    next_status = time.monotonic() + self.options.status_interval
                    if on_tick is not None:
                        on_tick(self, snapshot or self.status())
                # acks are polled only while a run is open; an idle daemon sleeps until its next chore
                wake_at = min(next_scan, next_status)
                if any(w.sink is not None for w in self._workers.values()):
                    wake_at = min(wake_at, time.monotonic() + self.options.ack_interval)
                timeout = max(0.05, wake_at - time.monotonic())
                files, rescan_now = watcher.wait(timeout)
                if stop.is_set():
                    break
                if rescan_now:
                    next_scan = 0.0  # a directory appeared or something vanished
                for key in self.register(files):
                    w = self._workers[key]
                    if w.sink is not None or self._needs_open(w):
                        self._drain(w, stop)
        finally:
            watcher.stop()
            if self.options.drain_on_stop:
                self._final_drain()
            self.close()
            self.write_status()
        return self.report

    def _register_unseen(self, w: _Worker) -> bool:
        """Follow event files of `w` that no rescan has seen yet; True if there were any.

        Checked before finishing a run whose writer says it is done: its last file may have
        appeared after the last rescan, and finishing first would reopen the run right away.
        """
        unseen = [p for p in self.source.scan_dir(w.ref.directory) if p not in w.cursors]
        if unseen:
            self.register(unseen)
        return bool(unseen)

    def _final_drain(self) -> None:
        """Read every run to the end of its files and apply its metadata (the in-process shim)."""
        self.rescan()
        for key in sorted(self._workers):
            w = self._workers[key]
            if w.sink is not None or self._needs_open(w):
                self._drain(w)
