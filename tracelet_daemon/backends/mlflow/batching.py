"""Cutting what a run gets into ``log_batch`` requests MLflow takes whole. Pure.

One ``log_batch`` request is one database transaction, as long as it is within MLflow's limits:
at most 1,000 entities of which at most 1,000 metrics and 100 params + tags, and at most 1 MB
of JSON. ``MlflowClient.log_batch`` splits larger batches itself (tags in the first piece), which
would break the one property the acknowledgement rests on, so every request built here is
already within the limits and the client sends it as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

MAX_ENTITIES = 1000
MAX_METRICS = 1000
MAX_PARAMS_TAGS = 100
MAX_BYTES = 900_000  # MLflow refuses requests over 1,000,000 bytes; the estimate keeps a margin

# the client sends JSON indented by 2 (message_to_json(pretty=True)): a metric costs ~100 bytes
# plus its key, a param or tag ~60 plus key and value, escaped
_METRIC_BYTES = 110
_PAIR_BYTES = 70

Metric = tuple[str, float, int, int]  # key, value, timestamp ms, step


@dataclass
class Request:
    """One ``log_batch`` call."""

    metrics: list[Metric] = field(default_factory=list)
    params: list[tuple[str, str]] = field(default_factory=list)
    tags: list[tuple[str, str]] = field(default_factory=list)
    size: int = 0  # estimated bytes of JSON

    def __len__(self) -> int:
        return len(self.metrics) + len(self.params) + len(self.tags)

    def fits_metric(self, key: str) -> bool:
        return (len(self.metrics) < MAX_METRICS and len(self) < MAX_ENTITIES
                and self.size + metric_size(key) <= MAX_BYTES)

    def fits_pair(self, key: str, value: str) -> bool:
        return (len(self.params) + len(self.tags) < MAX_PARAMS_TAGS and len(self) < MAX_ENTITIES
                and self.size + pair_size(key, value) <= MAX_BYTES)


def metric_size(key: str) -> int:
    return _METRIC_BYTES + len(key) * 6 if not key.isascii() else _METRIC_BYTES + len(key)


def pair_size(key: str, value: str) -> int:
    return _PAIR_BYTES + len(json.dumps(key)) + len(json.dumps(value))


def pack(metrics: Iterable[Metric], params: Iterable[tuple[str, str]] = (),
         tags: Iterable[tuple[str, str]] = ()) -> Iterator[Request]:
    """Requests within MLflow's limits, in order: params and tags first, then metrics."""
    req = Request()
    for kind, items in (("params", params), ("tags", tags)):
        for key, value in items:
            if not req.fits_pair(key, value):
                yield req
                req = Request()
            getattr(req, kind).append((key, value))
            req.size += pair_size(key, value)
    for m in metrics:
        if not req.fits_metric(m[0]):
            yield req
            req = Request()
        req.metrics.append(m)
        req.size += metric_size(m[0])
    if len(req):
        yield req
