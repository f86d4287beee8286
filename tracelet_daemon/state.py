"""Durable state: acknowledged offsets, run identities and a write-ahead journal of batches.

The store never claims more than a backend confirmed. Before rows go to a backend, the byte
ranges they came from are journaled (one SQLite transaction, fsynced). Only when the backend
confirms it holds rows up to sequence number N are the batches up to N folded into the per-file
acknowledged offsets. After a crash the engine asks the backend how far it really got and
replays the journaled ranges past that point, byte for byte, skipping what the backend has.

SQLite (WAL, synchronous=FULL) gives atomic multi-row updates; a damaged database is moved
aside with a clear message rather than crashing the daemon.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import StateError
from .lock import DirectoryLock

log = logging.getLogger("tracelet.state")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs(
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    backend TEXT NOT NULL DEFAULT '',
    next_seq INTEGER NOT NULL DEFAULT 0,
    acked_seq INTEGER NOT NULL DEFAULT -1,
    location TEXT NOT NULL DEFAULT '',
    meta_fp TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS artifacts(
    run_key TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    applied REAL NOT NULL,
    PRIMARY KEY(run_key, artifact_id)
);
CREATE TABLE IF NOT EXISTS files(
    path TEXT PRIMARY KEY,
    run_key TEXT NOT NULL,
    prefix TEXT NOT NULL DEFAULT '',
    acked_offset INTEGER NOT NULL DEFAULT 0,
    plugins TEXT NOT NULL DEFAULT '{}',
    corrupt INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'ok',
    error TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0,
    dev INTEGER NOT NULL DEFAULT 0,
    inode INTEGER NOT NULL DEFAULT 0,
    head INTEGER NOT NULL DEFAULT -1,
    updated REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_by_run ON files(run_key);
CREATE TABLE IF NOT EXISTS batches(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_key TEXT NOT NULL,
    seq_first INTEGER NOT NULL,
    seq_last INTEGER NOT NULL,
    ranges TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_run ON batches(run_key, id);
CREATE TABLE IF NOT EXISTS claims(run_id TEXT PRIMARY KEY, run_key TEXT NOT NULL);
INSERT OR IGNORE INTO claims(run_id, run_key) SELECT run_id, key FROM runs ORDER BY updated;
"""


@dataclass
class RunRecord:
    key: str
    run_id: str
    name: str
    backend: str = ""
    next_seq: int = 0
    acked_seq: int = -1
    location: str = ""


@dataclass
class FileRecord:
    path: str
    run_key: str
    prefix: str = ""
    acked_offset: int = 0
    plugins: dict[str, str] = field(default_factory=dict)
    corrupt: int = 0
    status: str = "ok"  # ok | quarantined
    error: str = ""
    size: int = 0
    dev: int = 0  # identity of the file the offsets belong to: (dev, inode) and a checksum of
    inode: int = 0  # its first bytes, so a replaced or rewritten file is noticed
    head: int = -1


@dataclass
class Batch:
    """Rows seq_first..seq_last came from these exact byte ranges, read in this order."""

    id: int
    seq_first: int
    seq_last: int
    ranges: list[tuple[str, int, int]]


def _migrate(db: sqlite3.Connection) -> None:
    """Add columns introduced after a state file was created (no data is rewritten)."""
    wanted = {"runs": [("meta_fp", "TEXT NOT NULL DEFAULT ''")],
              "files": [("dev", "INTEGER NOT NULL DEFAULT 0"), ("inode", "INTEGER NOT NULL DEFAULT 0"),
                        ("head", "INTEGER NOT NULL DEFAULT -1")]}
    for table, columns in wanted.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns:
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def _private(path: str) -> None:
    """The state holds run paths and W&B logs: tighten group/other bits of what we own, warn
    about what we cannot."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not st.st_mode & 0o077:
        return
    if st.st_uid == os.geteuid():
        mode = 0o700 if os.path.isdir(path) else 0o600
        os.chmod(path, mode, follow_symlinks=False)
        log.warning("%s was readable by other users (mode %o); tightened to %o", path,
                    st.st_mode & 0o777, mode)
    else:
        log.warning("%s is readable by other users (mode %o) and owned by another user; its run"
                    " paths and W&B logs are visible to them", path, st.st_mode & 0o777)


def default_state_dir() -> str:
    env = os.environ.get("TRACELET_STATE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "tracelet")


class StateStore:
    """One SQLite database in `state_dir`; used from one thread at a time."""

    FILENAME = "state.sqlite3"

    def __init__(self, state_dir: str, *, lock: bool = True, backend: str = "wandb") -> None:
        """`lock`: take the directory's exclusive lock (UsageError if another process holds it);
        only worker processes of a parent that holds it, and readers, pass False.

        `backend`: whose positions these are. Each backend has a database of its own in the
        state directory (run ids, sequence numbers, journal and offsets are per backend), so
        backends fed at once never hold each other back and one added later replays history."""
        self.state_dir = os.path.abspath(state_dir)
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state directory {self.state_dir}: {exc.strerror}") from exc
        if not os.access(self.state_dir, os.W_OK | os.X_OK):
            raise StateError(f"state directory {self.state_dir} is not writable")
        _private(self.state_dir)
        self._lock = DirectoryLock(self.state_dir) if lock else None
        self.backend = backend
        self.path = os.path.join(self.state_dir, self.filename(backend))
        try:
            # created 0600 first: SQLite gives its -wal and -shm files the database's mode
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            for suffix in ("", "-wal", "-shm"):
                _private(self.path + suffix)
            self._db = self._open()
        except BaseException:
            self._release()
            raise

    @classmethod
    def filename(cls, backend: str) -> str:
        """W&B keeps the original name (state directories from before other backends existed)."""
        return cls.FILENAME if backend in ("", "wandb") else f"state-{backend}.sqlite3"

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            aside = f"{self.path}.corrupt-{int(time.time())}"
            os.replace(self.path, aside)
            log.error("state %s is unreadable (%s); moved aside to %s, starting fresh", self.path, exc, aside)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        # a generous busy timeout: parallel upload workers share this database
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            _migrate(db)
            db.execute("SELECT count(*) FROM runs").fetchone()
            db.execute(
                "INSERT OR IGNORE INTO meta(k, v) VALUES('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        self._db.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StateError(f"state store {self.path}: {exc}") from exc

    # -- runs ------------------------------------------------------------------------------
    def get_run(self, key: str) -> RunRecord | None:
        row = self._db.execute(
            "SELECT key, run_id, name, backend, next_seq, acked_seq, location FROM runs WHERE key=?",
            (key,),
        ).fetchone()
        return RunRecord(*row) if row else None

    def put_run(self, run: RunRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs(key, run_id, name, backend, next_seq, acked_seq, location, updated)"
                " VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET run_id=excluded.run_id,"
                " name=excluded.name, backend=excluded.backend, next_seq=excluded.next_seq,"
                " acked_seq=excluded.acked_seq, location=excluded.location, updated=excluded.updated",
                (run.key, run.run_id, run.name, run.backend, run.next_seq, run.acked_seq,
                 run.location, time.time()),
            )

    def claim(self, run_id: str, key: str) -> str:
        """Claim backend run id `run_id` for run `key`; returns the key that owns it now.

        Atomic across processes sharing the store (parallel upload workers): the first claim
        wins and a run id never serves two run directories."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO claims(run_id, run_key) VALUES(?,?)", (run_id, key))
            return db.execute("SELECT run_key FROM claims WHERE run_id=?", (run_id,)).fetchone()[0]

    def all_runs(self) -> list[RunRecord]:
        rows = self._db.execute(
            "SELECT key, run_id, name, backend, next_seq, acked_seq, location FROM runs ORDER BY key"
        ).fetchall()
        return [RunRecord(*r) for r in rows]

    def set_meta_fingerprint(self, key: str, fingerprint: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET meta_fp=?, updated=? WHERE key=?", (fingerprint, time.time(), key))

    def meta_fingerprint(self, key: str) -> str:
        row = self._db.execute("SELECT meta_fp FROM runs WHERE key=?", (key,)).fetchone()
        return row[0] if row else ""

    # -- artifacts -------------------------------------------------------------------------
    def applied_artifacts(self, run_key: str) -> set[str]:
        rows = self._db.execute("SELECT artifact_id FROM artifacts WHERE run_key=?", (run_key,)).fetchall()
        return {r[0] for r in rows}

    def mark_artifact(self, run_key: str, artifact_id: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO artifacts(run_key, artifact_id, applied) VALUES(?,?,?)",
                       (run_key, artifact_id, time.time()))

    # -- files -----------------------------------------------------------------------------
    def files_of(self, run_key: str) -> dict[str, FileRecord]:
        rows = self._db.execute(
            "SELECT path, run_key, prefix, acked_offset, plugins, corrupt, status, error, size,"
            " dev, inode, head FROM files WHERE run_key=?",
            (run_key,),
        ).fetchall()
        out = {}
        for path, rk, prefix, off, plugins, corrupt, status, error, size, dev, inode, head in rows:
            out[path] = FileRecord(path, rk, prefix, off, json.loads(plugins), corrupt, status, error,
                                   size, dev, inode, head)
        return out

    def put_file(self, f: FileRecord) -> None:
        with self._tx() as db:
            self._put_file(db, f)

    @staticmethod
    def _put_file(db: sqlite3.Connection, f: FileRecord) -> None:
        db.execute(
            "INSERT INTO files(path, run_key, prefix, acked_offset, plugins, corrupt, status, error,"
            " size, dev, inode, head, updated) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(path)"
            " DO UPDATE SET run_key=excluded.run_key, prefix=excluded.prefix, plugins=excluded.plugins,"
            " corrupt=excluded.corrupt, status=excluded.status, error=excluded.error,"
            " size=excluded.size, dev=excluded.dev, inode=excluded.inode, head=excluded.head,"
            " updated=excluded.updated",
            (f.path, f.run_key, f.prefix, f.acked_offset, json.dumps(f.plugins, sort_keys=True),
             f.corrupt, f.status, f.error, f.size, f.dev, f.inode, f.head, time.time()),
        )

    def reset_file(self, f: FileRecord) -> None:
        """The file at f.path is a new file: offsets from 0, and no journaled range points at it."""
        with self._tx() as db:
            f.acked_offset = 0
            self._put_file(db, f)
            db.execute("UPDATE files SET acked_offset=0 WHERE path=?", (f.path,))
            self._drop_ranges(db, {f.path})

    def forget_files(self, paths: list[str]) -> None:
        """Files that are gone for good: their rows and their journaled ranges go."""
        with self._tx() as db:
            for path in paths:
                db.execute("DELETE FROM files WHERE path=?", (path,))
            self._drop_ranges(db, set(paths))

    @staticmethod
    def _drop_ranges(db: sqlite3.Connection, paths: set[str]) -> None:
        for batch_id, ranges in db.execute("SELECT id, ranges FROM batches").fetchall():
            kept = [r for r in json.loads(ranges) if r[0] not in paths]
            if len(kept) != len(json.loads(ranges)):
                db.execute("UPDATE batches SET ranges=? WHERE id=?", (json.dumps(kept), batch_id))

    # -- journal ---------------------------------------------------------------------------
    def journal(
        self,
        run_key: str,
        seq_first: int,
        seq_last: int,
        ranges: list[tuple[str, int, int]],
        files: list[FileRecord],
    ) -> None:
        """Durably note that rows seq_first..seq_last come from `ranges`, before sending them."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO batches(run_key, seq_first, seq_last, ranges) VALUES(?,?,?,?)",
                (run_key, seq_first, seq_last, json.dumps(ranges)),
            )
            db.execute(
                "UPDATE runs SET next_seq=max(next_seq, ?), updated=? WHERE key=?",
                (seq_last + 1, time.time(), run_key),
            )
            for f in files:
                self._put_file(db, f)

    def batches(self, run_key: str) -> list[Batch]:
        rows = self._db.execute(
            "SELECT id, seq_first, seq_last, ranges FROM batches WHERE run_key=? ORDER BY id",
            (run_key,),
        ).fetchall()
        return [Batch(i, a, b, [tuple(r) for r in json.loads(rg)]) for i, a, b, rg in rows]

    def acknowledge(self, run_key: str, acked_seq: int) -> int:
        """Fold every batch the backend holds completely into file offsets; returns how many."""
        folded = 0
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, seq_last, ranges FROM batches WHERE run_key=? ORDER BY id", (run_key,)
            ).fetchall()
            for batch_id, seq_last, ranges in rows:
                if seq_last > acked_seq:
                    break
                for path, _start, end in json.loads(ranges):
                    db.execute(
                        "UPDATE files SET acked_offset=max(acked_offset, ?), updated=? WHERE path=?",
                        (end, time.time(), path),
                    )
                db.execute("DELETE FROM batches WHERE id=?", (batch_id,))
                folded += 1
            db.execute(
                "UPDATE runs SET acked_seq=max(acked_seq, ?), updated=? WHERE key=?",
                (acked_seq, time.time(), run_key),
            )
        return folded
