"""Logging for the daemon: one line per event, as text for people or JSON for log shippers.

Every line passes a redaction filter that replaces the W&B API key with ``***`` wherever it
appears (a library error message could quote it); the key is looked up at filter time, so a
key loaded from a file after logging is set up is covered too.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

from .errors import UsageError
from .secrets import known_secrets

FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)-7s %(message)s"


class RedactSecrets(logging.Filter):
    """Replace known secret values in the rendered message (and traceback) of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = known_secrets()
        if not secrets:
            return True
        message = record.getMessage()
        exc_text = record.exc_text
        if record.exc_info and not exc_text:
            exc_text = logging.Formatter().formatException(record.exc_info)
        for secret in secrets:
            message = message.replace(secret, "***")
            if exc_text:
                exc_text = exc_text.replace(secret, "***")
        record.msg, record.args = message, None
        if exc_text:
            record.exc_info, record.exc_text = None, exc_text
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger; unknown level or format is a usage error."""
    lvl = getattr(logging, level.upper(), None)
    if not isinstance(lvl, int):
        raise UsageError(f"unknown log level {level!r} (expected debug, info, warning or error)")
    if fmt not in FORMATS:
        raise UsageError(f"unknown log format {fmt!r} (expected {' or '.join(FORMATS)})")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    handler.addFilter(RedactSecrets())
    logging.basicConfig(level=lvl, handlers=[handler], force=True)
    for noisy in ("watchdog", "wandb"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
