"""Deliberately hostile TensorBoard records (issue 11): a few bytes that declare gigabytes, tags no
file system or W&B takes, structures nested or wide enough to stop a parser.

Each builder returns one ``Event`` payload, built with TensorBoard's own protos; frame it with
``tracelet_daemon.records.frame``. Used by the tests and by ``bench/bench_bombs.py``.
"""

from __future__ import annotations

import os
import struct
import zlib

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

from tracelet_daemon.records import frame, masked_crc32c


def _shape(*dims: int) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


def _metadata(plugin: str, content: bytes = b"") -> summary_pb2.SummaryMetadata:
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin, content=content))


def event(step: int, *values: summary_pb2.Summary.Value, wall_time: float = 1.7e9) -> bytes:
    return event_pb2.Event(wall_time=wall_time, step=step, summary=summary_pb2.Summary(value=list(values))
                           ).SerializeToString()


def scalar(tag: str, step: int, value: float) -> bytes:
    return event(step, summary_pb2.Summary.Value(tag=tag, simple_value=value))


def tensor_value(tag: str, plugin: str, tensor: tensor_pb2.TensorProto, content: bytes = b""):
    return summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=_metadata(plugin, content))


def broadcast_histogram(elements: int, step: int = 1, tag: str = "weights") -> bytes:
    """A TF2 histogram tensor ``[elements / 3, 3]`` storing one double: ~157 bytes."""
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, tensor_shape=_shape(elements // 3, 3), double_val=[1.0])
    return event(step, tensor_value(tag, "histograms", t))


def huge_shape_histogram(step: int = 1, tag: str = "weights") -> bytes:
    """A histogram tensor of shape ``[2**40, 3]`` (one stored double, 159 bytes)."""
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, tensor_shape=_shape(2**40, 3), double_val=[1.0])
    return event(step, tensor_value(tag, "histograms", t))


def broadcast_text(elements: int, step: int = 1, tag: str = "notes") -> bytes:
    """A text tensor of `elements` entries storing one one-byte string: ~143 bytes."""
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(elements), string_val=[b"x"])
    return event(step, tensor_value(tag, "text", t))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _ihdr(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def png(width: int, height: int, color: int = 0) -> bytes:
    """A valid RGB PNG of any size, compressed as it is written (a 12000x12000 one is ~420 KB)."""
    z = zlib.compressobj(9)
    row = b"\x00" + bytes([color]) * (3 * width)
    parts = []
    rows_per_chunk = max(1, (4 << 20) // len(row))
    for start in range(0, height, rows_per_chunk):
        parts.append(z.compress(row * min(rows_per_chunk, height - start)))
    parts.append(z.flush())
    return _ihdr(width, height) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def png_header(width: int, height: int) -> bytes:
    """A PNG declaring `width` x `height` with no pixel data: what reads sizes sees a bomb."""
    return _ihdr(width, height) + _chunk(b"IDAT", b"") + _chunk(b"IEND", b"")


def image_batch(encoded: list[bytes], width: int, height: int, step: int = 1, tag: str = "samples") -> bytes:
    """A TF2 image summary: a string tensor ``[width, height, png, png, ...]``."""
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(2 + len(encoded)),
                               string_val=[str(width).encode(), str(height).encode(), *encoded])
    return event(step, tensor_value(tag, "images", t))


def tf1_image(tag: str, encoded: bytes, step: int = 1) -> bytes:
    """A TF1 image summary value (``Summary.Image``) under `tag`."""
    img = summary_pb2.Summary.Image(height=4, width=4, colorspace=3, encoded_image_string=encoded)
    return event(step, summary_pb2.Summary.Value(tag=tag, image=img))


def run_metadata(tag: str, step: int = 1) -> bytes:
    """TF's ``tagged_run_metadata`` (what ``add_graph``'s profiling writes) under `tag`."""
    from tensorboard.compat.proto import config_pb2, step_stats_pb2

    stats = step_stats_pb2.StepStats(dev_stats=[step_stats_pb2.DeviceStepStats(device="/cpu:0")])
    meta = config_pb2.RunMetadata(step_stats=stats).SerializeToString()
    ev = event_pb2.Event(wall_time=1.7e9, step=step,
                         tagged_run_metadata=event_pb2.TaggedRunMetadata(tag=tag, run_metadata=meta))
    return ev.SerializeToString()


def custom_scalars(tag: str, step: int = 1) -> bytes:
    """``add_custom_scalars``' layout (a Layout proto in a string tensor) under `tag`."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout(category=[layout_pb2.Category(title="losses", chart=[
        layout_pb2.Chart(title="loss", multiline=layout_pb2.MultilineChartContent(tag=["loss"]))])])
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(),
                               string_val=[layout.SerializeToString()])
    return event(step, tensor_value(tag, "custom_scalars", t))


def hparams_content(depth: int, name: str = "x") -> bytes:
    """hparams plugin metadata: a session whose one value `name` is a list nested `depth` deep.

    Written byte by byte: the protobuf library itself refuses to build nesting over 100.
    """
    inner = b"\x08\x00"  # Value{null_value: 0}
    for _ in range(depth):
        lst = b"\x0a" + _varint(len(inner)) + inner  # ListValue{values: inner}
        inner = b"\x32" + _varint(len(lst)) + lst  # Value{list_value: lst}
    key = name.encode()
    entry = b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(inner)) + inner  # map entry
    start = b"\x0a" + _varint(len(entry)) + entry  # SessionStartInfo{hparams: entry}
    return b"\x08\x00" + b"\x1a" + _varint(len(start)) + start  # HParamsPluginData{session_start_info}


def nested_hparams(depth: int, step: int = 1) -> bytes:
    """An hparams session whose one value is a list nested `depth` deep (the parser stops at 100)."""
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(), float_val=[0.0])
    return event(step, tensor_value("_hparams_/session_start_info", "hparams", t, hparams_content(depth)))


def empty_values(count: int, step: int = 1) -> bytes:
    """A summary of `count` empty values: 2 bytes each on the wire, ~90 bytes each once parsed."""
    summary = b"\x0a\x00" * count
    return (event_pb2.Event(wall_time=1.7e9, step=step).SerializeToString()
            + b"\x2a" + _varint(len(summary)) + summary)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def write_events(path: str, payloads: list[bytes]) -> None:
    """A tfevents file: TensorBoard's file_version event, then `payloads`, each framed."""
    head = event_pb2.Event(wall_time=1.7e9, file_version="brain.Event:2").SerializeToString()
    with open(path, "wb") as f:
        for payload in [head, *payloads]:
            f.write(frame(payload))


def write_sparse_record(path: str, payload_bytes: int) -> None:
    """A tfevents file whose second record claims `payload_bytes` of zeros, stored sparse.

    The length and its checksum are right, so a reader trusts the length; the payload's own
    checksum is not (computing it would read the gigabyte): the record is corrupt, framing intact.
    """
    write_events(path, [])
    with open(path, "ab") as f:
        length = struct.pack("<Q", payload_bytes)
        f.write(length + struct.pack("<I", masked_crc32c(length)))
        start = f.tell()
    os.truncate(path, start + payload_bytes + 4)
