"""TFRecord framing: every way a record can be incomplete, damaged or absurd."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorboardX import SummaryWriter

from tracelet_daemon.errors import CorruptRecordError, FramingError, ReaderError, TruncatedRecordError
from tracelet_daemon.records import (HEADER_SIZE, RecordReader, frame, iter_records, masked_crc32c,
                                     read_batch)


@pytest.fixture
def real_log(tmp_path):
    """A small log written by tensorboardX; returns (file bytes, its payloads)."""
    w = SummaryWriter(str(tmp_path / "tb"))
    for step in range(5):
        w.add_scalar("loss", 1.0 / (step + 1), step)
    w.add_histogram("h", np.arange(100), 5)
    w.close()
    (path,) = (tmp_path / "tb").glob("*tfevents*")
    data = path.read_bytes()
    return data, list(iter_records(str(path)))


def _records_of(path, offset=0):
    out, rd = [], RecordReader(str(path), offset)
    with rd:
        while True:
            try:
                payload = rd.read_record()
            except TruncatedRecordError:
                break
            if payload is None:
                break
            out.append(payload)
        return out, rd.offset


def test_masked_crc_matches_tensorflow_reference():
    # value from TensorFlow's crc32c_test: masked CRC of b"foo" (Mask(Value("foo")))
    from google_crc32c import value

    crc = value(b"foo")
    assert masked_crc32c(b"foo") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert len(frame(b"abc")) == HEADER_SIZE + 3 + 4


def test_reads_real_writer_output(real_log):
    data, payloads = real_log
    assert len(payloads) == 7  # file_version + 5 scalars + 1 histogram
    assert sum(len(frame(p)) for p in payloads) == len(data)


def test_split_at_every_byte_boundary(tmp_path, real_log):
    """A writer that has written k bytes: whole records only, exactly once, resumable."""
    data, payloads = real_log
    path = tmp_path / "events.out.tfevents.split"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        first, offset = _records_of(path)
        # everything returned is whole, and a prefix of the true records
        assert first == payloads[: len(first)]
        assert offset == sum(len(frame(p)) for p in first)
        path.write_bytes(data)  # the writer finishes
        rest, end = _records_of(path, offset)
        assert first + rest == payloads, f"cut at byte {cut}"
        assert end == len(data)


def test_partial_header_and_payload_are_truncated_not_errors(tmp_path):
    rec = frame(b"x" * 100)
    path = tmp_path / "f.tfevents"
    for cut in (1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 50, len(rec) - 1):
        path.write_bytes(rec[:cut])
        with RecordReader(str(path)) as rd, pytest.raises(TruncatedRecordError):
            rd.read_record()
        assert read_batch(str(path), 0).pending is not None


def test_payload_crc_mismatch_skips_one_record(tmp_path):
    good = [frame(b"a" * 10), frame(b"b" * 10), frame(b"c" * 10)]
    bad = bytearray(good[1])
    bad[HEADER_SIZE + 3] ^= 0xFF  # flip a payload byte
    path = tmp_path / "f.tfevents"
    path.write_bytes(good[0] + bytes(bad) + good[2])
    batch = read_batch(str(path), 0)
    assert batch.records == [b"a" * 10, b"c" * 10]
    assert len(batch.corrupt) == 1
    err = batch.corrupt[0]
    assert isinstance(err, CorruptRecordError)
    assert err.offset == len(good[0]) and str(path) in str(err)
    assert batch.end == path.stat().st_size and batch.fatal is None


def test_flipped_footer_crc_byte_is_corrupt(tmp_path):
    rec = bytearray(frame(b"payload"))
    rec[-1] ^= 0x01
    path = tmp_path / "f.tfevents"
    path.write_bytes(bytes(rec) + frame(b"next"))
    batch = read_batch(str(path), 0)
    assert batch.records == [b"next"] and len(batch.corrupt) == 1


def test_bad_length_crc_stops_the_file(tmp_path):
    rec = bytearray(frame(b"payload"))
    rec[9] ^= 0x10  # inside the length CRC
    path = tmp_path / "f.tfevents"
    path.write_bytes(frame(b"first") + bytes(rec) + frame(b"never"))
    batch = read_batch(str(path), 0)
    assert batch.records == [b"first"]
    assert isinstance(batch.fatal, FramingError)
    assert batch.fatal.offset == len(frame(b"first"))
    assert batch.end == len(frame(b"first"))  # never moves past the damage


@pytest.mark.parametrize("length", [(1 << 30) + 1, 1 << 40, (1 << 64) - 1])
def test_absurd_length_is_fatal_without_allocating(tmp_path, length):
    header = struct.pack("<Q", length)
    path = tmp_path / "f.tfevents"
    path.write_bytes(header + struct.pack("<I", masked_crc32c(header)) + b"tiny")
    with RecordReader(str(path)) as rd, pytest.raises(FramingError, match="absurd record length"):
        rd.read_record()


def test_length_beyond_end_of_file_is_pending(tmp_path):
    """A plausible length whose payload is not on disk yet: retry later, never allocate it."""
    header = struct.pack("<Q", 500 << 20)
    path = tmp_path / "f.tfevents"
    path.write_bytes(header + struct.pack("<I", masked_crc32c(header)) + b"x" * 10)
    batch = read_batch(str(path), 0)
    assert batch.pending is not None and batch.records == [] and batch.end == 0


def test_replay_of_exact_range_and_changed_file(tmp_path):
    path = tmp_path / "f.tfevents"
    path.write_bytes(frame(b"a") + frame(b"b") + frame(b"c"))
    end = len(frame(b"a")) * 2
    assert read_batch(str(path), 0, end=end).records == [b"a", b"b"]
    path.write_bytes(frame(b"a"))  # truncated under us
    with pytest.raises(ReaderError):
        read_batch(str(path), 0, end=end)


def test_max_bytes_bounds_a_batch(tmp_path):
    path = tmp_path / "f.tfevents"
    path.write_bytes(b"".join(frame(bytes([i]) * 100) for i in range(50)))
    batch = read_batch(str(path), 0, max_bytes=1000)
    assert 1 <= len(batch.records) <= 10
    rest = read_batch(str(path), batch.end)
    assert len(batch.records) + len(rest.records) == 50


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=64))
def test_random_bytes_only_raise_typed_errors(tmp_path, blob, offset):
    path = tmp_path / "fuzz.tfevents"
    path.write_bytes(frame(b"ok") + blob)
    with RecordReader(str(path), offset) as rd:
        for _ in range(100):
            try:
                if rd.read_record() is None:
                    break
            except CorruptRecordError:
                continue
            except (TruncatedRecordError, FramingError):
                break
    batch = read_batch(str(path), offset)  # the batch API never raises
    assert batch.end <= max(path.stat().st_size, offset)
