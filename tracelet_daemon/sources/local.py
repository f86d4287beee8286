"""Event files on a local (or mounted) file system: scandir, inotify and pread, as always."""

from __future__ import annotations

import os

from .. import confine, discovery
from ..runs import subdirectories
from .base import FileStat, Hints, Source


class LocalSource(Source):
    local = True

    def __init__(self, root: str, *, follow_symlinks: bool = False, warned: set[str] | None = None) -> None:
        self.root = os.path.abspath(root)
        self.follow_symlinks = follow_symlinks
        self.warned = warned if warned is not None else set()
        self._scanner = discovery.Scanner(self.root, self.warned, follow_files=follow_symlinks,
                                          follow_top_dirs=follow_symlinks)

    def scan(self) -> list[str]:
        return self._scanner.scan()

    def run_dirs(self) -> list[str]:
        return self._scanner.run_dirs()

    def scan_dir(self, directory: str) -> list[str]:
        return discovery.scan(directory, self.warned, follow_files=self.follow_symlinks)

    def stat(self, path: str) -> FileStat | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return FileStat(st.st_size, st.st_mtime, st.st_dev, st.st_ino)

    def open(self, path: str) -> int:
        """Without following a symlink below the root (see confine.py); with ``follow_symlinks``
        a linked run directory and a linked event file are followed, directories inside a run
        never are."""
        rel = os.path.relpath(path, self.root)
        if self.follow_symlinks and os.sep in rel:
            first, rest = rel.split(os.sep, 1)
            return confine.open_file(os.path.join(self.root, first), rest, follow_last=True)
        return confine.open_file(self.root, rel, follow_last=self.follow_symlinks)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, directory: str) -> bool:
        return os.path.isdir(directory)

    def subdirs(self, directory: str) -> list[str]:
        return subdirectories(directory)

    def join(self, directory: str, rel: str) -> str:
        return os.path.normpath(os.path.join(directory, rel))

    def relpath(self, path: str, directory: str) -> str:
        return os.path.relpath(path, directory)

    def hints(self, use_inotify: bool) -> Hints:
        return _FileHints(discovery.Watcher(self.root, use_inotify=use_inotify))


class _FileHints:
    """inotify hints, narrowed to files that exist (a directory or a vanished path asks for a rescan)."""

    def __init__(self, watcher: discovery.Watcher) -> None:
        self._watcher = watcher
        self.inotify = watcher.inotify

    def wait(self, timeout: float) -> tuple[set[str], bool]:
        hints = self._watcher.wait(timeout)
        files = {h for h in hints if os.path.isfile(h)}
        return files, len(files) != len(hints)

    def wake(self) -> None:
        self._watcher.wake()

    def stop(self) -> None:
        self._watcher.stop()
