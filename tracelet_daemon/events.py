"""Decode one ``Event`` protobuf into typed values.

Each summary value is routed by (oneof field, plugin name) to one small function registered
with ``@decoder``; adding a type is one such function. TF2 writes the plugin metadata only on
the first summary of each tag, so callers pass a per-file ``plugins`` dict that remembers it.
A value nobody decodes is returned in ``Event.skipped``, so it can be reported, never dropped
silently.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, MutableMapping

import numpy as np
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, types_pb2

from .values import Event, Histogram, Image, ImageBatch, Value

Decoder = Callable[[object], "Value | None"]
_DECODERS: dict[str, Decoder] = {}

_ParseEvent = event_pb2.Event.FromString


class UndecodableEvent(ValueError):
    """The payload passed its checksum but is not an Event protobuf."""


def decoder(*keys: str) -> Callable[[Decoder], Decoder]:
    """Register a decoder for ``"<oneof>"`` or ``"<oneof>:<plugin>"``."""

    def register(fn: Decoder) -> Decoder:
        for key in keys:
            _DECODERS[key] = fn
        return fn

    return register


_F64 = struct.Struct("<d")
_F32 = struct.Struct("<f")


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def _fast_scalars(buf: bytes) -> Event | None:
    """Decode an Event holding only simple_value summaries straight from the wire format.

    Most events in real logs are exactly that (one add_scalar each), and reading fields through
    the protobuf runtime costs ~5x the parse itself. Anything this does not fully understand
    returns None and goes through protobuf instead, so the result is always the same.
    """
    wall_time, step, values, i, n = 0.0, 0, [], 0, len(buf)
    try:
        while i < n:
            key = buf[i]
            i += 1
            if key == 0x09:  # wall_time, fixed64
                (wall_time,) = _F64.unpack_from(buf, i)
                i += 8
            elif key == 0x10:  # step, varint
                step, i = _varint(buf, i)
                if step >= 1 << 63:
                    step -= 1 << 64
            elif key == 0x2A:  # summary
                size, i = _varint(buf, i)
                end = i + size
                if end > n:
                    return None
                while i < end:
                    if buf[i] != 0x0A:  # Summary.value
                        return None
                    vsize, i = _varint(buf, i + 1)
                    vend = i + vsize
                    tag, value = "", None
                    while i < vend:
                        vkey = buf[i]
                        if vkey == 0x0A:  # tag
                            tsize, i = _varint(buf, i + 1)
                            tag = buf[i : i + tsize].decode("utf-8")
                            i += tsize
                        elif vkey == 0x15:  # simple_value, fixed32
                            (value,) = _F32.unpack_from(buf, i + 1)
                            i += 5
                        else:
                            return None
                    if value is None or i != vend:
                        return None
                    values.append((tag, value))
                if i != end:
                    return None
            else:
                return None
    except (IndexError, UnicodeDecodeError, struct.error):
        return None
    if i != n or not values:
        return None
    return Event(step, wall_time, values, [])


def decode_event(payload: bytes, plugins: MutableMapping[str, str]) -> Event | None:
    """Typed values of one event; None for events without a summary (file_version, graphs)."""
    fast = _fast_scalars(payload)
    if fast is not None:
        return fast
    return _decode_proto(payload, plugins)


def _decode_proto(payload: bytes, plugins: MutableMapping[str, str]) -> Event | None:
    try:
        ev = _ParseEvent(payload)
    except DecodeError as exc:
        raise UndecodableEvent(str(exc)) from exc
    if not ev.HasField("summary"):
        return None
    values: list[tuple[str, Value]] = []
    skipped: list[tuple[str, str]] = []
    for v in ev.summary.value:
        kind = v.WhichOneof("value")
        if kind == "simple_value":
            values.append((v.tag, v.simple_value))
            continue
        if kind is None:
            continue
        plugin = v.metadata.plugin_data.plugin_name
        if plugin:
            plugins.setdefault(v.tag, plugin)
        else:
            plugin = plugins.get(v.tag, "")
        fn = _DECODERS.get(f"{kind}:{plugin}") or _DECODERS.get(kind)
        value = fn(getattr(v, kind)) if fn is not None else None
        if value is None:
            skipped.append((v.tag, f"{kind}:{plugin}" if plugin else kind))
        else:
            values.append((v.tag, value))
    return Event(ev.step, ev.wall_time, values, skipped)


# -- TF1-style summaries -------------------------------------------------------------------


@decoder("histo")
def _histogram_proto(h) -> Histogram | None:
    counts = tuple(h.bucket)
    limits = tuple(h.bucket_limit)
    if not counts or len(counts) != len(limits):
        return None
    lo, hi = h.min, h.max
    # bucket i spans (limit[i-1], limit[i]]; the outer limits can be +-DBL_MAX: clamp to min/max
    edges = [lo] + [min(max(x, lo), hi) for x in limits[:-1]] + [hi]
    return Histogram(tuple(edges), counts)


@decoder("image")
def _image_proto(img) -> Image | None:
    if not img.encoded_image_string:
        return None
    return Image(img.encoded_image_string, img.width, img.height)


# -- TF2-style tensor summaries --------------------------------------------------------------

_NUMPY_DTYPES = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_HALF: (np.float16, "half_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"),
}


def tensor_array(t) -> np.ndarray | None:
    """A TensorProto as a numpy array (numeric dtypes), without TensorFlow."""
    spec = _NUMPY_DTYPES.get(t.dtype)
    if spec is None:
        return None
    dtype, field = spec
    shape = tuple(d.size for d in t.tensor_shape.dim)
    if t.tensor_content:
        arr = np.frombuffer(t.tensor_content, dtype=dtype)
    else:
        raw = getattr(t, field)
        if t.dtype == types_pb2.DT_HALF:  # stored as uint16 bit patterns in int32 slots
            arr = np.asarray(raw, dtype=np.uint16).view(np.float16)
        else:
            arr = np.asarray(raw, dtype=dtype)
        n = int(np.prod(shape)) if shape else 1
        if arr.size == 1 and n > 1:
            arr = np.full(n, arr[0], dtype=arr.dtype)
    try:
        return arr.reshape(shape)
    except ValueError:
        return None


@decoder("tensor:scalars", "tensor")
def _tensor_scalar(t) -> float | None:
    if t.dtype == types_pb2.DT_FLOAT and len(t.float_val) == 1 and not t.tensor_shape.dim:
        return float(t.float_val[0])
    arr = tensor_array(t)
    if arr is None or arr.size != 1 or arr.ndim > 1:
        return None
    return float(arr.reshape(()))


@decoder("tensor:histograms")
def _tensor_histogram(t) -> Histogram | None:
    arr = tensor_array(t)
    if arr is None or arr.ndim != 2 or arr.shape[1] != 3:
        return None
    if arr.shape[0] == 0:
        return Histogram((0.0, 0.0), (0.0,))
    lefts, rights, counts = arr[:, 0], arr[:, 1], arr[:, 2]
    edges = tuple(float(x) for x in lefts) + (float(rights[-1]),)
    return Histogram(edges, tuple(float(c) for c in counts))


@decoder("tensor:images")
def _tensor_images(t) -> Image | ImageBatch | None:
    # TF2: a string tensor [width, height, encoded_1, ..., encoded_n]
    if t.dtype != types_pb2.DT_STRING or len(t.string_val) < 3:
        return None
    try:
        width, height = int(t.string_val[0]), int(t.string_val[1])
    except ValueError:
        return None
    images = tuple(Image(bytes(b), width, height) for b in t.string_val[2:])
    return images[0] if len(images) == 1 else ImageBatch(images)
