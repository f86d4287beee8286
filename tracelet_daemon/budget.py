"""What one record may decode into, checked against the limits before anything is built.

A few bytes can declare gigabytes: a tensor whose shape says 10^7 elements with one stored value
(a "broadcast"), a PNG header saying 12000x12000, a string broadcast to a million table rows.
Every check here reads only the sizes a record states, never the data they describe, and a
record over a limit is refused as a whole (the engine skips, counts and reports it once per file).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass

from .limits import Limits
from .wirecost import WORST_RATIO, is_repeated


class RecordRefused(ValueError):
    """The record would cost more than the limits allow; the message names the tag and the limit."""


def one_line(exc: BaseException, keep: int = 300) -> str:
    """Why something was refused, on one short line (messages can quote hostile input)."""
    text = str(exc) if isinstance(exc, RecordRefused) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= keep else text[:keep] + "..."


def short_tag(tag: str, keep: int = 80) -> str:
    """A tag for a one-line message: repr-escaped and cut (hostile tags run to thousands of chars)."""
    return repr(tag) if len(tag) <= keep else repr(tag[:keep]) + f"... ({len(tag)} characters)"


def over_limit(tag: str | None, what: str, limits: Limits, name: str) -> RecordRefused:
    """The one-line reason of a hit: the tag, what it holds, the limit and how to raise it."""
    value = getattr(limits, name)
    where = "" if tag is None else f"tag {short_tag(tag)}: "
    return RecordRefused(f"{where}{what} is over the limit {name}={value} (raise it with TRACELET_{name.upper()})")


def open_image(encoded: bytes, max_pixels: int | None = None):
    """A lazily decoded PIL image (only its header is read); a size over `max_pixels` is an
    error. PIL's process-wide limit is left alone: in the shim this process is the user's
    training process. PIL still refuses, on its own, images over twice its limit."""
    from PIL import Image as PILImage

    try:
        pic = PILImage.open(io.BytesIO(encoded))
    except PILImage.DecompressionBombError:
        raise RecordRefused(f"an image of more than {2 * PILImage.MAX_IMAGE_PIXELS} pixels") from None
    width, height = pic.size
    if max_pixels is not None and width * height > max_pixels:
        pic.close()
        raise RecordRefused(f"an image of {width}x{height} pixels (more than {max_pixels})")
    return pic


def _stored(t) -> int:
    """Values a TensorProto actually stores (its repeated fields, or its packed content)."""
    n = len(t.tensor_content)
    for field, value in t.ListFields():
        if is_repeated(field):
            n += len(value)
    return n


def _declared(t) -> int:
    """Elements the shape declares, counting a negative ("unknown") dimension by its size: numpy's
    product of such a shape can still come out large, and no writer stores one in a summary."""
    return math.prod(abs(d.size) for d in t.tensor_shape.dim)


@dataclass
class RecordBudget:
    """The limits of one record, and what its values used up so far (limits hold per record too)."""

    limits: Limits
    record_bytes: int
    elements: int = 0
    pixels: int = 0
    nested_bytes: int = 0

    def _spend_elements(self, tag: str, n: int, what: str) -> None:
        if n > self.limits.max_tensor_elements:
            raise over_limit(tag, f"{what} of {n} elements", self.limits, "max_tensor_elements")
        self.elements += n
        if self.elements > self.limits.max_tensor_elements:
            raise over_limit(tag, f"this record's tensors ({self.elements} elements together)", self.limits,
                             "max_tensor_elements")

    def nested(self, tag: str, size: int) -> None:
        """`size` bytes of plugin metadata the decoder parses as a protobuf of its own."""
        self.nested_bytes += size
        if self.nested_bytes * WORST_RATIO > self.limits.max_decoded_bytes:
            raise over_limit(tag, f"plugin metadata of {self.nested_bytes} bytes", self.limits, "max_decoded_bytes")

    def histogram_proto(self, tag: str, h) -> None:
        self._spend_elements(tag, len(h.bucket) + len(h.bucket_limit), "a histogram")

    def tensor(self, tag: str, t, plugin: str) -> None:
        stored, declared = _stored(t), _declared(t)
        elements = max(stored, declared)
        self._spend_elements(tag, elements, "a tensor")
        if declared > stored and declared > self.record_bytes:
            # the only way a few bytes become many elements; real writers store every value
            raise RecordRefused(f"tag {short_tag(tag)}: a tensor declaring {declared} elements with {stored}"
                                f" stored (a broadcast larger than its {self.record_bytes}-byte record) is not"
                                " expanded")
        dims = [d.size for d in t.tensor_shape.dim]
        if plugin == "text":
            self._text(tag, t, elements, dims)
        elif plugin == "pr_curves" and len(dims) == 2:
            self._rows(tag, dims[1], "a PR curve")
        elif plugin == "images" and len(t.string_val) > 2:
            self.images(tag, t.string_val[2:])

    def _text(self, tag: str, t, elements: int, dims: list[int]) -> None:
        strings = t.string_val
        size = sum(map(len, strings))
        if len(strings) == 1:
            size *= max(elements, 1)  # one string broadcast to every element
        if size > self.limits.max_text_bytes:
            raise over_limit(tag, f"a text of {size} bytes", self.limits, "max_text_bytes")
        width = dims[-1] if len(dims) >= 2 and dims[-1] > 0 else 1
        self._rows(tag, -(-elements // width), "a text table")

    def _rows(self, tag: str, rows: int, what: str) -> None:
        if rows > self.limits.max_table_rows:
            raise over_limit(tag, f"{what} of {rows} rows", self.limits, "max_table_rows")

    def images(self, tag: str, encoded: Iterable[bytes]) -> None:
        """Sizes from the images' headers (nothing decoded); unreadable ones are the converter's."""
        limit = self.limits.max_image_pixels
        for data in encoded:
            try:
                with open_image(data, limit) as pic:
                    width, height = pic.size
            except RecordRefused as exc:
                raise over_limit(tag, str(exc), self.limits, "max_image_pixels") from None
            except Exception:  # noqa: BLE001 - not an image: reported for this one value when converted
                continue
            self.pixels += max(1, width) * max(1, height)
            if self.pixels > limit:
                raise over_limit(tag, f"this record's images ({self.pixels} pixels together)", self.limits,
                                 "max_image_pixels")
