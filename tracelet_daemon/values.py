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


Value = Union[float, Histogram, Image, ImageBatch]


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
