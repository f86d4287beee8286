"""Backends by name. Each lives in its own package and is imported only when chosen."""

from __future__ import annotations

import os

from ..errors import UsageError
from .base import Backend, RunSink, RunSpec

__all__ = ["Backend", "RunSink", "RunSpec", "available", "backend_names", "create", "open_backend"]

_FACTORIES = {
    "wandb": ("tracelet_daemon.backends.wandb", "WandbBackend"),
    "mlflow": ("tracelet_daemon.backends.mlflow", "MlflowBackend"),
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


def open_backend(name: str, *, state_dir: str, project: str | None = None, entity: str | None = None,
                 mode: str | None = None, tracking_uri: str | None = None, daemon: bool = True) -> Backend:
    """Backend `name` for an engine whose state lives in `state_dir` (each backend's own folders
    default there). `daemon`: also apply the daemon's client defaults (fail fast, no telemetry);
    the in-process shim leaves the training process's settings alone."""
    if name == "wandb":
        from .wandb import prepare_environment

        prepare_environment(state_dir)
        return create(name, project=project, entity=entity, mode=mode)
    if name == "mlflow":
        if daemon:
            from .mlflow import prepare_environment as prepare_mlflow

            prepare_mlflow()
        return create(name, project=project, entity=entity, mode=mode, tracking_uri=tracking_uri,
                      state_dir=state_dir)
    return create(name, project=project, entity=entity, mode=mode)


def backend_names(values: list[str] | str | None, default: str = "wandb") -> list[str]:
    """`--backend a --backend b`, `--backend a,b` or ``TRACELET_BACKEND=a,b``: the names in order,
    each once."""
    if values is None:
        values = os.environ.get("TRACELET_BACKEND") or default
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for value in values:
        for name in str(value).replace(" ", ",").split(","):
            name = name.strip().lower()
            if name and name not in out:
                out.append(name)
    return out or [default]
