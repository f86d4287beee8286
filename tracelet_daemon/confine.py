"""Open files under an untrusted directory without ever leaving it.

Whoever writes the runs root can swap any path component for a symlink at any moment, so a
check on a path followed by a use of the same path (``realpath``, then ``open``) is a race the
writer can win. Instead a path is walked one component at a time from a directory descriptor
(``openat``) with ``O_NOFOLLOW``: a symlink anywhere below the base fails the open itself. What
was opened is then checked on the descriptor (``fstat``: a regular file, not too large), and its
bytes are read or copied from that descriptor, never reopened by name. ``O_NONBLOCK`` keeps a
FIFO planted as ``run.json`` from hanging the daemon (it is refused as "not a regular file").

Errors are `ConfinementError`, whose message names the path relative to the base and never
quotes content.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import ConfinementError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
_COPY_CHUNK = 1 << 20


def _parts(rel: str) -> list[str]:
    parts = [p for p in rel.replace(os.sep, "/").split("/") if p not in ("", ".")]
    if ".." in parts or rel.startswith("/"):
        raise ConfinementError(f"{rel}: path leaves its directory")
    return parts


def _why(exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return "is a symbolic link (not followed)"
    if exc.errno == errno.ENOTDIR:
        return "has a component that is not a directory (or is a symbolic link)"
    return exc.strerror or str(exc)


def open_dir(base: str, rel: str = "", *, follow_base: bool = True) -> int:
    """A descriptor of directory `base`/`rel`; no symlink below `base` is followed.

    `follow_base` says whether `base` itself may be a symlink (a run directory linked into the
    root on purpose, with ``--follow-symlinks``); everything under it never is.
    """
    try:
        fd = os.open(base, _DIR_FLAGS | (0 if follow_base else os.O_NOFOLLOW))
    except OSError as exc:
        raise ConfinementError(f"{base}: {_why(exc)}") from None
    try:
        for part in _parts(rel):
            nxt = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as exc:
        os.close(fd)
        raise ConfinementError(f"{os.path.join(base, rel)}: {_why(exc)}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(base: str, rel: str, *, follow_base: bool = True, follow_last: bool = False,
              max_bytes: int | None = None, single_link: bool = False) -> int:
    """A descriptor of the regular file `base`/`rel`, checked on the descriptor itself.

    `single_link` refuses a file with other hard links: a hard link is a way to put a file from
    elsewhere on the same file system (the daemon's status.json, say) under a run directory.
    Metadata and artifacts are written by copy or rename, so theirs have one link."""
    parts = _parts(rel)
    if not parts:
        raise ConfinementError(f"{base}: not a file")
    dir_fd = open_dir(base, "/".join(parts[:-1]), follow_base=follow_base)
    path = os.path.join(base, rel)
    try:
        fd = os.open(parts[-1], _FILE_FLAGS | (0 if follow_last else os.O_NOFOLLOW), dir_fd=dir_fd)
    except OSError as exc:
        raise ConfinementError(f"{path}: {_why(exc)}") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfinementError(f"{path}: not a regular file")
        if single_link and st.st_nlink > 1:
            raise ConfinementError(f"{path}: has {st.st_nlink} hard links (a file linked in from elsewhere"
                                   " is refused)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ConfinementError(f"{path}: {st.st_size} bytes, over the limit of {max_bytes}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd(fd: int, max_bytes: int, what: str) -> bytes:
    """All bytes of `fd` from its start, at most `max_bytes` (a file still growing is cut off
    with an error rather than read without bound)."""
    chunks, total = [], 0
    while True:
        chunk = os.pread(fd, min(_COPY_CHUNK, max_bytes + 1 - total), total)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise ConfinementError(f"{what}: larger than the limit of {max_bytes} bytes")


def read_file(base: str, rel: str, max_bytes: int) -> bytes:
    """The bytes of `base`/`rel` (confined, regular, at most `max_bytes`)."""
    fd = open_file(base, rel, max_bytes=max_bytes, single_link=True)
    try:
        return read_fd(fd, max_bytes, os.path.join(base, rel))
    finally:
        os.close(fd)


def copy_fd(fd: int, dest: str, max_bytes: int, what: str) -> int:
    """Copy the file behind `fd` into a new private file `dest`; returns the bytes copied."""
    total = 0
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        while True:
            chunk = os.pread(fd, _COPY_CHUNK, total)
            if not chunk:
                return total
            total += len(chunk)
            if total > max_bytes:
                raise ConfinementError(f"{what}: larger than the limit of {max_bytes} bytes")
            os.write(out, chunk)
    finally:
        os.close(out)


def entries(base: str, rel: str = "") -> list[tuple[str, bool]]:
    """(name, is a real directory) for each entry of `base`/`rel`, confined; symlinks count as
    neither file nor directory to the caller (is_dir False, and opening them fails)."""
    fd = open_dir(base, rel)
    try:
        out = []
        for name in os.listdir(fd):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            out.append((name, stat.S_ISDIR(st.st_mode)))
        return out
    finally:
        os.close(fd)


def is_regular(path: str) -> bool:
    """A regular file at `path` itself (no symlink as its last component)."""
    try:
        return stat.S_ISREG(os.stat(path, follow_symlinks=False).st_mode)
    except OSError:
        return False
