"""What parsing a protobuf would allocate, estimated from its wire bytes without parsing it.

The protobuf runtime builds every sub-message it reads: two bytes of an empty message become
~90 bytes of memory, so a 64 MB record of empty summary values parses into ~3 GB, and packed
varints grow eightfold. Before a large record is parsed, its wire format is walked against the
schema (bytes and strings are skipped over, never copied) and the walk stops as soon as the
estimate passes the budget, so refusing a hostile record costs at most the budget's worth of steps.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

# bytes of memory per item once parsed (protobuf's objects, then the decoder's own Python values)
MESSAGE_COST = 160
REPEATED_ITEM_COST = 8
REPEATED_STRING_COST = 64
MAX_DEPTH = 100  # the protobuf runtime's own recursion limit
WORST_RATIO = MESSAGE_COST // 2  # an empty message takes two bytes on the wire


def may_exceed(size: int, budget: int) -> bool:
    """Whether `size` wire bytes could parse into more than `budget` (else no walk is needed)."""
    return size * WORST_RATIO > budget

_FIXED = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
          FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32}
_STRINGS = {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES}


def is_repeated(field: FieldDescriptor) -> bool:
    """protobuf 6+ says so directly; 4.x and 5.x through the label (since removed)."""
    flag = getattr(field, "is_repeated", None)
    return bool(flag) if flag is not None else field.label == FieldDescriptor.LABEL_REPEATED


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _fields(desc: Descriptor, cache: dict) -> dict[int, tuple[Descriptor | None, bool, int]]:
    """field number -> (message type or None, repeated, cost of one item packed in n bytes)."""
    out = cache.get(desc)
    if out is None:
        out = {}
        for f in desc.fields:
            repeated = is_repeated(f)
            per_byte = 1 if f.type in _FIXED else REPEATED_ITEM_COST  # a packed varint can be 1 byte
            out[f.number] = (f.message_type, repeated, -1 if f.type in _STRINGS else per_byte)
        cache[desc] = out
    return out


def varint(buf: bytes, i: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `i`, read no further than `end`."""
    result = shift = 0
    while i < end:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            break
    raise WireError("bad varint")


def estimate(buf: bytes, desc: Descriptor, budget: int) -> int:
    """Estimated bytes of memory `buf` parses into as a `desc` message; stops once over `budget`.

    Raises WireError for bytes no protobuf parser would accept (truncation, groups, depth).
    """
    cache: dict = {}
    cost = len(buf)  # the parser's copy of the input
    end, fields = len(buf), _fields(desc, cache)
    stack: list[tuple[int, dict]] = []
    i = 0
    none = (None, False, 0)
    while True:
        if i >= end:
            if i > end:
                raise WireError("a field runs past its message")
            if not stack:
                return cost
            end, fields = stack.pop()
            continue
        key = buf[i]
        i += 1
        if key >= 0x80:
            key, i = varint(buf, i - 1, end)
        wire_type = key & 7
        message, repeated, per_byte = fields.get(key >> 3, none)
        if wire_type == 2:
            size = buf[i] if i < end else 0x80
            i += 1
            if size >= 0x80:
                size, i = varint(buf, i - 1, end)
            if i + size > end:
                raise WireError("a field runs past its message")
            if message is not None:
                cost += MESSAGE_COST
                if len(stack) >= MAX_DEPTH:
                    raise WireError(f"messages nested deeper than {MAX_DEPTH}")
                stack.append((end, fields))
                end, fields = i + size, _fields(message, cache)
            else:
                if repeated:
                    cost += REPEATED_STRING_COST if per_byte < 0 else size * per_byte
                i += size
        elif wire_type == 0:
            _, i = varint(buf, i, end)
            cost += REPEATED_ITEM_COST if repeated else 0
        elif wire_type == 1 or wire_type == 5:
            i += 8 if wire_type == 1 else 4
            cost += REPEATED_ITEM_COST if repeated else 0
        else:
            raise WireError(f"wire type {wire_type} (groups are not used by TensorBoard)")
        if cost > budget:
            return cost
    return cost
