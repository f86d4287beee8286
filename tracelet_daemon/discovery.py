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
import time
import warnings

from .runs import is_event_file

log = logging.getLogger("tracelet.discovery")
# watchdog re-registers a directory renamed inside the tree (an artifact published by the shim)
# and warns about it on stderr; the watch it keeps is the right one
warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)


def scan(root: str, warned: set[str] | None = None, *, follow_files: bool = False) -> list[str]:
    """Every event file under `root`, sorted; unreadable directories are reported once.

    os.scandir entries know their type without an extra stat, which matters with thousands of
    runs rescanned every few seconds. Symlinks are not followed by default (the root is
    untrusted: a link could point anywhere); hidden directories (.tracelet, .git, ...) are skipped.
    """
    return Scanner(root, warned, follow_files=follow_files).scan()


class _Listing:
    __slots__ = ("mtime_ns", "trusted", "files", "subdirs")

    def __init__(self, mtime_ns: int, trusted: bool, files: list[str], subdirs: list[str]) -> None:
        self.mtime_ns = mtime_ns
        self.trusted = trusted
        self.files = files
        self.subdirs = subdirs


class Scanner:
    """`scan` that remembers directory listings between rescans.

    Creating, removing or renaming an entry updates its directory's mtime, so a directory whose
    mtime has not moved since it was listed still has the same entries: rescanning an idle tree
    of a thousand runs costs one stat per directory instead of a listing. A listing taken while
    the directory's mtime was recent is not trusted (coarse timestamps could hide a change made
    right after it), and every `full_every`-th scan lists everything anyway.
    """

    RACY_NS = 2_000_000_000

    def __init__(self, root: str, warned: set[str] | None = None, *, full_every: int = 6,
                 follow_files: bool = False, follow_top_dirs: bool = False) -> None:
        """`follow_files`: symlinked event files count; `follow_top_dirs`: symlinked directories
        directly under the root (linked run directories) are entered. Deeper directory links
        never are, so a link loop cannot hang discovery."""
        self.root = root
        self.follow_files = follow_files
        self.follow_top_dirs = follow_top_dirs
        self.warned = warned if warned is not None else set()
        self.full_every = max(1, full_every)
        self._listings: dict[str, _Listing] = {}
        self._scans = 0

    def scan(self) -> list[str]:
        full = self._scans % self.full_every == 0
        self._scans += 1
        listings: dict[str, _Listing] = {}
        found: list[str] = []
        stack = [self.root]
        while stack:
            directory = stack.pop()
            listing = self._list(directory, None if full else self._listings.get(directory))
            if listing is None:
                continue
            listings[directory] = listing
            found.extend(listing.files)
            stack.extend(listing.subdirs)
        self._listings = listings  # directories not reached this time are forgotten
        found.sort()
        return found

    def run_dirs(self) -> list[str]:
        """The root ('') and its first-level directories, relative: where run metadata may live.

        Taken from the last scan's listing of the root (scanning first if there is none)."""
        if self.root not in self._listings:
            self.scan()
        listing = self._listings.get(self.root)
        names = sorted(os.path.basename(d) for d in listing.subdirs) if listing else []
        return ["", *names]

    def _list(self, directory: str, known: _Listing | None) -> _Listing | None:
        try:
            st = os.stat(directory)
            if known is not None and known.trusted and known.mtime_ns == st.st_mtime_ns:
                return known
            files: list[str] = []
            subdirs: list[str] = []
            follow_dirs = self.follow_top_dirs and directory == self.root
            with os.scandir(directory) as entries:
                for entry in entries:
                    name = entry.name
                    try:
                        if entry.is_dir(follow_symlinks=follow_dirs):
                            if not name.startswith("."):
                                subdirs.append(entry.path)
                        elif is_event_file(name) and entry.is_file(follow_symlinks=self.follow_files):
                            files.append(entry.path)
                    except OSError:
                        continue
        except OSError as err:
            if directory not in self.warned:
                self.warned.add(directory)
                log.warning("cannot read directory %s: %s (skipped)", directory, err.strerror)
            return None
        trusted = time.time_ns() - st.st_mtime_ns > self.RACY_NS
        return _Listing(st.st_mtime_ns, trusted, files, subdirs)


def _change_events(wd) -> list:
    """Only changes: without a filter inotify also reports every open/close, and each rescan
    (which opens thousands of directories) would flood watchdog's threads with its own echo."""
    return [wd.FileCreatedEvent, wd.DirCreatedEvent, wd.FileModifiedEvent, wd.FileMovedEvent,
            wd.DirMovedEvent, wd.FileClosedEvent, wd.FileDeletedEvent, wd.DirDeletedEvent]


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
            from watchdog import events as wd
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency
            return
        watcher = self

        class _Handler(wd.FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # noqa: ANN001
                if event.is_directory and event.event_type in ("modified", "opened", "closed"):
                    return  # a file changing inside a directory says so itself
                for path in (getattr(event, "dest_path", "") or "", event.src_path):
                    if path:
                        watcher._hint(os.fsdecode(path), bool(event.is_directory))

        try:
            observer = Observer()
            observer.schedule(_Handler(), self.root, recursive=True, event_filter=_change_events(wd))
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
