"""The daemon's status snapshot on disk: written atomically, read by `status`, `health`, metrics.

A snapshot, not a socket: probes and `tracelet status` work with the daemon's state directory
alone (a read-only volume is enough), and a dead daemon is visible by its stale heartbeat.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile


def _encode(data: object) -> str:
    # json.dumps without indent uses the C encoder (~10x faster than dump(indent=...))
    return json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)


def write_json_atomic(path: str, data: object, *, durable: bool = False) -> None:
    """Temp file in the same directory, rename: readers see the old or the new file.

    A status snapshot is rewritten every few seconds and is not needed after a power loss, so it
    skips fsync unless `durable` (which costs a disk flush per write).
    """
    write_text_atomic(path, _encode(data), durable=durable)


class SnapshotWriter:
    """Writes status.json, re-encoding only the runs that changed since the last write.

    With a thousand idle runs the snapshot is ~0.5 MB of JSON rewritten every few seconds; most
    of it is the same as last time, and comparing dicts costs a fraction of encoding them.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._memo: dict[str, tuple[dict, str]] = {}

    def publish(self, snapshot: dict) -> None:
        """`write`, with a failure (full disk, read-only volume) logged rather than raised: the
        status is for observers and must never stop the daemon."""
        try:
            self.write(snapshot)
        except (OSError, ValueError) as exc:
            logging.getLogger("tracelet.status").warning("cannot write %s: %s", self.path, exc)

    def write(self, snapshot: dict) -> None:
        memo: dict[str, tuple[dict, str]] = {}
        parts = []
        for run in snapshot.get("runs", []):
            key = f'{run.get("backend", "")}:{run.get("directory") or run.get("name") or ""}'  # one per backend
            hit = self._memo.get(key)
            text = hit[1] if hit is not None and hit[0] == run else _encode(run)
            memo[key] = (run, text)
            parts.append(text)
        self._memo = memo
        head = _encode({k: v for k, v in snapshot.items() if k != "runs"})
        sep = "," if head != "{}" else ""
        write_text_atomic(self.path, f'{head[:-1]}{sep}"runs":[{",".join(parts)}]}}')


def write_text_atomic(path: str, text: str, *, durable: bool = False) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".status-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_status(state_dir: str) -> dict | None:
    """The last snapshot in `state_dir`, or None if there is none (or it is unreadable)."""
    try:
        with open(os.path.join(state_dir, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
