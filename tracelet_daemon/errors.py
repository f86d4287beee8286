"""One exception hierarchy for tracelet.

Callers branch on the class, not on message text: a truncated record is retried later, a corrupt
record is skipped and counted, a framing error stops that one file, a usage error ends the command
with exit code 2.
"""

from __future__ import annotations


class TraceletError(Exception):
    """Base of every error tracelet raises on purpose."""


class UsageError(TraceletError):
    """Bad command line or configuration; the CLI prints it on one line and exits 2."""


class BackendError(TraceletError):
    """The backend refused or could not take data; nothing was acknowledged."""


class StateError(TraceletError):
    """The state store could not be opened or written."""


class ReaderError(TraceletError):
    """Something about a TFRecord stream; carries the file and the byte offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: {reason} at byte {offset}")
        self.path = path
        self.offset = offset
        self.reason = reason


class TruncatedRecordError(ReaderError):
    """The record at `offset` is not complete yet: retry later from the same offset."""


class CorruptRecordError(ReaderError):
    """The payload of one record failed its checksum: skip it (framing is intact)."""

    def __init__(self, path: str, offset: int, reason: str, next_offset: int) -> None:
        super().__init__(path, offset, reason)
        self.next_offset = next_offset


class OversizeRecordError(CorruptRecordError):
    """The record is longer than the configured limit: skipped by its length, never read."""


class FramingError(ReaderError):
    """The length field is corrupt or absurd: nothing after `offset` can be trusted."""


class RewrittenError(ReaderError):
    """The bytes just before the read position are not the ones read there before: the file
    (an object, usually) was replaced by another one under the same name; read it from the start."""


class ConfinementError(TraceletError, OSError):
    """A file under the runs root is not what it must be: a symbolic link, outside its
    directory, not a regular file, or over a size limit. The message names the path, never
    its content."""
