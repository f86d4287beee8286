"""Weights & Biases backend."""

from .mode import prepare_environment, resolve_mode
from .sink import WandbBackend, WandbRunSink

__all__ = ["WandbBackend", "WandbRunSink", "prepare_environment", "resolve_mode"]
