"""Config and hparams → MLflow params, which cannot change once set.

W&B's config takes new values; an MLflow param refuses one (HTTP 400, and the whole request
with it). The rule here: a param keeps the first value it was given, and a later, different
value goes to a *tag of the same name* (tags can change), with a warning once per key. So the
param shows what the run started with and the tag what it ended with; nothing is refused and
nothing is dropped. Values are strings (``str()`` of scalars, JSON of lists), cut to MLflow's
6,000 characters with a warning.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000


def flatten(config: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Nested mappings become dotted keys: ``{"model": {"lr": 1}}`` → ``{"model.lr": 1}``."""
    out: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, Mapping)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def clip(value: str, limit: int, what: str, key: str, warn: Callable[[str, str], None]) -> str:
    if len(value) <= limit:
        return value
    warn(f"long:{what}:{key}", f"{what} {key!r} is {len(value)} characters; MLflow keeps {limit}, so it is cut")
    return value[:limit]


class ParamLedger:
    """The params a run holds (read from MLflow at open, then as sent): decides what to send."""

    def __init__(self, held: Mapping[str, str], warn: Callable[[str, str], None]) -> None:
        self.held = dict(held)
        self._warn = warn
        self._latest: dict[str, str] = {}  # changed values already sent as tags

    def plan(self, config: Mapping[str, object], key_of: Callable[[str], str]) -> tuple[dict[str, str], dict[str, str]]:
        """(new params, tags for changed values) for `config` (flattened here)."""
        params: dict[str, str] = {}
        tags: dict[str, str] = {}
        for raw_key, raw in flatten(config).items():
            key = key_of(raw_key)
            value = clip(as_text(raw), MAX_PARAM_VALUE, "param", key, self._warn)
            held = self.held.get(key)
            if held is None:
                params[key] = self.held[key] = value
            elif (held == value and key not in self._latest) or self._latest.get(key) == value:
                continue
            else:
                if held != value:
                    self._warn("changed:" + key, f"param {key!r} cannot change in MLflow (it is {held!r});"
                               f" the param keeps its first value and the tag {key!r} holds the latest")
                tags[key] = self._latest[key] = value
        return params, tags
