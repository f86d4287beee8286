"""Logging for the daemon: one line per event, as text for people or JSON for log shippers.

Every line passes a redaction filter that replaces the W&B API key with ``***`` wherever it
appears (a library error message could quote it); the key is looked up at filter time, so a
key loaded from a file after logging is set up is covered too.

Messages quote names from the runs root, which is untrusted: the text format escapes control
characters, so a directory named ``"r\\n... ERROR forged"`` cannot start a line of its own.
Python warnings (PIL's decompression-bomb warning, say) are logged like everything else, so
JSON logs stay one object per line. Worker processes forward their records to the parent,
which writes them with its own handler (format, redaction, progress display).
"""

from __future__ import annotations

import copy
import json
import logging
import logging.handlers
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from .errors import UsageError
from .secrets import known_secrets

FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)-7s %(message)s"
_NOISY = ("watchdog", "wandb", "botocore", "aiobotocore", "s3fs", "fsspec", "gcsfs", "adlfs", "azure")  # their INFO chatter is not ours

# C0, DEL, C1 and the Unicode line/paragraph separators: anything a terminal or a log viewer may
# take as a line break or a command
# control characters a terminal or a line-based log would act on (also stripped from display names)
CONTROL_CHARS = "[\x00-\x1f\x7f-\x9f\u2028\u2029]"
_CONTROL = re.compile(CONTROL_CHARS)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")  # json.dumps escapes C0 itself
_INDENT = "  "  # every continuation line starts with it: only a record starts at column 0


def _escape_char(m: re.Match) -> str:
    ch = m.group()
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def escape_controls(text: str) -> str:
    r"""`text` with control characters written as escapes (``\n``, ``\x1b``, ``\u2028``)."""
    return _CONTROL.sub(_escape_char, text)


def _indented(block: str) -> str:
    """A traceback keeps its lines, each escaped and indented."""
    return "\n".join(_INDENT + escape_controls(line) for line in block.rstrip("\n").split("\n"))


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


class TextFormatter(logging.Formatter):
    """``time LEVEL message``: the message on one line, a traceback below it, indented."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        line = copy.copy(record)
        line.msg, line.args = escape_controls(record.getMessage()), None
        line.exc_info = line.exc_text = line.stack_info = None
        out = super().format(line)
        for block in (record.exc_text, record.stack_info):
            if block:
                out += "\n" + _indented(block)
        return out


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
        # the same JSON value, but no raw U+2028 or C1 a line-splitting reader could break on
        return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}",
                                json.dumps(out, ensure_ascii=False, default=str))


class LineHandler(logging.StreamHandler):
    """Writes formatted records to a stream, or to `divert` while one is set: a live progress
    display prints them above its bar instead of the bar and the lines garbling each other."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.divert: Callable[[str], None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        divert = self.divert
        if divert is None:
            super().emit(record)
            return
        try:
            divert(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


@contextmanager
def diverted(write: Callable[[str], None]) -> Iterator[None]:
    """While inside, lines of the handlers `setup_logging` installed go to `write`."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, LineHandler)]
    for h in handlers:
        h.divert = write
    try:
        yield
    finally:
        for h in handlers:
            h.divert = None


_show_warning = warnings.showwarning  # Python's own, for warnings sent to an explicit file


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A `warnings.showwarning` that logs one line (Python's own writes two, past the log format)."""
    if file is not None:
        _show_warning(message, category, filename, lineno, file, line)
        return
    logging.getLogger("py.warnings").warning("%s: %s (%s:%s)", category.__name__, message, filename, lineno)


def _configure(lvl: int) -> None:
    """Level for ours, WARNING at least for chatty libraries, and warnings into logging."""
    logging.getLogger().setLevel(lvl)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
    warnings.showwarning = _log_warning


def setup_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger; unknown level or format is a usage error."""
    lvl = getattr(logging, level.upper(), None)
    if not isinstance(lvl, int):
        raise UsageError(f"unknown log level {level!r} (expected debug, info, warning or error)")
    if fmt not in FORMATS:
        raise UsageError(f"unknown log format {fmt!r} (expected {' or '.join(FORMATS)})")
    handler = LineHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactSecrets())
    logging.basicConfig(level=lvl, handlers=[handler], force=True)
    _configure(lvl)


# what a forwarded record keeps: plain values only (an `extra=` object may not pickle)
_FORWARDED = ("name", "levelno", "levelname", "pathname", "filename", "module", "lineno", "funcName",
              "created", "msecs", "relativeCreated", "thread", "threadName", "processName", "process",
              "stack_info")


class _Forward(logging.handlers.QueueHandler):
    """Puts a picklable copy of each record on a queue: message rendered, traceback as text."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        fields = {k: getattr(record, k, None) for k in _FORWARDED}
        exc_text = record.exc_text
        if record.exc_info and not exc_text:
            exc_text = logging.Formatter().formatException(record.exc_info)
        return logging.makeLogRecord({**fields, "msg": record.getMessage(), "args": None, "exc_text": exc_text})


def forward_logging(queue, level: int) -> None:
    """In a worker process: every record goes to `queue`, for the parent's `handle_forwarded`."""
    handler = _Forward(queue)
    handler.addFilter(RedactSecrets())  # the key does not even cross the pipe
    logging.basicConfig(level=level, handlers=[handler], force=True)
    _configure(level)


def handle_forwarded(record: logging.LogRecord) -> None:
    """In the parent: write a worker's record as if it were logged here."""
    logging.getLogger(record.name).handle(record)
