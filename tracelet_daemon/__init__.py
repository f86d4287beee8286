"""tracelet's daemon: discover tfevents files, read records, decode events, map them to runs and
sink them into a backend, with one durable state store.

The curated public surface is below; everything else is internal and may change.
"""

from ._version import __version__
from .engine import Engine, Options, Report
from .errors import (BackendError, CorruptRecordError, FramingError, ReaderError, StateError,
                     TraceletError, TruncatedRecordError, UsageError)
from .events import decode_event
from .records import RecordReader, iter_records, read_batch
from .state import StateStore
from .values import Histogram, Image, ImageBatch, Row

__all__ = [
    "BackendError", "CorruptRecordError", "Engine", "FramingError", "Histogram", "Image",
    "ImageBatch", "Options", "ReaderError", "RecordReader", "Report", "Row", "StateError",
    "StateStore", "TraceletError", "TruncatedRecordError", "UsageError", "__version__",
    "decode_event", "iter_records", "read_batch",
]
