"""Semantic fuzzing (issue 11, item 5): well-formed events with hostile *meaning*.

test_fuzz.py flips bytes; here every payload is a valid ``Event`` protobuf whose shapes (huge,
negative, zero dims), dtypes, tag lengths (0..5000), plugin names and metadata, nesting and
sizes are drawn by hypothesis. Properties, with small limits so that breaking them shows:

* ``decode_event`` raises nothing but ``UndecodableEvent``;
* converting what it decoded for W&B (``convert_row``) raises nothing;
* neither allocates beyond what the limits allow (tracemalloc's peak: Python objects and numpy
  arrays), whatever the record declares.

The issue's named cases run as explicit examples.
"""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

import hostile_payloads as hp
from tracelet_daemon.backends.wandb.convert import convert_row
from tracelet_daemon.events import UndecodableEvent, decode_event
from tracelet_daemon.limits import Limits
from tracelet_daemon.values import Row

LIMITS = Limits(max_tensor_elements=50_000, max_image_pixels=250_000, max_text_bytes=64 << 10,
                max_table_rows=5_000, max_decoded_bytes=8 << 20)
# what decoding and converting one record may allocate under LIMITS (50k elements are ~2 MB of
# floats; a 5,000-row table ~2 MB): far below what any of the declared sizes would take
PEAK_BYTES = 48 << 20

SMALL_PNG = hp.png(3, 2, color=90)
WAV = (b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00\x80>\x00\x00\x02\x00\x10\x00"
       b"data\x00\x00\x00\x00")

_tags = st.one_of(
    st.text(max_size=12),
    st.integers(0, 5000).map(lambda n: "t" * n),
    st.integers(1, 5000).map(lambda n: "x/image/" + "9" * n),
    st.sampled_from(["", "a/" * 400 + "b", "x\x00y", "../../etc/passwd", "/abs", "run_metadata/x", "loss/text_summary",
                     "_step", "global_step", "m_VERTEX", "m_FACE", "m_COLOR", "q/audio/0", "q/image/1"]),
)
_dims = st.lists(st.one_of(st.integers(-3, 6), st.sampled_from([0, -1, 2**31, 2**40, 2**62, 2**63 - 1, -(2**63),
                                                                  10**7, 3 * 10**6, -(10**8)])), max_size=4)
_dtypes = st.one_of(st.sampled_from(list(types_pb2.DataType.values())), st.integers(0, 300))
_plugins = st.one_of(st.sampled_from(["", "scalars", "histograms", "images", "text", "audio", "pr_curves", "hparams",
                                      "mesh", "custom_scalars", "graph_keras_model", "nope"]), st.text(max_size=6))
_floats = st.lists(st.floats(width=32), max_size=8)
_images = st.sampled_from([SMALL_PNG, hp.png_header(100_000, 100_000), hp.png_header(600, 600), hp.png_header(0, 7),
                           b"GIF89a" + b"\x00" * 16, b"\xff\xd8\xff\xe0garbage", b"", b"not an image"])


@st.composite
def _tensors(draw) -> tensor_pb2.TensorProto:
    t = tensor_pb2.TensorProto(dtype=draw(_dtypes), tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in draw(_dims)]))
    fill = draw(st.sampled_from(["float", "double", "int", "int64", "half", "bool", "string", "content", "none"]))
    if fill == "float":
        t.float_val.extend(draw(_floats))
    elif fill == "double":
        t.double_val.extend(draw(st.lists(st.floats(), max_size=8)))
    elif fill in ("int", "half"):
        getattr(t, f"{fill}_val").extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8)))
    elif fill == "int64":
        t.int64_val.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8)))
    elif fill == "bool":
        t.bool_val.extend(draw(st.lists(st.booleans(), max_size=8)))
    elif fill == "string":
        t.string_val.extend(draw(st.lists(st.one_of(st.binary(max_size=16), _images, st.just(WAV),
                                                    st.sampled_from([b"3", b"2", b"-1", b"1" * 5000])),
                                          max_size=6)))
    elif fill == "content":
        t.tensor_content = draw(st.binary(max_size=96))
    return t


@st.composite
def _values(draw) -> summary_pb2.Summary.Value:
    v = summary_pb2.Summary.Value(tag=draw(_tags))
    plugin = draw(_plugins)
    if plugin or draw(st.booleans()):
        if plugin == "hparams" and draw(st.booleans()):
            content = hp.hparams_content(draw(st.integers(0, 120)), draw(_tags))
        else:
            content = draw(st.binary(max_size=24))
        v.metadata.plugin_data.plugin_name = plugin
        v.metadata.plugin_data.content = content
    kind = draw(st.sampled_from(["simple", "histo", "image", "audio", "tensor", "empty"]))
    if kind == "simple":
        v.simple_value = draw(st.floats(width=32))
    elif kind == "histo":
        n = draw(st.integers(0, 6))
        v.histo.CopyFrom(summary_pb2.HistogramProto(
            min=draw(st.floats()), max=draw(st.floats()), bucket=draw(st.lists(st.floats(), min_size=n, max_size=n)),
            bucket_limit=draw(st.lists(st.floats(), min_size=draw(st.sampled_from([n, 0, n + 1])),
                                       max_size=n + 1))))
    elif kind == "image":
        v.image.CopyFrom(summary_pb2.Summary.Image(height=draw(st.integers(-5, 2**31 - 1)), width=7,
                                                   encoded_image_string=draw(_images)))
    elif kind == "audio":
        v.audio.CopyFrom(summary_pb2.Summary.Audio(sample_rate=draw(st.floats(width=32)), num_channels=1,
                                                   length_frames=draw(st.integers(-1, 2**40)),
                                                   encoded_audio_string=draw(st.sampled_from([WAV, b"", b"RIFF"]))))
    elif kind == "tensor":
        v.tensor.CopyFrom(draw(_tensors()))
    return v


@st.composite
def events(draw) -> bytes:
    ev = event_pb2.Event(wall_time=draw(st.floats()), step=draw(st.integers(-(2**63), 2**63 - 1)))
    which = draw(st.sampled_from(["summary"] * 6 + ["graph", "run_metadata", "meta_graph"]))
    if which == "summary":
        ev.summary.value.extend(draw(st.lists(_values(), min_size=1, max_size=4)))
    elif which == "graph":
        ev.graph_def = draw(st.binary(max_size=64))
    elif which == "meta_graph":
        ev.meta_graph_def = draw(st.binary(max_size=64))
    else:
        ev.tagged_run_metadata.tag = draw(_tags)
        ev.tagged_run_metadata.run_metadata = draw(st.binary(max_size=64))
    return ev.SerializeToString()


def _half_overflow() -> bytes:
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF, half_val=[70_000])
    return hp.event(1, hp.tensor_value("h", "scalars", t))


def _negative_dims() -> bytes:
    """Two "unknown" dimensions whose product numpy computes as 10^8: a broadcast all the same."""
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, tensor_shape=hp._shape(-1, -(10**8)), double_val=[1.0])
    return hp.event(1, hp.tensor_value("h", "histograms", t))


@pytest.fixture(scope="module")
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payload=events())
@example(payload=hp.huge_shape_histogram())
@example(payload=hp.broadcast_histogram(10**7))
@example(payload=hp.broadcast_histogram(10**8))
@example(payload=hp.broadcast_text(10**6))
@example(payload=hp.tf1_image("x/image/" + "1" * 5000, SMALL_PNG))
@example(payload=hp.run_metadata("t" * 300))
@example(payload=hp.custom_scalars("c" * 300))
@example(payload=hp.image_batch([hp.png_header(12000, 12000)] * 5, 12000, 12000))
@example(payload=hp.image_batch([hp.png_header(400, 400)] * 5, 400, 400))  # each fits, together they do not
@example(payload=hp.nested_hparams(100_000))
@example(payload=hp.empty_values(400_000))
@example(payload=_half_overflow())
@example(payload=_negative_dims())
def test_hostile_meaning_only_raises_undecodable_and_stays_within_limits(traced, payload):
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    try:
        ev = decode_event(payload, {}, limits=LIMITS)
    except UndecodableEvent as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400  # one short line for the log
        ev = None
    if ev is not None:
        warnings: list[tuple[str, str]] = []
        convert_row(Row(0, ev.step, ev.wall_time, dict(ev.values)), lambda key, msg: warnings.append((key, msg)))
        assert all("\n" not in msg and len(msg) < 1000 for _key, msg in warnings)
    _, peak = tracemalloc.get_traced_memory()
    assert peak - base < PEAK_BYTES, f"{(peak - base) >> 20} MiB allocated"


@pytest.mark.parametrize("payload, limit", [
    (hp.huge_shape_histogram(), "max_tensor_elements"),
    (hp.broadcast_histogram(60_000), "max_tensor_elements"),
    (hp.image_batch([hp.png_header(600, 600)], 600, 600), "max_image_pixels"),
    (hp.image_batch([hp.png_header(400, 400)] * 2, 400, 400), "max_image_pixels"),
    (hp.empty_values(400_000), "max_decoded_bytes"),
])
def test_a_limit_hit_names_the_limit_and_its_variable(payload, limit):
    with pytest.raises(UndecodableEvent, match=rf"{limit}=\d+ \(raise it with TRACELET_{limit.upper()}\)"):
        decode_event(payload, {}, limits=LIMITS)


def test_what_fits_the_limits_still_decodes():
    ev = decode_event(hp.image_batch([SMALL_PNG] * 3, 3, 2), {}, limits=LIMITS)
    assert [k for k, _v in ev.values] == ["samples"] and len(ev.values[0][1].images) == 3
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=hp._shape(4), string_val=[b"same"])
    ev = decode_event(hp.event(3, hp.tensor_value("notes", "text", t)), {}, limits=LIMITS)
    assert ev.values[0][1].strings == ("same",) * 4  # a small broadcast is still expanded
