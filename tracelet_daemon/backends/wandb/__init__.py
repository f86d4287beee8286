"""Weights & Biases backend."""

from .attached import AttachedBackend, AttachedRunSink
from .mode import prepare_environment, resolve_mode
from .sink import WandbBackend, WandbRunSink

__all__ = ["AttachedBackend", "AttachedRunSink", "WandbBackend", "WandbRunSink", "prepare_environment",
           "resolve_mode"]
