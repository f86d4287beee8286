"""Event decoding: real writers' TF1-style summaries and TF2 tensor summaries."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.histogram import summary_v2 as hist_v2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import summary_v2 as scalar_v2
from tensorboard.util import tensor_util
from tensorboardX import SummaryWriter

from helpers import png_pixels
from tracelet_daemon.events import UndecodableEvent, decode_event
from tracelet_daemon.records import iter_records
from tracelet_daemon.values import Histogram, Image, ImageBatch


def _decode_all(path):
    plugins: dict[str, str] = {}
    return [ev for p in iter_records(str(path)) if (ev := decode_event(p, plugins)) is not None]


def _event(summary, step=1, wall_time=10.0) -> bytes:
    return event_pb2.Event(step=step, wall_time=wall_time, summary=summary).SerializeToString()


def test_tensorboardx_scalar_histogram_image(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (3, 8, 6), dtype=np.uint8)
    data = rng.normal(size=1000)
    w = SummaryWriter(str(tmp_path))
    w.add_scalar("loss", 0.25, 3)
    w.add_histogram("w", data, 4)
    w.add_image("pic", img, 5)
    w.close()
    (path,) = tmp_path.glob("*tfevents*")
    events = _decode_all(path)
    assert [(e.step, [t for t, _ in e.values]) for e in events] == [(3, ["loss"]), (4, ["w"]), (5, ["pic"])]
    assert events[0].values[0][1] == 0.25
    hist = events[1].values[0][1]
    assert isinstance(hist, Histogram) and hist.total == 1000
    assert hist.edges[0] == pytest.approx(data.min()) and hist.edges[-1] == pytest.approx(data.max())
    image = events[2].values[0][1]
    assert isinstance(image, Image) and (image.width, image.height) == (6, 8)
    assert np.array_equal(png_pixels(image.encoded), img.transpose(1, 2, 0))


def test_tf2_tensor_scalar_with_metadata_only_on_first_summary():
    first = scalar_v2.scalar_pb("acc", 0.5)
    later = scalar_v2.scalar_pb("acc", 0.75)
    later.value[0].ClearField("metadata")  # TF2 writes plugin metadata once per tag
    plugins: dict[str, str] = {}
    a = decode_event(_event(first, step=1), plugins)
    b = decode_event(_event(later, step=2), plugins)
    assert a.values == [("acc", 0.5)] and b.values == [("acc", 0.75)]
    assert plugins == {"acc": "scalars"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32])
def test_tf2_tensor_scalar_dtypes(dtype):
    summary = summary_pb2.Summary()
    summary.value.add(tag="x", tensor=tensor_util.make_tensor_proto(np.array(7, dtype=dtype)))
    ev = decode_event(_event(summary), {})
    assert ev.values == [("x", 7.0)]


def test_tf2_histogram_tensor():
    data = np.arange(100, dtype=np.float64)
    ev = decode_event(_event(hist_v2.histogram_pb("h", data, buckets=10)), {})
    ((tag, hist),) = ev.values
    assert tag == "h" and isinstance(hist, Histogram)
    assert len(hist.counts) == 10 and hist.total == 100
    assert hist.edges[0] == 0 and hist.edges[-1] == 99


def test_tf2_image_string_tensor_batch():
    rng = np.random.default_rng(2)
    pixels = [rng.integers(0, 255, (4, 5, 3), dtype=np.uint8) for _ in range(2)]
    import io

    from PIL import Image as PILImage

    encoded = []
    for p in pixels:
        buf = io.BytesIO()
        PILImage.fromarray(p).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    tensor = tensor_util.make_tensor_proto([b"5", b"4", *encoded])
    summary = summary_pb2.Summary()
    summary.value.add(tag="imgs", tensor=tensor, metadata=image_metadata.create_summary_metadata(
        display_name="imgs", description=""))
    ev = decode_event(_event(summary), {})
    ((tag, batch),) = ev.values
    assert isinstance(batch, ImageBatch) and len(batch.images) == 2
    for img, expected in zip(batch.images, pixels):
        assert (img.width, img.height) == (5, 4)
        assert np.array_equal(png_pixels(img.encoded), expected)


def test_unknown_kinds_are_reported_not_dropped_silently():
    mesh = summary_pb2.Summary()
    value = mesh.value.add(tag="m", tensor=tensor_util.make_tensor_proto(np.float32(1.0)))
    value.metadata.plugin_data.plugin_name = "mesh"
    assert decode_event(_event(mesh), {}).skipped == [("m", "tensor:mesh")]
    empty = summary_pb2.Summary()
    empty.value.add(tag="vid")
    assert decode_event(_event(empty), {}).skipped == [("vid", "no data")]


def test_events_without_summary_and_garbage():
    assert decode_event(event_pb2.Event(file_version="brain.Event:2").SerializeToString(), {}) is None
    with pytest.raises(UndecodableEvent):
        decode_event(b"\xff\xff\xff\xff", {})


def test_histogram_rebin_preserves_total_and_range():
    counts = tuple(float(i % 7) for i in range(611))
    edges = tuple(float(i) for i in range(612))
    h = Histogram(edges, counts).rebinned(512)
    assert len(h.counts) <= 512 and len(h.edges) == len(h.counts) + 1
    assert h.total == sum(counts) and h.edges[0] == 0 and h.edges[-1] == 611
    assert list(h.edges) == sorted(h.edges)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tracelet_daemon import events as events_mod  # noqa: E402

_values = st.lists(
    st.tuples(st.text(max_size=200), st.floats(width=32, allow_nan=False)), min_size=0, max_size=4
)


@settings(max_examples=400, deadline=None)
@given(step=st.integers(min_value=-(2**63), max_value=2**63 - 1), wall=st.floats(allow_nan=False),
       values=_values, extra=st.sampled_from(["", "histo", "file_version", "metadata"]))
def test_fast_path_agrees_with_protobuf(step, wall, values, extra):
    """The wire-format fast path returns exactly what the protobuf path returns, or defers."""
    summary = summary_pb2.Summary()
    for tag, value in values:
        summary.value.add(tag=tag, simple_value=value)
    ev = event_pb2.Event(step=step, wall_time=wall)
    if values or extra:
        ev.summary.CopyFrom(summary)
    if extra == "histo":
        ev.summary.value.add(tag="h", histo=summary_pb2.HistogramProto(min=0, max=1, bucket_limit=[1], bucket=[2]))
    elif extra == "file_version":
        ev.file_version = "brain.Event:2"
    elif extra == "metadata" and ev.summary.value:
        ev.summary.value[0].metadata.plugin_data.plugin_name = "scalars"
    payload = ev.SerializeToString()
    _fast_paths_agree(payload)


def _fast_paths_agree(payload: bytes) -> int:
    slow = events_mod._decode_proto(payload, {})
    taken = 0
    for fast_path in (events_mod._one_scalar, events_mod._fast_scalars):
        fast = fast_path(payload)
        if fast is not None:
            taken += 1
            assert slow is not None
            assert (fast.step, fast.wall_time, fast.values) == (slow.step, slow.wall_time, slow.values)
    return taken


@settings(max_examples=400, deadline=None)
@given(step=st.integers(min_value=-(2**63), max_value=2**63 - 1), wall=st.floats(allow_nan=False),
       tag=st.text(max_size=130), value=st.floats(width=32))
def test_one_scalar_path_agrees_with_protobuf(step, wall, tag, value):
    """The single-add_scalar shortcut (most events of real logs) on exactly that shape, with
    lengths around its one-byte limit; NaN compared by bits through struct."""
    ev = event_pb2.Event(step=step, wall_time=wall)
    ev.summary.value.add(tag=tag, simple_value=value)
    payload = ev.SerializeToString()
    fast = events_mod._one_scalar(payload)
    slow = events_mod._decode_proto(payload, {})
    if fast is not None:
        assert (fast.step, fast.wall_time) == (slow.step, slow.wall_time)
        assert [(t, struct.pack("<f", v)) for t, v in fast.values] == [(t, struct.pack("<f", v)) for t, v in slow.values]


def test_one_scalar_path_is_taken_for_real_writer_output(tmp_path):
    with SummaryWriter(str(tmp_path), max_queue=1) as w:
        for step in (1, 300, 2**40):
            w.add_scalar("loss/train", 0.5, step)
    (path,) = tmp_path.glob("*tfevents*")
    payloads = list(iter_records(str(path)))
    assert sum(events_mod._one_scalar(p) is not None for p in payloads) == 3
    for p in payloads:
        _fast_paths_agree(p)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fast_path_never_raises_on_garbage(blob):
    events_mod._one_scalar(blob)
    events_mod._fast_scalars(blob)
    try:
        decode_event(blob, {})
    except UndecodableEvent:
        pass
