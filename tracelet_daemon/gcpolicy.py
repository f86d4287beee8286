"""The garbage-collector policy of tracelet's own processes (the CLI and its upload workers).

A batch of up to 8 MiB of decoded events (~100k objects) stays alive while it is sent, next to
wandb's large heap of modules; with CPython's default thresholds (700, 10, 10) the collector
walks all of it again and again: measured at about a third of an upload's time. Events, rows
and values hold no reference cycles (reference counting frees them), so collecting less often
costs no memory to speak of. Never applied by the in-process shim: a training process's
collector belongs to its owner.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 100)


def apply() -> None:
    """Call once the heavy imports are done: what is alive then (modules) is never garbage."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
