"""`Experiment.log_metric`: scalars written as TensorBoard events into the run directory.

The shim's own event file (``events.out.tfevents.<time>.<host>.<pid>.tracelet``) goes through
the same reader, journal and sink as any SummaryWriter's, so exactly-once holds for it too.
Records are written whole and flushed at once (no background thread): what `log_metric`
returned has reached the file.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from tensorboard.compat.proto import event_pb2, summary_pb2

from tracelet_daemon.records import frame


class EventLog:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path: str | None = None
        self._file = None
        self._lock = threading.Lock()
        self._steps: dict[str, int] = {}

    def _open(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.tracelet"
        path = os.path.join(self.directory, name)
        n = 1
        while os.path.exists(path):
            path = os.path.join(self.directory, f"{name}.{n}")
            n += 1
        self._file = open(path, "ab")  # noqa: SIM115 - kept open for the run
        self.path = path
        header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        self._file.write(frame(header.SerializeToString()))
        self._file.flush()

    def scalars(self, values: dict[str, float], step: int | None) -> int:
        """Write `values` as one event at `step` (None: each name's next step, from 0)."""
        with self._lock:
            if self._file is None:
                self._open()
            if step is None:
                step = max((self._steps.get(k, -1) + 1 for k in values), default=0)
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
            event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
            self._file.write(frame(event.SerializeToString()))
            self._file.flush()
            for k in values:
                self._steps[k] = max(self._steps.get(k, -1), int(step))
            return int(step)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    os.fsync(self._file.fileno())
                except OSError:
                    pass
                self._file.close()
                self._file = None
