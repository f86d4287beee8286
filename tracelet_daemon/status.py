"""The daemon's status snapshot on disk: written atomically, read by `status`, `health`, metrics.

A snapshot, not a socket: probes and `tracelet status` work with the daemon's state directory
alone (a read-only volume is enough), and a dead daemon is visible by its stale heartbeat.
"""

from __future__ import annotations

import json
import os
import tempfile


def write_json_atomic(path: str, data: object, *, durable: bool = False) -> None:
    """Temp file in the same directory, rename: readers see the old or the new file.

    A status snapshot is rewritten every few seconds and is not needed after a power loss, so it
    skips fsync unless `durable` (which costs a disk flush per write).
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".status-", suffix=".tmp", dir=directory)
    try:
        # json.dumps without indent uses the C encoder (~10x faster than dump(indent=...)): with
        # a thousand runs the snapshot is a few hundred kB, rewritten every few seconds
        text = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
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
