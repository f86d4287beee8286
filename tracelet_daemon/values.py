"""Typed values: the vocabulary shared by the decoder, the run mapper and the backends.

A backend sees these and run metadata, never bytes or protobufs. Scalars are plain ``float``
(the hot path: hundreds of thousands a second); richer kinds are small frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True, slots=True)
class Histogram:
    """Bucketed counts: ``edges`` has one more entry than ``counts``; edges[0] is the minimum."""

    edges: tuple[float, ...]
    counts: tuple[float, ...]

    @property
    def total(self) -> float:
        return float(sum(self.counts))

    def rebinned(self, max_bins: int) -> Histogram:
        """Merge runs of adjacent buckets so at most `max_bins` remain; counts sum unchanged."""
        n = len(self.counts)
        if n <= max_bins:
            return self
        group = -(-n // max_bins)  # ceil
        counts = tuple(sum(self.counts[i : i + group]) for i in range(0, n, group))
        edges = tuple(self.edges[i] for i in range(0, n, group)) + (self.edges[-1],)
        return Histogram(edges, counts)


@dataclass(frozen=True, slots=True)
class Image:
    """One encoded image (PNG, JPEG or GIF bytes as the writer stored them)."""

    encoded: bytes
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class ImageBatch:
    """Several images logged under one tag at one step (``add_images``, TF2 image summaries)."""

    images: tuple[Image, ...]


@dataclass(frozen=True, slots=True)
class Video:
    """An encoded clip (GIF, as tensorboardX/torch ``add_video`` store it in an image summary)."""

    encoded: bytes
    format: str = "gif"
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class Text:
    """A string tensor (``add_text``, ``tf.summary.text``): 0-D, 1-D or 2-D, row-major.

    ``shape`` is the tensor's shape; ``strings`` holds every element (UTF-8 decoded, undecodable
    bytes replaced). TensorBoard renders each element as markdown and a 2-D tensor as a table.
    """

    strings: tuple[str, ...]
    shape: tuple[int, ...] = ()

    def rows(self) -> list[list[str]]:
        """The elements as table rows: one row per element for 0-D/1-D, one per row for 2-D+."""
        if len(self.shape) < 2:
            return [[s] for s in self.strings]
        width = self.shape[-1] or 1
        return [list(self.strings[i : i + width]) for i in range(0, len(self.strings), width)]


@dataclass(frozen=True, slots=True)
class Audio:
    """One encoded clip (WAV as every common writer stores it), with what the event says of it."""

    encoded: bytes
    sample_rate: float = 0.0
    content_type: str = "audio/wav"
    label: str = ""  # TF2 audio summaries carry a markdown label per clip
    frames: int = 0  # 0: unknown
    channels: int = 0


@dataclass(frozen=True, slots=True)
class AudioBatch:
    """Several clips logged under one tag at one step (TF2 audio summaries, TF1 ``x/audio/N``)."""

    clips: tuple[Audio, ...]


@dataclass(frozen=True, slots=True)
class PRCurve:
    """A precision-recall curve as the pr_curves plugin stores it: one entry per threshold.

    Threshold ``i`` of ``n`` is ``i / (n - 1)`` (the plugin's convention).
    """

    true_positives: tuple[float, ...]
    false_positives: tuple[float, ...]
    true_negatives: tuple[float, ...]
    false_negatives: tuple[float, ...]
    precision: tuple[float, ...]
    recall: tuple[float, ...]

    @property
    def thresholds(self) -> tuple[float, ...]:
        n = len(self.precision)
        return tuple(i / (n - 1) for i in range(n)) if n > 1 else (0.0,) * n


@dataclass(frozen=True, slots=True)
class HParams:
    """Hyperparameters of one session (hparams plugin ``session_start_info``): run config.

    ``values`` are (name, value) pairs in name order; a value is a float, str, bool, None, or a
    list/dict of those (``google.protobuf.Value``). Their metrics arrive as ordinary scalars.
    """

    values: tuple[tuple[str, object], ...]

    def as_dict(self) -> dict[str, object]:
        return dict(self.values)


@dataclass(frozen=True, slots=True)
class Mesh:
    """A 3D mesh or point cloud (``add_mesh``, the mesh plugin), or some of its parts.

    TensorBoard stores vertices, faces (vertex indices, three per triangle) and colors (0-255 per
    channel, one per vertex) as separate ``[B, n, 3]`` tensors: several summary values of one event
    (torch, tensorboardX) or one event each (TF2), combined with `merged`. Each part is kept as
    float32 little-endian bytes, empty if absent; `batch` is B, one mesh per batch item.
    """

    vertices: bytes = b""
    faces: bytes = b""
    colors: bytes = b""
    batch: int = 1

    def merged(self, other: Mesh) -> Mesh | None:
        """One value holding the parts of both; None if both hold the same part or batch sizes differ."""
        if self.batch != other.batch or any(a and b for a, b in ((self.vertices, other.vertices),
                                                                 (self.faces, other.faces),
                                                                 (self.colors, other.colors))):
            return None
        return Mesh(self.vertices or other.vertices, self.faces or other.faces, self.colors or other.colors,
                    self.batch)


@dataclass(frozen=True, slots=True)
class RunFile:
    """Something kept as a file of the run rather than as history (graphs, model configs, ...).

    The backend names it after the value's key plus ``suffix`` (e.g. ``graph`` + ``.pbtxt``).
    """

    content: bytes
    suffix: str = ""
    description: str = ""


Value = Union[float, Histogram, Image, ImageBatch, Video, Text, Audio, AudioBatch, PRCurve, HParams, Mesh,
              RunFile]


@dataclass(slots=True)
class Event:
    """The values one TensorBoard event carried, already named by tag."""

    step: int
    wall_time: float
    values: list[tuple[str, Value]]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (tag, kind) not understood


@dataclass(slots=True)
class Row:
    """One row for a backend: all values of one step of one run that arrived together.

    ``seq`` numbers rows of a run from 0, forever, across restarts; backends store it so the
    engine can ask them, after a crash, how far they really got.
    """

    seq: int
    step: int
    wall_time: float
    values: dict[str, Value] = field(default_factory=dict)
