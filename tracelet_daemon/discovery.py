"""Which event files exist and which just changed.

Two sources, as in watchdog's split of events and observers: inotify (through watchdog) says
quickly that something changed; a periodic full rescan is the authority, so nothing is missed
when events are dropped, overflow, or never come (NFS, some overlay and bind mounts, ``--poll``).
Hints only wake the engine; the engine always re-stats before reading.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings

from .runs import is_event_file

log = logging.getLogger("tracelet.discovery")
# watchdog re-registers a directory renamed inside the tree (an artifact published by the shim)
# and warns about it on stderr; the watch it keeps is the right one
warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)


def scan(root: str, warned: set[str] | None = None) -> list[str]:
    """Every event file under `root`, sorted; unreadable directories are reported once.

    os.scandir entries know their type without an extra stat, which matters with thousands of
    runs rescanned every few seconds. Symlinked directories are never entered, so a link loop
    cannot hang discovery; hidden directories (.tracelet, .git, ...) are skipped.
    """
    warned = warned if warned is not None else set()
    found: list[str] = []
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    name = entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if not name.startswith("."):
                                stack.append(entry.path)
                        elif is_event_file(name) and entry.is_file():
                            found.append(entry.path)
                    except OSError:
                        continue
        except OSError as err:
            if directory not in warned:
                warned.add(directory)
                log.warning("cannot read directory %s: %s (skipped)", directory, err.strerror)
    found.sort()
    return found


def run_dirs(root: str) -> list[str]:
    """The root ('') and its first-level directories, relative: where run metadata may live."""
    try:
        names = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False)
                       and not e.name.startswith("."))
    except OSError:
        return [""]
    return ["", *names]


class Watcher:
    """Collects change hints from watchdog and wakes whoever waits on it."""

    def __init__(self, root: str, *, use_inotify: bool = True) -> None:
        self.root = root
        self._hints: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._observer = None
        self.inotify = False
        if use_inotify:
            self._start_observer()

    def _start_observer(self) -> None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency
            return
        watcher = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # noqa: ANN001
                if event.is_directory and event.event_type in ("modified", "opened", "closed"):
                    return  # a file changing inside a directory says so itself
                for path in (getattr(event, "dest_path", "") or "", event.src_path):
                    if path:
                        watcher._hint(os.fsdecode(path), bool(event.is_directory))

        try:
            observer = Observer()
            observer.schedule(_Handler(), self.root, recursive=True)
            observer.daemon = True
            observer.start()
        except Exception as exc:  # noqa: BLE001 - inotify limits, unsupported fs: poll instead
            log.warning("file events unavailable for %s (%s); relying on periodic rescans", self.root, exc)
            return
        self._observer = observer
        self.inotify = True

    def _hint(self, path: str, is_dir: bool) -> None:
        if is_dir or is_event_file(os.path.basename(path)):
            with self._lock:
                self._hints.add(path)
            self._wake.set()

    def wake(self) -> None:
        """Interrupt a wait (shutdown)."""
        self._wake.set()

    def wait(self, timeout: float) -> set[str]:
        """Block until a hint arrives or `timeout` passes; return and clear the hints."""
        self._wake.wait(timeout)
        self._wake.clear()
        with self._lock:
            hints, self._hints = self._hints, set()
        return hints

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
