"""Decode one ``Event`` protobuf into typed values.

Each summary value is routed by (oneof field, plugin name) to one small function registered
with ``@decoder``; adding a type is one such function. TF2 writes the plugin metadata only on
the first summary of each tag, so callers pass a per-file ``plugins`` dict that remembers it.
A value nobody decodes is returned in ``Event.skipped``, so it can be reported, never dropped
silently. Event-level data (graphs, run metadata) becomes ``RunFile`` values under fixed tags.
See docs/data-types.md for what each writer's data becomes.
"""

from __future__ import annotations

import io
import re
import struct
import wave
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, types_pb2

from . import wirecost
from .wirecost import varint
from .budget import RecordBudget, one_line, over_limit
from .limits import DEFAULT, Limits
from .values import (Audio, AudioBatch, Event, HParams, Histogram, Image, ImageBatch, Mesh, PRCurve, RunFile,
                     Text, Value, Video)

# A decoder gets the summary value's payload (the oneof field, None for metadata-only values) and
# its SummaryMetadata; it returns a Value, CONSUMED (understood, nothing to replay), a NotReplayed
# (understood, nothing to replay, reported under its kind) or None (not understood: reported).
Decoder = Callable[[object, object], object]
_DECODERS: dict[str, Decoder] = {}
CONSUMED = object()


@dataclass(frozen=True)
class NotReplayed:
    """Data a decoder understood that has no counterpart to replay into; named in the report."""

    kind: str

# tags of event-level data (not summaries)
GRAPH_TAG = "graph"
META_GRAPH_TAG = "meta_graph"
RUN_METADATA_TAG = "run_metadata"
TEXT_SUFFIX = "/text_summary"  # torch and tensorboardX add_text append it to the tag

_ParseEvent = event_pb2.Event.FromString


class UndecodableEvent(ValueError):
    """The payload passed its checksum but is not an Event protobuf."""


def decoder(*keys: str) -> Callable[[Decoder], Decoder]:
    """Register a decoder for ``"<oneof>"`` or ``"<oneof>:<plugin>"``.

    ``<oneof>`` is the Summary.Value field set (``simple_value``, ``histo``, ``image``, ``audio``,
    ``tensor``) or ``empty`` for a value that carries only metadata (the hparams plugin).
    """

    def register(fn: Decoder) -> Decoder:
        for key in keys:
            _DECODERS[key] = fn
        return fn

    return register


_F64 = struct.Struct("<d")
_F32 = struct.Struct("<f")


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
                step, i = varint(buf, i, n)
                if step >= 1 << 63:
                    step -= 1 << 64
            elif key == 0x2A:  # summary
                size, i = varint(buf, i, n)
                end = i + size
                if end > n:
                    return None
                while i < end:
                    if buf[i] != 0x0A:  # Summary.value
                        return None
                    vsize, i = varint(buf, i + 1, n)
                    vend = i + vsize
                    tag, value = "", None
                    while i < vend:
                        vkey = buf[i]
                        if vkey == 0x0A:  # tag
                            tsize, i = varint(buf, i + 1, n)
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
    except (IndexError, UnicodeDecodeError, struct.error, wirecost.WireError):
        return None
    if i != n or not values:
        return None
    return Event(step, wall_time, values, [])


# The commonest event of all, one add_scalar: wall_time, step, one value with a short tag. The
# regex (run in C) pins every field key and one-byte length; the lengths are then cross-checked.
_ONE_SCALAR = re.compile(rb"\x09.{8}\x10([\x80-\xff]{0,8}[\x00-\x7f])\x2a([\x00-\x7f])\x0a([\x00-\x7f])\x0a([\x00-\x7f])",
                         re.DOTALL)


def _one_scalar(buf: bytes) -> Event | None:
    m = _ONE_SCALAR.match(buf)
    if m is None:
        return None
    tag_at = m.end()
    tag_end = tag_at + buf[tag_at - 1]
    if (len(buf) != tag_end + 5 or buf[tag_end] != 0x15 or buf[tag_at - 3] != buf[tag_at - 1] + 7
            or buf[tag_at - 5] != buf[tag_at - 1] + 9):
        return None
    try:
        tag = buf[tag_at:tag_end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    step = shift = 0
    for b in m.group(1):
        step |= (b & 0x7F) << shift
        shift += 7
    if step >= 1 << 63:
        step -= 1 << 64
    return Event(step, _F64.unpack_from(buf, 1)[0], [(tag, _F32.unpack_from(buf, tag_end + 1)[0])], [])


def decode_event(payload: bytes, plugins: MutableMapping[str, str], *, limits: Limits = DEFAULT) -> Event | None:
    """Typed values of one event; None for events with nothing to replay (file_version, ...).

    Raises nothing but UndecodableEvent: for bytes that are not an event, for a record over a
    limit (the message names the tag, the limit and its variable) and for anything else going
    wrong inside, so one hostile record can never stop its file, its run or the daemon.
    """
    try:
        if wirecost.may_exceed(len(payload), limits.max_decoded_bytes):
            _check_wire_cost(payload, limits)
        fast = _one_scalar(payload)
        if fast is not None:
            return fast
        fast = _fast_scalars(payload)
        if fast is not None:
            return fast
        return _decode_proto(payload, plugins, limits)
    except UndecodableEvent:
        raise
    except Exception as exc:  # noqa: BLE001 - MemoryError, RecursionError, a decoder's bug: one record
        raise UndecodableEvent(one_line(exc)) from exc


def _check_wire_cost(payload: bytes, limits: Limits) -> None:
    """Refuse a large record whose protobuf would parse into more memory than the limit allows."""
    budget = limits.max_decoded_bytes
    try:
        cost = wirecost.estimate(payload, event_pb2.Event.DESCRIPTOR, budget)
    except wirecost.WireError as exc:
        raise UndecodableEvent(f"not an event protobuf ({exc})") from None
    if cost > budget:
        raise over_limit(None, f"a record of {len(payload)} bytes parsing into more than {budget} bytes of"
                         " objects", limits, "max_decoded_bytes")


def _check_value(budget: RecordBudget, kind: str, v, plugin: str) -> None:
    """Refuse the record before a value is decoded into more than the limits allow."""
    if v.metadata.plugin_data.content:
        budget.nested(v.tag, len(v.metadata.plugin_data.content))
    if kind == "tensor":
        budget.tensor(v.tag, v.tensor, plugin)
    elif kind == "histo":
        budget.histogram_proto(v.tag, v.histo)
    elif kind == "image" and v.image.encoded_image_string[:4] != b"GIF8":
        budget.images(v.tag, (v.image.encoded_image_string,))


def _decode_proto(payload: bytes, plugins: MutableMapping[str, str], limits: Limits = DEFAULT) -> Event | None:
    try:
        ev = _ParseEvent(payload)
    except DecodeError as exc:
        raise UndecodableEvent(str(exc)) from exc
    budget = RecordBudget(limits, len(payload))
    what = ev.WhichOneof("what")
    if what != "summary":
        value = _event_level(ev, what)
        return None if value is None else Event(ev.step, ev.wall_time, [value], [])
    values: list[tuple[str, Value]] = []
    skipped: list[tuple[str, str]] = []
    batched = False
    for v in ev.summary.value:
        kind = v.WhichOneof("value")
        if kind == "simple_value":
            values.append((v.tag, v.simple_value))
            continue
        plugin = v.metadata.plugin_data.plugin_name
        if plugin:
            plugins.setdefault(v.tag, plugin)
        else:
            plugin = plugins.get(v.tag, "")
        kind = kind or "empty"
        fn = _DECODERS.get(f"{kind}:{plugin}")
        if fn is None and (not plugin or kind not in ("tensor", "empty")):
            fn = _DECODERS.get(kind)  # TF1 fields; a tensor of an unknown plugin is not guessed at
        if fn is not None:
            _check_value(budget, kind, v, plugin)
        value = fn(getattr(v, kind) if kind != "empty" else None, v.metadata) if fn is not None else None
        if value is CONSUMED:
            continue
        if isinstance(value, NotReplayed):
            skipped.append((v.tag, value.kind))
            continue
        if isinstance(value, _MeshPart):
            value = _mesh(v.tag, value)
        if value is None:
            what_kind = f"{kind}:{plugin}" if plugin else kind
            skipped.append((v.tag, "no data" if what_kind == "empty" else what_kind))
            continue
        tag = v.tag
        if isinstance(value, tuple):  # a mesh part, named by its mesh
            tag, value = value
        if isinstance(value, Text) and tag.endswith(TEXT_SUFFIX) and len(tag) > len(TEXT_SUFFIX):
            tag = tag[: -len(TEXT_SUFFIX)]
        batched = batched or (kind in ("image", "audio") and _TF1_ITEM.match(tag) is not None)
        values.append((tag, value))
    if batched:
        values = _merge_tf1_items(values)
    return Event(ev.step, ev.wall_time, values, skipped)


# TF1 image/audio summaries with max_outputs > 1 write one value per item: "<name>/image/<i>"
_TF1_ITEM = re.compile(r"(.+/(?:image|audio))/(\d{1,9})")  # more digits: not an item number


def _merge_tf1_items(values: list[tuple[str, Value]]) -> list[tuple[str, Value]]:
    """``x/image/0..n-1`` of one event → one ImageBatch ``x/image`` (audio alike), in order.

    TF1 numbers the items whenever ``max_outputs > 1``, however many the batch had, so a lone
    ``x/image/0`` is the same series with one item: it becomes the single value ``x/image``.
    """
    groups: dict[str, dict[int, Value]] = {}
    for tag, value in values:
        m = _TF1_ITEM.fullmatch(tag)
        if m and isinstance(value, (Image, Audio)):
            groups.setdefault(m.group(1), {})[int(m.group(2))] = value
    merged: dict[str, Value] = {}
    for base, items in groups.items():
        kinds = {type(v) for v in items.values()}
        if sorted(items) != list(range(len(items))) or len(kinds) != 1:
            continue
        ordered = tuple(items[i] for i in range(len(items)))
        if len(ordered) == 1:
            merged[base] = ordered[0]
        else:
            merged[base] = ImageBatch(ordered) if kinds == {Image} else AudioBatch(ordered)  # type: ignore
    if not merged:
        return values
    out: list[tuple[str, Value]] = []
    for tag, value in values:
        m = _TF1_ITEM.fullmatch(tag)
        if m and m.group(1) in merged:
            if m.group(2) == "0":
                out.append((m.group(1), merged[m.group(1)]))
            continue
        out.append((tag, value))
    return out


# -- event-level data: graphs and run metadata --------------------------------------------------


_TEXT_FORM_MAX = 1 << 20  # larger messages stay binary: parsing and printing them costs ~50x their size


def _as_text_proto(data: bytes, message_cls) -> tuple[bytes, str]:
    """Protobuf text format (readable in W&B's file browser), or the raw bytes if unparseable or large."""
    from google.protobuf import text_format

    if len(data) > _TEXT_FORM_MAX:
        return bytes(data), ".pb"
    try:
        msg = message_cls.FromString(data)
        return text_format.MessageToString(msg).encode("utf-8"), ".pbtxt"
    except Exception:  # noqa: BLE001 - keep what the writer wrote
        return bytes(data), ".pb"


def _event_level(ev, what: str | None) -> tuple[str, Value] | None:
    if what == "graph_def":
        from tensorboard.compat.proto import graph_pb2

        content, suffix = _as_text_proto(ev.graph_def, graph_pb2.GraphDef)
        return GRAPH_TAG, RunFile(content, suffix, "TensorBoard graph (GraphDef)")
    if what == "meta_graph_def":
        from tensorboard.compat.proto import meta_graph_pb2

        content, suffix = _as_text_proto(ev.meta_graph_def, meta_graph_pb2.MetaGraphDef)
        return META_GRAPH_TAG, RunFile(content, suffix, "TensorBoard meta graph (MetaGraphDef)")
    if what == "tagged_run_metadata":
        from tensorboard.compat.proto import config_pb2

        trm = ev.tagged_run_metadata
        content, suffix = _as_text_proto(trm.run_metadata, config_pb2.RunMetadata)
        return f"{RUN_METADATA_TAG}/{trm.tag}", RunFile(content, suffix, "TensorBoard run metadata")
    return None  # file_version, session_log, log_message: nothing to replay


# -- TF1-style summaries -------------------------------------------------------------------


@decoder("histo")
def _histogram_proto(h, _meta=None) -> Histogram | None:
    counts = tuple(h.bucket)
    limits = tuple(h.bucket_limit)
    if not counts or len(counts) != len(limits):
        return None
    lo, hi = h.min, h.max
    # bucket i spans (limit[i-1], limit[i]]; the outer limits can be +-DBL_MAX: clamp to min/max
    edges = [lo] + [min(max(x, lo), hi) for x in limits[:-1]] + [hi]
    return Histogram(tuple(edges), counts)


@decoder("image")
def _image_proto(img, _meta=None) -> Image | Video | None:
    if not img.encoded_image_string:
        return None
    if img.encoded_image_string[:4] == b"GIF8":  # add_video: an animated GIF in an image summary
        return Video(img.encoded_image_string, "gif", img.width, img.height)
    return Image(img.encoded_image_string, img.width, img.height)


def _wav_info(encoded: bytes) -> tuple[int, int, int]:
    """(sample rate, frames, channels) from a WAV header; zeros if it is not a readable WAV."""
    try:
        with wave.open(io.BytesIO(encoded)) as w:
            return w.getframerate(), w.getnframes(), w.getnchannels()
    except (wave.Error, EOFError, OSError, ValueError):
        return 0, 0, 0


@decoder("audio")
def _audio_proto(a, _meta=None) -> Audio | None:
    if not a.encoded_audio_string:
        return None
    rate, frames, channels = _wav_info(a.encoded_audio_string)
    return Audio(a.encoded_audio_string, float(a.sample_rate or rate), a.content_type or "audio/wav",
                 "", int(a.length_frames or frames), int(a.num_channels or channels))


# -- TF2-style tensor summaries --------------------------------------------------------------

_NUMPY_DTYPES = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_HALF: (np.float16, "half_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"),
    types_pb2.DT_UINT8: (np.uint8, "int_val"),  # TF2 mesh colors
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
def _tensor_scalar(t, _meta=None) -> float | None:
    if t.dtype == types_pb2.DT_FLOAT and len(t.float_val) == 1 and not t.tensor_shape.dim:
        return float(t.float_val[0])
    arr = tensor_array(t)
    if arr is None or arr.size != 1 or arr.ndim > 1:
        return None
    return float(arr.reshape(()))


@decoder("tensor:histograms")
def _tensor_histogram(t, _meta=None) -> Histogram | None:
    arr = tensor_array(t)
    if arr is None or arr.ndim != 2 or arr.shape[1] != 3:
        return None
    if arr.shape[0] == 0:
        return Histogram((0.0, 0.0), (0.0,))
    lefts, rights, counts = arr[:, 0], arr[:, 1], arr[:, 2]
    edges = tuple(float(x) for x in lefts) + (float(rights[-1]),)
    return Histogram(edges, tuple(float(c) for c in counts))


@decoder("tensor:images")
def _tensor_images(t, _meta=None) -> Image | ImageBatch | None:
    # TF2: a string tensor [width, height, encoded_1, ..., encoded_n]
    if t.dtype != types_pb2.DT_STRING or len(t.string_val) < 3:
        return None
    try:
        width, height = int(t.string_val[0]), int(t.string_val[1])
    except ValueError:
        return None
    images = tuple(Image(bytes(b), width, height) for b in t.string_val[2:])
    return images[0] if len(images) == 1 else ImageBatch(images)


def _shape(t) -> tuple[int, ...]:
    return tuple(int(d.size) for d in t.tensor_shape.dim)


@decoder("tensor:text")
def _tensor_text(t, _meta=None) -> Text | None:
    # torch/tensorboardX: shape [1]; TF2 tf.summary.text: shape [] (or any rank: a table)
    if t.dtype != types_pb2.DT_STRING:
        return None
    strings = tuple(bytes(b).decode("utf-8", "replace") for b in t.string_val)
    shape = _shape(t)
    if int(np.prod(shape)) != len(strings):
        if len(strings) == 1 and int(np.prod(shape)) > 1:
            strings = strings * int(np.prod(shape))  # a broadcast constant
        else:
            shape = (len(strings),)
    if not strings:
        return None
    return Text(strings, shape)


@decoder("tensor:audio")
def _tensor_audio(t, _meta=None) -> Audio | AudioBatch | None:
    # TF2 (and the TF1 plugin op): a string tensor [k, 2] of (encoded clip, markdown label)
    if t.dtype != types_pb2.DT_STRING or not t.string_val:
        return None
    shape = _shape(t)
    items = [bytes(b) for b in t.string_val]
    if len(shape) == 2 and shape[1] == 2 and len(items) == 2 * shape[0]:
        pairs = [(items[2 * i], items[2 * i + 1]) for i in range(shape[0])]
    elif len(shape) <= 1:
        pairs = [(b, b"") for b in items]
    else:
        return None
    clips = []
    for encoded, label in pairs:
        rate, frames, channels = _wav_info(encoded)
        text = label.decode("utf-8", "replace")
        clips.append(Audio(encoded, float(rate), "audio/wav", text, frames, channels))
    if not clips:
        return None
    return clips[0] if len(clips) == 1 else AudioBatch(tuple(clips))


@decoder("tensor:pr_curves")
def _tensor_pr_curve(t, _meta=None) -> PRCurve | None:
    # rows: true positives, false positives, true negatives, false negatives, precision, recall
    arr = tensor_array(t)
    if arr is None or arr.ndim != 2 or arr.shape[0] != 6:
        return None
    rows = [tuple(float(x) for x in arr[i]) for i in range(6)]
    return PRCurve(*rows)


def _struct_value(v) -> object:
    """A google.protobuf.Value as plain Python."""
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        return v.number_value
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "list_value":
        return [_struct_value(x) for x in v.list_value.values]
    if kind == "struct_value":
        return {k: _struct_value(x) for k, x in sorted(v.struct_value.fields.items())}
    return None


@decoder("empty:hparams", "tensor:hparams")
def _hparams(_t, meta) -> HParams | object | None:
    # the hparams plugin keeps everything in the metadata; the tensor (if any) is a placeholder
    from tensorboard.plugins.hparams import plugin_data_pb2

    try:
        data = plugin_data_pb2.HParamsPluginData.FromString(meta.plugin_data.content)
    except DecodeError:
        return None
    which = data.WhichOneof("data")
    if which == "session_start_info":
        hp = data.session_start_info.hparams
        return HParams(tuple((name, _struct_value(hp[name])) for name in sorted(hp)))
    if which == "experiment":
        # hparam domains and metric names: TensorBoard bookkeeping with no W&B counterpart (the
        # hparams arrive with the session, the metrics as scalars)
        return NotReplayed("hparams experiment summary")
    if which == "session_end_info":
        return NotReplayed("hparams session end status")
    return None


# -- meshes: one tensor per part, combined into one Mesh per tag and step ------------------------

_MESH_PARTS = ("", "vertices", "faces", "colors")  # by MeshPluginData.ContentType: VERTEX=1, FACE, COLOR
# the tag of a part: "<mesh>_VERTEX" (torch, TF2; under TF2 name scopes) or "<mesh>_1" (tensorboardX)
_MESH_TAG = re.compile(r"(.+)_(VERTEX|FACE|COLOR|[123])", re.DOTALL)
_MESH_TYPES = {"VERTEX": 1, "FACE": 2, "COLOR": 3, "1": 1, "2": 2, "3": 3}


@dataclass(frozen=True)
class _MeshPart:
    """One tensor of a mesh before its tag names the mesh (TF2 writes a tag's metadata only once)."""

    data: bytes
    batch: int
    content_type: int  # 0: the metadata did not say


@decoder("tensor:mesh")
def _mesh_tensor(t, meta=None) -> _MeshPart | None:
    arr = tensor_array(t)
    if arr is None or arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        return None
    content_type = 0
    if meta is not None and meta.plugin_data.content:
        from tensorboard.plugins.mesh import plugin_data_pb2

        try:
            content_type = int(plugin_data_pb2.MeshPluginData.FromString(meta.plugin_data.content).content_type)
        except DecodeError:
            pass
    return _MeshPart(arr.astype("<f4").tobytes(), int(arr.shape[0]), content_type)


def _mesh(tag: str, part: _MeshPart) -> tuple[str, Mesh] | None:
    """(mesh tag, a Mesh holding `part`): the part's kind from its metadata, else from its tag."""
    m = _MESH_TAG.fullmatch(tag)
    content_type = part.content_type or (_MESH_TYPES[m.group(2)] if m else 0)
    if m is None or not 1 <= content_type <= 3:
        return None
    return m.group(1), Mesh(**{_MESH_PARTS[content_type]: part.data}, batch=part.batch)


@decoder("tensor:graph_keras_model")
def _keras_model(t, _meta=None) -> RunFile | None:
    # Keras' TensorBoard callback: the model's JSON config as a string scalar (tag "keras")
    if t.dtype != types_pb2.DT_STRING or len(t.string_val) != 1:
        return None
    return RunFile(bytes(t.string_val[0]), ".json", "Keras model config")


@decoder("tensor:custom_scalars")
def _custom_scalars(t, _meta=None) -> RunFile | None:
    # add_custom_scalars: a Layout proto describing TensorBoard's custom charts
    if t.dtype != types_pb2.DT_STRING or len(t.string_val) != 1:
        return None
    from tensorboard.plugins.custom_scalar import layout_pb2

    content, suffix = _as_text_proto(bytes(t.string_val[0]), layout_pb2.Layout)
    return RunFile(content, suffix, "TensorBoard custom scalars layout")
