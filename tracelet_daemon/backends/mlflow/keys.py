"""TensorBoard tags → names MLflow accepts. Pure, except for the per-run bookkeeping of warnings.

MLflow refuses a metric, param or tag key (the whole request, HTTP 400) unless it matches
``[/\\w.\\- :]*``, is at most 250 characters and is its own ``posixpath.normpath`` (no ``//``,
no ``.``/``..`` segments, no leading or trailing ``/``). TensorBoard tags are free text, so
every key is made valid here, deterministically (a replay must produce the same key):

* each character MLflow rejects (``( ) @ % + # , [ ] = ! ...``) becomes ``_``;
* an empty, ``.`` or ``..`` path segment (``a//b``, ``/a``, ``a/``, ``a/../b``) becomes ``_``;
* a key longer than 250 characters keeps its first 241 and ends in ``-`` plus 8 hex digits of
  a hash of the original key, so two long keys stay apart.

A key that had to change is warned about once; two tags that end up as one key are warned
about too (their points then share one MLflow metric). Nothing is dropped.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Callable

MAX_KEY = 250
_REJECTED = re.compile(r"[^/\w.\- :]")
_VALID = re.compile(r"[/\w.\- :]+")
# log_image's own rule for the key inside image file names (ASCII, no colon)
_IMAGE_REJECTED = re.compile(r"[^A-Za-z0-9_\-./ ]")
_HASH_LEN = 8


def valid(key: str) -> bool:
    """MLflow's own check (mlflow.utils.validation), restated so no request is refused."""
    if not key or len(key) > MAX_KEY or not _VALID.fullmatch(key):
        return False
    norm = posixpath.normpath(key)
    return norm == key and norm != "." and not norm.startswith("..") and not norm.startswith("/")


def _fix_segments(key: str) -> str:
    parts = key.split("/")
    parts = ["_" if p in ("", ".", "..") else p for p in parts]
    if parts[0].startswith(".."):  # "..x" normalises to itself but MLflow reads it as "up"
        parts[0] = "_" + parts[0][2:]
    return "/".join(parts)


def sanitize(key: str) -> str:
    """A valid MLflow key for `key` (itself when already valid)."""
    if valid(key):
        return key
    out = _fix_segments(_REJECTED.sub("_", key))
    if len(out) > MAX_KEY:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
        out = _fix_segments(f"{out[:MAX_KEY - _HASH_LEN - 1]}-{digest}")
    return out


def image_key(key: str) -> str:
    """The key as ``log_image`` accepts it in a file name: ASCII letters, digits, ``_-./ ``."""
    return _IMAGE_REJECTED.sub("_", key)


class KeyMap:
    """Sanitized keys of one run, remembered, with each change and collision warned about once.

    `reserved` maps keys tracelet itself writes to the name a colliding tag gets instead.
    """

    def __init__(self, warn: Callable[[str, str], None], reserved: dict[str, str] | None = None) -> None:
        self._warn = warn
        self._reserved = dict(reserved or {})
        self._out: dict[str, str] = {}
        self._owner: dict[str, str] = {}  # sanitized key -> the first original key that took it

    def __call__(self, key: str) -> str:
        out = self._out.get(key)
        if out is not None:
            return out
        out = self._reserved.get(key) or sanitize(key)
        if out != key:
            why = "is a name tracelet uses" if key in self._reserved else "is not a valid MLflow key"
            self._warn("key:" + key, f"tag {key!r} {why}; logged as {out!r}")
        owner = self._owner.setdefault(out, key)
        if owner != key:
            self._warn("collide:" + key, f"tags {owner!r} and {key!r} are both logged as {out!r}")
        self._out[key] = out
        return out
