"""Event files in an object store (s3://, gs://, az://, any fsspec URL): listed, range-read.

Objects have no append: a writer that "appends" uploads a new, longer object under the same
name (tensorboardX re-uploads its whole buffer on each flush; TensorBoard's gfile replaces the
object; GCS gives it a new generation). So the source tails by listing: each run prefix is
listed (size, ETag or generation, mtime), and only what lies past the acknowledged offset is
range-read; the reader checks the bytes just before that offset (records.WINDOW) to notice an
object rewritten with other content, and a shorter object is a replaced one (the engine's usual
identity rules).

Cost: one listing of the root per rescan (runs appear and vanish), one listing per run prefix,
and for a run whose listing has not changed for `idle_after` seconds, listings back off
exponentially to one per `idle_max` seconds. A store that fails is retried with back-off and
reported once per outage; what was listed before stays known meanwhile, so nothing is forgotten
during an outage.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ..runs import is_event_file
from .base import FileStat, Source

log = logging.getLogger("tracelet.source")

_VERSION_KEYS = ("generation", "ETag", "etag", "md5Hash", "version_id", "mtime")
_MTIME_KEYS = ("LastModified", "last_modified", "updated", "mtime", "created")


class StoreUnavailable(OSError):
    """The object store did not answer (network, server, credentials); retried with back-off."""


class Interrupted(OSError):
    """The engine is stopping: a request still in flight is abandoned (nothing was read)."""


def _mtime(entry: Mapping) -> float:
    for k in _MTIME_KEYS:
        v = entry.get(k)
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, datetime):
            return v.timestamp()
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


def _version(entry: Mapping) -> str:
    for k in _VERSION_KEYS:
        v = entry.get(k)
        if v not in (None, ""):
            return str(v)
    return ""


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _describe(exc: BaseException) -> str:
    """The failure's class and the first line of its message (client libraries do not put
    credentials in messages; request headers are never shown)."""
    msg = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


@dataclass
class _Prefix:
    """One run prefix's last listing and when to list it again."""

    files: dict[str, FileStat] = field(default_factory=dict)
    signature: frozenset = frozenset()
    changed_at: float = 0.0
    next_at: float = 0.0
    interval: float = 0.0
    listed: bool = False


class _Handle:
    """Range reads of one object (one request each), never past the size its listing gave.

    The object may be longer by the time it is read (a writer re-uploaded it); reading only what
    the listing saw keeps offsets within what the next listing can confirm, so a listing that
    lags a read is never taken for a shorter, replaced object."""

    __slots__ = ("_source", "_path", "_url", "_size")

    def __init__(self, source: ObjectStoreSource, path: str, url: str, size: int) -> None:
        self._source, self._path, self._url, self._size = source, path, url, size

    def pread(self, n: int, offset: int) -> bytes:
        end = min(offset + n, self._size)
        if end <= offset:
            return b""
        src = self._source
        src._count("read")
        try:
            data = src._call(lambda: src.fs.cat_file(self._path, start=offset, end=end))
        except Interrupted:
            raise
        except FileNotFoundError:
            raise FileNotFoundError(f"{self._url}: object is gone") from None
        except Exception as exc:  # noqa: BLE001 - every client library has its own errors
            text = str(exc)
            if "InvalidRange" in text or "416" in text or "not satisfiable" in text:
                return b""  # asked past the end: the object is shorter now
            raise StoreUnavailable(f"{self._url}: {_describe(exc)}") from None
        return data

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        pass


class _Call:
    """One blocking client call in a daemon thread: a stop can walk away from it, and a hung
    connection cannot hold the process at exit (a thread pool's workers are joined at exit)."""

    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None

    @classmethod
    def start(cls, fn: Callable[[], object]) -> _Call:
        call = cls()

        def run() -> None:
            try:
                call.value = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                call.error = exc
            finally:
                call.done.set()

        threading.Thread(target=run, name="tracelet-store", daemon=True).start()
        return call


class _Sleeper:
    """No change events from an object store: the engine sleeps until its next rescan."""

    inotify = False

    def __init__(self) -> None:
        self._wake = threading.Event()

    def wait(self, timeout: float) -> tuple[set[str], bool]:
        self._wake.wait(timeout)
        self._wake.clear()
        return set(), False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        pass


class ObjectStoreSource(Source):
    local = False
    LIST_THREADS = 8

    def __init__(self, url: str, fs=None, *, storage_options: Mapping[str, object] | None = None,  # noqa: ANN001
                 idle_after: float = 300.0, idle_max: float = 60.0, retry_max: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`idle_after`: seconds a run's listing must stay unchanged before its listings back off;
        `idle_max`: the longest gap between two listings of an idle run."""
        if fs is None:
            fs, path = open_filesystem(url, storage_options or {})
        else:
            path = fs._strip_protocol(url)
        self.fs = fs
        self.scheme = url.split("://", 1)[0]
        self._base = path.rstrip("/") or path
        self.root = self._url(self._base)
        self.idle_after, self.idle_max, self.retry_max = idle_after, idle_max, retry_max
        self._clock = clock
        self._top: set[str] = set()  # first-level directory names
        self._top_files: dict[str, FileStat] = {}  # event files directly in the root
        self._prefixes: dict[str, _Prefix] = {}
        self._index: dict[str, FileStat] = {}  # every event file listed, for stat() and scan()
        self._requests: dict[str, int] = {"list": 0, "read": 0}
        self._failures = 0
        self._down_since = 0.0
        self._retry_at = 0.0
        self._lock = threading.Lock()  # counters are read by the status thread
        self._interrupted = threading.Event()

    # -- names ---------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.scheme}://{path}"

    def _path(self, url: str) -> str:
        return url.split("://", 1)[1] if "://" in url else url

    def join(self, directory: str, rel: str) -> str:
        return self._url(posixpath.normpath(posixpath.join(self._path(directory), rel)))

    def relpath(self, path: str, directory: str) -> str:
        return posixpath.relpath(self._path(path), self._path(directory))

    # -- listing -------------------------------------------------------------------------
    def _count(self, kind: str) -> None:
        with self._lock:
            self._requests[kind] = self._requests.get(kind, 0) + 1

    def _wait(self, call: _Call):  # noqa: ANN202
        """A request's result; a stop (interrupt) abandons it rather than waiting for timeouts."""
        while not call.done.wait(0.2):
            if self._interrupted.is_set():
                raise Interrupted(f"{self.root}: stopping")
        if call.error is not None:
            raise call.error
        return call.value

    def _call(self, fn: Callable[[], object]):  # noqa: ANN202
        return self._wait(_Call.start(fn))

    def interrupt(self) -> None:
        self._interrupted.set()

    def _ls(self, path: str) -> list[dict]:
        self._count("list")
        return self._call(lambda: self.fs.ls(path, detail=True, refresh=True))

    def _find(self, path: str) -> dict[str, dict]:
        self._count("list")
        return self.fs.find(path, detail=True, withdirs=False, refresh=True)

    def _stat_of(self, entry: Mapping) -> FileStat:
        return FileStat(int(entry.get("size") or 0), _mtime(entry), version=_version(entry))

    def _list_root(self) -> None:
        try:
            entries = self._ls(self._base)
        except FileNotFoundError:
            # s3fs, gcsfs and adlfs all say this of a prefix that holds no object yet (training
            # has not started): an empty root, not an outage. A root that held runs a moment ago
            # and is gone (a deleted bucket) stays an outage: what was listed is kept.
            if self._top or self._top_files:
                raise
            entries = []
        top, files = set(), {}
        for e in entries:
            name = posixpath.basename(str(e.get("name", "")).rstrip("/"))
            if not name or name.startswith("."):
                continue
            if e.get("type") == "directory":
                top.add(name)
            elif is_event_file(name):
                files[self._url(posixpath.join(self._base, name))] = self._stat_of(e)
        self._top, self._top_files = top, files

    def _list_prefix(self, name: str, p: _Prefix, now: float) -> None:
        base = posixpath.join(self._base, name)
        try:
            found = self._find(base)
        except FileNotFoundError:
            found = {}
        files: dict[str, FileStat] = {}
        for path, e in found.items():
            rel = posixpath.relpath(path, base)
            if rel.startswith("..") or _hidden(rel) or not is_event_file(posixpath.basename(path)):
                continue
            files[self._url(path)] = self._stat_of(e)
        signature = frozenset((k, s.size, s.version) for k, s in files.items())
        if signature != p.signature or not p.listed:
            p.changed_at, p.interval = now, 0.0
        elif now - p.changed_at >= self.idle_after:
            p.interval = min(self.idle_max, max(1.0, p.interval * 2))
        p.files, p.signature, p.listed = files, signature, True
        p.next_at = now + p.interval

    def _failed(self, exc: BaseException, what: str) -> None:
        """Start or continue the back-off; said once per outage."""
        now = self._clock()
        self._failures += 1
        self._retry_at = now + min(self.retry_max, 2.0 ** min(self._failures, 10))
        if not self._down_since:
            self._down_since = now
            log.warning("cannot list %s (%s); keeping what was listed before, retrying with back-off up to"
                        " %.0fs", what, _describe(exc), self.retry_max)

    def _answered(self) -> None:
        if self._down_since:
            log.warning("%s answers again after %.0fs", self.root, self._clock() - self._down_since)
            self._down_since = 0.0
        self._failures = 0

    def scan(self) -> list[str]:
        now = self._clock()
        if now >= self._retry_at and self._list_all(now):
            self._answered()
        return sorted(self._index)

    def _list_all(self, now: float) -> bool:
        """The root, then every due run prefix, several at a time (a request takes tens of ms and
        a bucket may hold thousands of runs); the first failure ends the round."""
        try:
            self._list_root()
        except Interrupted:
            return False
        except Exception as exc:  # noqa: BLE001 - any client error: keep what we know, retry later
            self._failed(exc, self.root)
            return False
        for name in [n for n in self._prefixes if n not in self._top]:
            del self._prefixes[name]
        due = [(name, self._prefixes.setdefault(name, _Prefix())) for name in sorted(self._top)]
        due = [(name, p) for name, p in due if now >= p.next_at]
        try:
            for i in range(0, len(due), self.LIST_THREADS):
                calls = [(name, _Call.start(lambda name=name, p=p: self._list_prefix(name, p, now)))
                         for name, p in due[i : i + self.LIST_THREADS]]
                for name, call in calls:
                    try:
                        self._wait(call)
                    except Interrupted:
                        return False
                    except Exception as exc:  # noqa: BLE001 - as above
                        self._failed(exc, self._url(posixpath.join(self._base, name)))
                        return False
        finally:
            self._reindex()
        return True

    def _reindex(self) -> None:
        index = dict(self._top_files)
        for p in self._prefixes.values():
            index.update(p.files)
        self._index = index

    def run_dirs(self) -> list[str]:
        return ["", *sorted(self._top)]

    def scan_dir(self, directory: str) -> list[str]:
        rel = self.relpath(directory, self.root)
        if rel in ("", "."):
            return sorted(self._top_files)
        name = rel.split("/", 1)[0]
        p = self._prefixes.setdefault(name, _Prefix())
        try:
            self._call(lambda: self._list_prefix(name, p, self._clock()))
        except Interrupted:
            pass
        except Exception as exc:  # noqa: BLE001 - keep what was listed before
            self._failed(exc, directory)
        self._reindex()
        inside = self._path(directory).rstrip("/") + "/"
        return sorted(u for u in p.files if self._path(u).startswith(inside))

    def stat(self, path: str) -> FileStat | None:
        """From the last listing: no request."""
        return self._index.get(path)

    def open(self, path: str) -> _Handle:
        st = self.stat(path)
        return _Handle(self, self._path(path), path, st.size if st else 0)

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def is_dir(self, directory: str) -> bool:
        rel = self.relpath(directory, self.root)
        return rel in ("", ".") or rel.split("/", 1)[0] in self._top

    def subdirs(self, directory: str) -> list[str]:
        inside = self._path(directory).rstrip("/") + "/"
        names = set()
        for url in self._index:
            path = self._path(url)
            if path.startswith(inside) and "/" in path[len(inside):]:
                names.add(path[len(inside):].split("/", 1)[0])
        return sorted(names)

    def hints(self, use_inotify: bool) -> _Sleeper:
        return _Sleeper()

    def counters(self) -> dict[str, float]:
        now = self._clock()
        with self._lock:
            requests = dict(self._requests)
        idle = sum(1 for p in self._prefixes.values() if p.listed and now - p.changed_at >= self.idle_after)
        return {"requests_list": requests.get("list", 0), "requests_read": requests.get("read", 0),
                "prefixes": len(self._prefixes), "idle_prefixes": idle,
                "unreachable_seconds": (now - self._down_since) if self._down_since else 0.0}


def open_filesystem(url: str, storage_options: Mapping[str, object]):  # noqa: ANN201
    """fsspec's filesystem for `url` (listing caches off: a listing must be fresh) and the path."""
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec comes with the [s3]/[gcs]/[azure] extras
        raise ImportError("object-store roots need fsspec: pip install 'tracelet[s3]' (or [gcs], [azure])") from exc
    options = dict(storage_options)
    scheme = url.split("://", 1)[0]
    if scheme in ("s3", "s3a"):
        options = s3_defaults(options)
    options.setdefault("skip_instance_cache", True)
    options.setdefault("use_listings_cache", False)
    try:
        if scheme in ("gs", "gcs") and (options.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST")):
            fs, path = _plain_gcsfs(url, options)
        else:
            fs, path = fsspec.core.url_to_fs(url, **options)
        if scheme in ("s3", "s3a") and getattr(fs, "retries", 0) > 2:
            fs.retries = 2  # s3fs's own loop (5 by default) would hold a rescan for many seconds
    except ImportError as exc:
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure",
                 "abfss": "azure"}.get(scheme, "")
        hint = f" (pip install 'tracelet[{extra}]')" if extra else ""
        raise ImportError(f"{scheme}:// roots need a client library{hint}: {exc}") from None
    return fs, path


def _plain_gcsfs(url: str, options: dict):  # noqa: ANN202
    """gcsfs >= 2026.3 resolves gs:// to ExtendedGcsFileSystem, which asks the gRPC Storage Control
    API for the bucket's layout (zonal / hierarchical) before ls, find and cat_file. An emulator
    (STORAGE_EMULATOR_HOST, endpoint_url) speaks only the JSON API: the lookup fails after its
    retry deadline and a failure is not cached, so every call waited 40-150 s. Listing and range
    reads need only the JSON API, which the plain class uses."""
    from gcsfs.core import GCSFileSystem

    fs = GCSFileSystem(**options)
    return fs, fs._strip_protocol(url)


def s3_defaults(options: dict) -> dict:
    """boto3 and s3fs honour AWS_ENDPOINT_URL themselves; tensorboardX and TensorBoard's gfile use
    S3_ENDPOINT (with S3_USE_HTTPS): honour it too, unless an endpoint was given otherwise.
    Short timeouts and few retries: the engine retries with its own back-off."""
    import os

    options = dict(options)
    client = dict(options.get("client_kwargs") or {})
    endpoint = os.environ.get("S3_ENDPOINT", "")
    if endpoint and not (options.get("endpoint_url") or client.get("endpoint_url")
                         or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
        if "://" not in endpoint:
            https = os.environ.get("S3_USE_HTTPS", "1") not in ("0", "false", "False")
            endpoint = ("https://" if https else "http://") + endpoint
        options["endpoint_url"] = endpoint
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("connect_timeout", 5)
    config.setdefault("read_timeout", 15)
    config.setdefault("retries", {"max_attempts": 2})
    options["config_kwargs"] = config
    return options
