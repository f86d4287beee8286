"""tracelet's daemon: discover tfevents files, read records, decode events, map them to runs and
sink them into a backend, with one durable state store.

The curated public surface is below; everything else is internal and may change. Names are
imported on first use (PEP 562): ``tracelet watch`` installs its signal handlers before the
engine and numpy are imported, so a SIGTERM during start-up is a clean stop, not a kill.
"""

from __future__ import annotations

import importlib

from ._version import __version__ as __version__

_PUBLIC = {
    "Engine": "engine", "Options": "engine", "Report": "engine",
    "BackendError": "errors", "ConfinementError": "errors", "CorruptRecordError": "errors",
    "FramingError": "errors", "OversizeRecordError": "errors", "ReaderError": "errors",
    "StateError": "errors", "TraceletError": "errors", "TruncatedRecordError": "errors",
    "UsageError": "errors",
    "Limits": "limits",
    "decode_event": "events",
    "RecordReader": "records", "iter_records": "records", "read_batch": "records",
    "StateStore": "state",
    "Histogram": "values", "Image": "values", "ImageBatch": "values", "Row": "values",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> object:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return __all__
