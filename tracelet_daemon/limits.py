"""Resource limits for untrusted input: what one record, one metadata file or one artifact may cost.

The runs root is written by someone else (a training container, a colleague). A few hundred
hostile bytes can describe gigabytes (a broadcast tensor, a sparse file, YAML aliases), so every
size is checked against a limit *before* anything that large is allocated. Hitting a limit is
reported like a corrupt record: the item is skipped, counted and named once; the rest goes on.

Each limit can be changed with an environment variable ``TRACELET_<NAME IN CAPITALS>``
(for example ``TRACELET_MAX_TENSOR_ELEMENTS=50000000``); docs/reliability.md lists them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from .errors import UsageError


@dataclass(frozen=True)
class Limits:
    # one TFRecord payload; a longer record is skipped by its (checksummed) length, never read
    max_record_bytes: int = 64 << 20
    # decoded elements of one tensor (histogram buckets, text entries, scalar/PR/audio tensors)
    max_tensor_elements: int = 4_000_000
    # pixels of one image (width x height), and of all images of one record together
    max_image_pixels: int = 40_000_000
    # bytes of one text value (all strings of one text tensor together)
    max_text_bytes: int = 4 << 20
    # rows of one W&B table made from a text or PR-curve tensor (W&B keeps 10,000 in history)
    max_table_rows: int = 100_000
    # estimated memory one record parses into (protobuf messages, values); checked on the wire
    max_decoded_bytes: int = 256 << 20
    # run.json, manifest.json, hparams.yaml: size and nesting depth; YAML aliases are refused
    max_metadata_bytes: int = 4 << 20
    max_metadata_depth: int = 64
    # one published artifact: bytes of all its files together, and how many files
    max_artifact_bytes: int = 2 << 30
    max_artifact_files: int = 10_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        """Defaults overridden by ``TRACELET_MAX_*`` variables; a bad value is a usage error."""
        env = os.environ if env is None else env
        changes: dict[str, int] = {}
        for f in fields(cls):
            var = "TRACELET_" + f.name.upper()
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                value = int(raw.replace("_", ""))
            except ValueError:
                raise UsageError(f"{var}={raw!r} is not a whole number") from None
            if value <= 0:
                raise UsageError(f"{var}={raw!r} must be positive")
            changes[f.name] = value
        return replace(cls(), **changes)


DEFAULT = Limits()
