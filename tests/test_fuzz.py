"""Hostile input: mutated real files and payloads only ever produce the reader's typed errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorboardX import SummaryWriter

from tracelet_daemon.events import UndecodableEvent, decode_event
from tracelet_daemon.records import iter_records, read_batch


@pytest.fixture(scope="module")
def real_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    w = SummaryWriter(str(d))
    for step in range(20):
        w.add_scalar("loss", float(rng.normal()), step)
    w.add_histogram("h", rng.normal(size=500), 3)
    w.add_image("img", rng.integers(0, 255, (3, 4, 4), dtype=np.uint8), 4)
    w.add_text("t", "hello", 5)
    w.close()
    (path,) = d.glob("*tfevents*")
    data = path.read_bytes()
    return data, list(iter_records(str(path)))


_mutation = st.tuples(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=255))


def _mutate(data: bytes, flips, cut) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    return bytes(buf[: len(buf) - (cut % len(buf))]) if cut else bytes(buf)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(_mutation, max_size=8), cut=st.integers(min_value=0, max_value=500))
def test_mutated_files_yield_records_or_typed_errors(tmp_path, real_file, flips, cut):
    data, _ = real_file
    path = tmp_path / "events.out.tfevents.fuzz"
    path.write_bytes(_mutate(data, flips, cut))
    offset, plugins = 0, {}
    for _ in range(200):  # the batch API never raises; it reports
        batch = read_batch(str(path), offset, max_bytes=256)
        for payload in batch.records:
            try:
                decode_event(payload, plugins)
            except UndecodableEvent:
                pass
        if batch.fatal is not None or batch.pending is not None or batch.end == offset:
            break
        offset = batch.end
    assert offset <= path.stat().st_size


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(min_value=0, max_value=1000), flips=st.lists(_mutation, min_size=1, max_size=6),
       cut=st.integers(min_value=0, max_value=40))
def test_mutated_payloads_only_raise_undecodable(real_file, which, flips, cut):
    _, payloads = real_file
    payload = _mutate(payloads[which % len(payloads)], flips, cut)
    try:
        decode_event(payload, {})
    except UndecodableEvent:
        pass
