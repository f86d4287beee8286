"""The writer side of the run-directory file protocol (the reader is tracelet_daemon/metadata.py).

    <run dir>/.tracelet/run.json                       replaced atomically on every change
    <run dir>/.tracelet/artifacts/<seq>-<name>/        published by one rename, never modified
        manifest.json                                  {"format": "tracelet.artifact/1", ...}
        files/...                                      the artifact's files (copies)
    <run dir>/.tracelet/lock                           held (flock) while a process writes the run

Nothing here imports wandb: a training process that only writes files needs no W&B at all.
Field by field documentation: docs/python-api.md.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import json
import math
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping

from tracelet_daemon.metadata import ARTIFACT_FORMAT, ARTIFACTS, DIRNAME, RUN_FILE, RUN_FORMAT
from tracelet_daemon.status import read_status

_SEQ_WIDTH = 6
_SEQ = re.compile(r"(\d+)-")


# -- JSON-safe values ---------------------------------------------------------------------------
def jsonable(value: object, _depth: int = 0) -> object:
    """`value` as plain JSON data: numpy/torch scalars and arrays, tuples, sets, paths, enums,
    dataclasses and argparse Namespaces are converted; anything else becomes its ``str``."""
    if _depth > 32:
        return str(value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v, _depth + 1) for v in items]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), _depth + 1)
    if type(value).__name__ == "Namespace" and hasattr(value, "__dict__"):
        return jsonable(vars(value), _depth + 1)
    if isinstance(value, enum.Enum):
        return jsonable(value.value, _depth + 1)
    size = getattr(value, "size", None)
    if callable(getattr(value, "item", None)) and (size == 1 or size is None or callable(size)):
        try:  # numpy / torch scalars (and one-element arrays and tensors)
            return jsonable(value.item(), _depth + 1)
        except Exception:  # noqa: BLE001 - not a scalar after all
            pass
    if callable(getattr(value, "tolist", None)):
        try:
            return jsonable(value.tolist(), _depth + 1)
        except Exception:  # noqa: BLE001
            pass
    return str(value)


def deep_merge(base: dict, update: Mapping) -> dict:
    """`update` merged into a copy of `base`; nested mappings are merged key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def safe_name(text: str, fallback: str = "artifact", limit: int = 128) -> str:
    """An artifact or directory name: ``[A-Za-z0-9][A-Za-z0-9_.-]*``, at most `limit` chars."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")
    name = re.sub(r"-{2,}", "-", name)[:limit].rstrip("-_.")
    return name or fallback


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- run.json -----------------------------------------------------------------------------------
class RunFile:
    """run.json of one run directory, replaced atomically; the mtime only ever grows.

    The reader notices changes by (mtime_ns, size): two writes within one clock tick with equal
    sizes would look unchanged, so each write gets an mtime strictly above the previous one.
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.dir = os.path.join(run_dir, DIRNAME)
        self.path = os.path.join(self.dir, RUN_FILE)
        self._last_mtime = 0

    def read(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, data: Mapping[str, object]) -> None:
        os.makedirs(self.dir, exist_ok=True)
        payload = {"format": RUN_FORMAT, **{k: v for k, v in data.items() if k != "format"}}
        text = json.dumps(jsonable(payload), indent=1, sort_keys=True, allow_nan=False)
        tmp = os.path.join(self.dir, f".run.json.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                previous = os.stat(self.path).st_mtime_ns
            except OSError:
                previous = 0
            now = time.time_ns()
            mtime = max(now, previous + 1, self._last_mtime + 1)
            os.utime(tmp, ns=(now, mtime))
            os.replace(tmp, self.path)
            self._last_mtime = mtime
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(self.dir)


# -- artifacts ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PublishedArtifact:
    """What `Experiment.log_artifact` returns: the request as the uploader will see it."""

    id: str
    name: str
    type: str
    files: tuple[str, ...]
    directory: str


class ArtifactBuilder:
    """An artifact being assembled in ``.tracelet/artifacts/.tmp-*``; `publish` renames it in."""

    def __init__(self, run_dir: str) -> None:
        self.base = os.path.join(run_dir, DIRNAME, ARTIFACTS)
        os.makedirs(self.base, exist_ok=True)
        self.tmp = os.path.join(self.base, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        os.makedirs(os.path.join(self.tmp, "files"))
        self.entries: list[dict[str, str]] = []
        self._names: set[str] = set()

    def _target(self, name: str) -> tuple[str, str]:
        name = _clean_member_name(name)
        if name in self._names:
            raise ValueError(f"the artifact already has a file named {name!r}")
        self._names.add(name)
        stored = "files/" + name
        path = os.path.join(self.tmp, *stored.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.entries.append({"path": stored, "name": name})
        return path, name

    def add_file(self, source: str, name: str) -> None:
        """A copy of `source` (a snapshot: later changes to the file are not in the artifact)."""
        path, _ = self._target(name)
        shutil.copyfile(source, path)
        _fsync_file(path)

    def add_dir(self, source: str, prefix: str = "") -> int:
        count = 0
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for fname in sorted(filenames):
                full = os.path.join(dirpath, fname)
                if not os.path.isfile(full):
                    continue
                rel = os.path.relpath(full, source).replace(os.sep, "/")
                self.add_file(full, f"{prefix}/{rel}" if prefix else rel)
                count += 1
        return count

    def add_writer(self, name: str, write: Callable[[str], None]) -> None:
        """A file produced by `write(path)` (a DataFrame's CSV, a figure's PNG, ...)."""
        path, _ = self._target(name)
        write(path)
        if not os.path.isfile(path):
            raise ValueError(f"nothing was written for {name!r}")
        _fsync_file(path)

    def publish(self, name: str, kind: str, *, description: str = "", metadata: Mapping | None = None,
                aliases: Iterable[str] = ()) -> PublishedArtifact:
        manifest = {
            "format": ARTIFACT_FORMAT, "name": name, "type": kind, "description": description,
            "metadata": jsonable(dict(metadata or {})), "aliases": [str(a) for a in aliases],
            "files": self.entries, "created": time.time(), "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        mpath = os.path.join(self.tmp, "manifest.json")
        with open(mpath, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.tmp)
        seq = next_sequence(self.base)
        while True:
            aid = f"{seq:0{_SEQ_WIDTH}d}-{name}"
            target = os.path.join(self.base, aid)
            try:
                os.rename(self.tmp, target)  # fails if another writer took this id (non-empty dir)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) or os.path.exists(target):
                    seq += 1
                    continue
                raise
            break
        _fsync_dir(self.base)
        return PublishedArtifact(aid, name, kind, tuple(e["name"] for e in self.entries), target)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _clean_member_name(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"{name!r} is not a relative file name inside an artifact")
    return "/".join(parts)


def _fsync_file(path: str) -> None:
    try:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    except OSError:
        pass


def next_sequence(artifacts_dir: str) -> int:
    """1 + the highest sequence number published so far (ids sort in publication order)."""
    best = 0
    try:
        names = os.listdir(artifacts_dir)
    except OSError:
        return 1
    for name in names:
        m = _SEQ.match(name)
        if m:
            best = max(best, int(m.group(1)))
    return best + 1


# -- detecting a sidecar -----------------------------------------------------------------------------
HEARTBEAT_MAX_AGE = 30.0  # seconds; a sidecar rewrites its status.json every couple of seconds


def sidecar_state_dirs() -> list[str]:
    """Where a sidecar's status.json may be: an explicit pointer, then this user's state dir."""
    from tracelet_daemon.state import default_state_dir

    out = []
    for d in (os.environ.get("TRACELET_SIDECAR_STATE_DIR"), default_state_dir()):
        if d and os.path.abspath(d) not in out:
            out.append(os.path.abspath(d))
    return out


def live_sidecar(runs_root: str, max_age: float = HEARTBEAT_MAX_AGE) -> dict | None:
    """The status of a live `tracelet watch` that follows `runs_root`, if one is visible.

    The sidecar never writes under the root (it may be read-only); it is found by its own
    status.json, in its state directory, naming the root it follows.
    """
    root = os.path.realpath(runs_root)
    for state_dir in sidecar_state_dirs():
        status = read_status(state_dir)
        if not status or not status.get("live") or status.get("uploader", "sidecar") != "sidecar":
            continue
        if os.path.realpath(str(status.get("root", ""))) != root:
            continue
        try:
            age = time.time() - float(status.get("heartbeat", 0))
        except (TypeError, ValueError):
            continue
        if age > max_age:
            continue
        if status.get("host") == socket.gethostname() and isinstance(status.get("pid"), int):
            try:
                os.kill(status["pid"], 0)
            except ProcessLookupError:
                continue  # same host, the process is gone
            except OSError:
                pass  # another user's process, or another PID namespace: trust the heartbeat
        return status
    return None
