"""Backends by name. Each lives in its own package and is imported only when chosen."""

from __future__ import annotations

from ..errors import UsageError
from .base import Backend, RunSink, RunSpec

__all__ = ["Backend", "RunSink", "RunSpec", "available", "create"]

_FACTORIES = {
    "wandb": ("tracelet_daemon.backends.wandb", "WandbBackend"),
}


def available() -> list[str]:
    return sorted(_FACTORIES)


def create(name: str, **options: object) -> Backend:
    """Instantiate backend `name`; options are the backend's own keyword arguments."""
    try:
        module_name, cls_name = _FACTORIES[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r} (available: {', '.join(available())})") from None
    import importlib

    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**options)
