"""Where event files come from: a directory on disk, or an object store behind an fsspec URL.

`open_source(root)` picks the kind from the root: ``s3://``, ``gs://``, ``az://``, ``file://``
and other ``scheme://`` roots go through fsspec (``ObjectStoreSource``); a plain path is a local
directory (``LocalSource``: scandir, inotify and pread).
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import FileStat, Handle, Hints, Source
from .local import LocalSource

__all__ = ["FileStat", "Handle", "Hints", "LocalSource", "Source", "is_url", "open_source"]


def is_url(root: str) -> bool:
    scheme, sep, _ = root.partition("://")
    return bool(sep) and scheme.replace("+", "").replace("-", "").isalnum()


def open_source(root: str, *, follow_symlinks: bool = False, storage_options: Mapping[str, object] | None = None,
                idle_after: float = 300.0, idle_max: float = 60.0) -> Source:
    """The source for `root`; `follow_symlinks` is for disk, the rest for object stores."""
    if is_url(root):
        from .objectstore import ObjectStoreSource

        return ObjectStoreSource(root, storage_options=storage_options, idle_after=idle_after, idle_max=idle_max)
    return LocalSource(root, follow_symlinks=follow_symlinks)
