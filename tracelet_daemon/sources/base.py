"""The source seam: where event files come from.

A source answers three questions for the engine, whatever holds the files: which event files
exist (`scan`), has this one changed and is it still the same file (`stat`), and give me bytes
from offset N (`open`). Paths are the source's own strings (absolute paths on disk, URLs in an
object store); the engine only joins and compares them through the source.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class FileStat:
    """What a listing or a stat says of one file.

    `dev`/`inode` identify a file on disk (0 where there is no such thing: an object store,
    whose objects are replaced rather than appended to); `version` changes with every write
    (an ETag or generation), "" where unknown."""

    size: int
    mtime: float
    dev: int = 0
    inode: int = 0
    version: str = ""


class Handle(Protocol):
    """An open file: positioned reads, no shared cursor."""

    def pread(self, n: int, offset: int) -> bytes: ...

    def size(self) -> int: ...

    def close(self) -> None: ...


class Hints(Protocol):
    """Wakes the engine early when something changed (inotify); the rescan stays the authority."""

    inotify: bool

    def wait(self, timeout: float) -> tuple[set[str], bool]:
        """(files that changed, whether to rescan now: a directory appeared or a path vanished)."""

    def wake(self) -> None: ...

    def stop(self) -> None: ...


class Source(ABC):
    """Event files under one root. `root` is how users and status name it."""

    root: str
    local: bool = False  # run metadata and artifacts (the file protocol) are read from disk

    @abstractmethod
    def scan(self) -> list[str]:
        """Every event file under the root, sorted (the authority; may be served incrementally)."""

    @abstractmethod
    def run_dirs(self) -> list[str]:
        """'' and the first-level directories, relative: where run metadata may live."""

    @abstractmethod
    def scan_dir(self, directory: str) -> list[str]:
        """Every event file under `directory` now (a run about to be finished)."""

    @abstractmethod
    def stat(self, path: str) -> FileStat | None:
        """None if the file is gone (or cannot be seen)."""

    @abstractmethod
    def open(self, path: str) -> Handle | int:
        """A handle (or a descriptor, for disk files) to read `path`; OSError if it cannot be."""

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def is_dir(self, directory: str) -> bool: ...

    @abstractmethod
    def subdirs(self, directory: str) -> Iterable[str]:
        """Names of the directories in `directory` (for add_hparams sessions)."""

    @abstractmethod
    def join(self, directory: str, rel: str) -> str: ...

    @abstractmethod
    def relpath(self, path: str, directory: str) -> str: ...

    @abstractmethod
    def hints(self, use_inotify: bool) -> Hints:
        """A change-hint waiter for watch mode."""

    def interrupt(self) -> None:
        """The engine is stopping: abandon requests in flight (a network call may block long)."""

    def counters(self) -> dict[str, float]:
        """Requests made and the like, for status and metrics ({} when free)."""
        return {}

    def close(self) -> None:
        pass
