"""TFRecord framing: resumable, typed, bounded reads of a growing file.

Layout of one record::

    u64 LE length | u32 masked CRC32C(length bytes) | payload | u32 masked CRC32C(payload)

Modelled on TensorBoard's Rust reader: a reader is a position in a file; each call either returns
a whole record and moves past it, or raises a typed error and says where it stands. Nothing here
knows about protobufs. The file is read in bounded chunks with ``os.pread``; the length field is
checked against its own checksum and against what the file holds before anything is allocated.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from google_crc32c import value as _crc32c

from .errors import CorruptRecordError, FramingError, OversizeRecordError, RewrittenError, TruncatedRecordError

HEADER_SIZE = 12
FOOTER_SIZE = 4
MAX_RECORD_SIZE = 1 << 30  # a TensorBoard event is never near this; a bigger length is garbage
DEFAULT_MAX_PAYLOAD = 64 << 20  # records over this are skipped unread (limits.Limits.max_record_bytes)
_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_DEFAULT_CHUNK = 4 << 20
WINDOW = 16  # bytes before an offset whose checksum says the file was not rewritten under it


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C (rotate right by 15, add a constant)."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    """Frame one payload as a TFRecord (used by tests and tools that write deliberately)."""
    length = struct.pack("<Q", len(payload))
    return (
        length
        + _FOOTER.pack(masked_crc32c(length))
        + payload
        + _FOOTER.pack(masked_crc32c(payload))
    )


class FdHandle:
    """A file descriptor as a source handle (sources.base.Handle): positioned reads, owned."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def as_handle(opened: object) -> FdHandle | object:
    """What an opener returned (a descriptor, or a source handle) as a handle."""
    return FdHandle(opened) if isinstance(opened, int) else opened


class RecordReader:
    """Reads records from `path` starting at byte `offset`.

    ``offset`` is always the start of the next record to read: it moves past a record only once
    that record was returned whole or reported corrupt, so a caller may persist it at any time.
    One descriptor is held until ``close``; reads never go past what the file holds.
    """

    def __init__(self, path: str, offset: int = 0, *, chunk_size: int = _DEFAULT_CHUNK,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, opener: Callable[[str], object] | None = None,
                 expect_before: int | None = None) -> None:
        """`opener(path)` opens the file: a descriptor (a confined opener for untrusted roots) or
        a source handle with ``pread``/``size``/``close`` (an object store);
        records longer than `max_payload` are skipped by their checksummed length, unread;
        `expect_before` is the CRC-32 of the `WINDOW` bytes before `offset` when they were
        read last time: if they differ now the file was rewritten (RewrittenError)."""
        self.path = path
        self.offset = offset
        self._chunk = max(chunk_size, HEADER_SIZE + FOOTER_SIZE)
        self._max_payload = max_payload
        self._handle = as_handle(opener(path) if opener is not None else os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        self._pread = self._handle.pread
        self._buf = b""
        self._buf_start = offset  # file position of self._buf[0]
        # headers (length + its CRC) already verified: most events of a log have one of a few
        # lengths, so this skips one CRC per record; bounded in case every length differs
        self._good_headers: set[bytes] = set()
        self._window: tuple[int, bytes] | None = None  # bytes before a refill point
        if expect_before is not None and offset >= WINDOW:
            self._check_window(expect_before)

    def _check_window(self, expected: int) -> None:
        """One read covers the window and the first chunk (one request to an object store)."""
        try:
            data = self._pread(WINDOW + self._chunk, self.offset - WINDOW)
        except BaseException:
            self.close()
            raise
        if len(data) < WINDOW or zlib.crc32(data[:WINDOW]) != expected:
            self.close()
            raise RewrittenError(self.path, self.offset, "the bytes before the read position changed")
        self._buf, self._buf_start = data, self.offset - WINDOW

    def window_crc(self) -> int | None:
        """CRC-32 of the `WINDOW` bytes before the current offset, if they are still buffered."""
        rel = self.offset - self._buf_start
        if WINDOW <= rel <= len(self._buf):
            return zlib.crc32(self._buf[rel - WINDOW : rel])
        if self._window is not None and self._window[0] == self.offset:
            return zlib.crc32(self._window[1])
        return None

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._buf = b""

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def size(self) -> int:
        return self._handle.size()

    # -- reading ---------------------------------------------------------------------------
    def _ensure(self, need: int) -> bool:
        """Make `need` bytes from self.offset available in the buffer; False at end of data."""
        rel = self.offset - self._buf_start
        if len(self._buf) - rel >= need:
            return True
        want = max(need, self._chunk)
        if WINDOW <= rel <= len(self._buf):  # window_crc() may be asked for this position
            self._window = (self.offset, self._buf[rel - WINDOW : rel])
        data = self._pread(want, self.offset)
        self._buf, self._buf_start = data, self.offset
        return len(data) >= need

    def read_record(self) -> bytes | None:
        """Return the next payload, None at a clean end of data, or raise a ReaderError subclass.

        TruncatedRecordError: not all of the record is on disk yet; offset unchanged.
        CorruptRecordError: the payload failed its checksum; offset moved past it.
        FramingError: the length is corrupt or absurd; offset unchanged, stop this file.
        """
        start = self.offset
        if not self._ensure(HEADER_SIZE):
            if not self._buf:  # nothing at all past the last record: a clean end
                return None
            raise TruncatedRecordError(self.path, start, "incomplete record header")
        rel = start - self._buf_start
        buf = self._buf
        length, length_crc = _HEADER.unpack_from(buf, rel)
        header = buf[rel : rel + HEADER_SIZE]
        if header not in self._good_headers:
            if masked_crc32c(buf[rel : rel + 8]) != length_crc:
                raise FramingError(self.path, start, "record length fails its checksum")
            if len(self._good_headers) < 1024:
                self._good_headers.add(header)
        if length > MAX_RECORD_SIZE:
            raise FramingError(self.path, start, f"absurd record length {length}")
        total = HEADER_SIZE + length + FOOTER_SIZE
        if length > self._max_payload:
            available = self.size() - start
            if available < total:
                raise TruncatedRecordError(
                    self.path, start, f"incomplete record ({available} of {total} bytes on disk)")
            self.offset = start + total
            raise OversizeRecordError(
                self.path, start, f"record of {length} bytes is over the limit of {self._max_payload}"
                " (TRACELET_MAX_RECORD_BYTES); skipped unread", self.offset)
        if len(buf) - rel < total:
            available = self.size() - start
            if available < total:
                raise TruncatedRecordError(
                    self.path, start, f"incomplete record ({available} of {total} bytes on disk)"
                )
            if not self._ensure(total):  # file shrank between fstat and pread
                raise TruncatedRecordError(self.path, start, "incomplete record")
            rel, buf = 0, self._buf
        body = rel + HEADER_SIZE
        payload = buf[body : body + length]
        (payload_crc,) = _FOOTER.unpack_from(buf, body + length)
        self.offset = start + total
        crc = _crc32c(payload)  # masked_crc32c inlined: this line runs once per event
        if (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF != payload_crc:
            raise CorruptRecordError(
                self.path, start, "record payload fails its checksum", self.offset
            )
        return payload


@dataclass
class ReadBatch:
    """What one bounded pass over a file produced."""

    records: list[bytes] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # file offset after each record
    start: int = 0
    end: int = 0  # offset after the last record returned or skipped
    corrupt: list[CorruptRecordError] = field(default_factory=list)
    pending: TruncatedRecordError | None = None  # incomplete tail, retry later
    fatal: FramingError | None = None  # stop this file
    at_eof: bool = False  # stopped at a clean end of data (not at the byte budget)
    window_crc: int | None = None  # of the WINDOW bytes before `end` (the next read checks them)

    @property
    def budget_limited(self) -> bool:
        return not (self.at_eof or self.pending is not None or self.fatal is not None)


def read_batch(path: str, offset: int, max_bytes: int = 8 << 20, *, end: int | None = None,
               max_payload: int = DEFAULT_MAX_PAYLOAD, opener: Callable[[str], object] | None = None,
               expect_before: int | None = None) -> ReadBatch:
    """Read whole records from `offset` until `max_bytes` were consumed or `end` is reached.

    Passing `end` replays an exact byte range read before (crash recovery); a replay that cannot
    reach `end` raises the error it met, because the file changed under us. `expect_before`:
    see RecordReader (raises RewrittenError).
    """
    batch = ReadBatch(start=offset, end=offset)
    limit = offset + max_bytes if end is None else end
    with RecordReader(path, offset, chunk_size=min(max(max_bytes, 1 << 16), _DEFAULT_CHUNK),
                      max_payload=max_payload, opener=opener, expect_before=expect_before) as rd:
        while rd.offset < limit:
            try:
                payload = rd.read_record()
            except CorruptRecordError as exc:
                batch.corrupt.append(exc)
                continue
            except TruncatedRecordError as exc:
                if end is not None:
                    raise
                batch.pending = exc
                break
            except FramingError as exc:
                if end is not None:
                    raise
                batch.fatal = exc
                break
            if payload is None:
                batch.at_eof = True
                break
            batch.records.append(payload)
            batch.ends.append(rd.offset)
        batch.end = rd.offset
        batch.window_crc = rd.window_crc()
    if end is not None and batch.end != end:
        raise FramingError(path, batch.end, f"replay overran its recorded end {end}")
    return batch


def iter_records(path: str, offset: int = 0) -> Iterator[bytes]:
    """Every intact payload from `offset` to the end; corrupt records skipped, tail ignored."""
    with RecordReader(path, offset) as rd:
        while True:
            try:
                payload = rd.read_record()
            except CorruptRecordError:
                continue
            except (TruncatedRecordError, FramingError):
                return
            if payload is None:
                return
            yield payload
