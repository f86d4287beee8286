"""Log lines cannot be forged by names from the runs root, and warnings keep the log format.

Issue 11, items 8 (control characters in text logs) and 9 (PIL's warnings bypassing
``--log-format json``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import warnings
import zlib

import pytest
from tensorboardX import SummaryWriter

from helpers import assert_exactly_once, write_run
from tracelet_daemon.logsetup import escape_controls, forward_logging, handle_forwarded, setup_logging

FORGED = "2026-01-01 00:00:00,000 ERROR    forged"
HOSTILE = "r\n" + FORGED
LINE_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def upload(root, state_dir, *extra, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tracelet_daemon", "upload", str(root), "--state-dir", str(state_dir),
           "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or os.environ.copy(), timeout=300)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_bad_apng_header(width: int = 8, height: int = 6) -> bytes:
    """A valid PNG with an acTL chunk announcing 0 frames: Pillow warns, then decodes it."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    png = buf.getvalue()
    after_ihdr = 8 + 25  # signature, IHDR
    return png[:after_ihdr] + _chunk(b"acTL", struct.pack(">II", 0, 0)) + png[after_ihdr:]


def write_run_with_warning_image(run_dir) -> None:
    """tensorboardX writes the run; one image summary carries the PNG above."""
    from tensorboardX.proto.summary_pb2 import Summary

    writer = SummaryWriter(str(run_dir))
    for step in range(10):
        writer.add_scalar("loss", 1.0 / (step + 1), step)
    image = Summary.Image(height=6, width=8, colorspace=3, encoded_image_string=png_with_bad_apng_header())
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag="sample", image=image)]), 5)
    writer.close()


# -- pure ----------------------------------------------------------------------------------------
def test_escape_controls_covers_c0_del_c1_and_unicode_separators():
    assert escape_controls("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert escape_controls("\x00\x1b[2J\x7f\x85\x9b") == "\\x00\\x1b[2J\\x7f\\x85\\x9b"
    assert escape_controls("x\u2028y\u2029z") == "x\\u2028y\\u2029z"
    assert escape_controls("plain: ü, 日本, emoji 🙂") == "plain: ü, 日本, emoji 🙂"


def test_text_lines_escape_the_message_and_indent_the_traceback():
    stream = io.StringIO()
    setup_logging("info", "text", stream=stream)
    try:
        log = logging.getLogger("tracelet.test")
        log.info("%s: run opened", HOSTILE)
        try:
            raise ValueError("bad\n" + FORGED)
        except ValueError:
            log.exception("%s: failed", HOSTILE)
    finally:
        logging.getLogger().handlers.clear()
    lines = stream.getvalue().splitlines()
    records = [ln for ln in lines if LINE_START.match(ln)]
    assert len(records) == 2 and not any(ln.startswith(FORGED) for ln in lines)
    assert records[0].endswith("INFO    r\\n" + FORGED + ": run opened")
    trace = lines[lines.index(records[1]) + 1:]
    assert trace[0] == "  Traceback (most recent call last):"  # still a traceback, line by line
    assert all(ln.startswith("  ") for ln in trace)  # only a record starts at column 0
    assert trace[-2:] == ["  ValueError: bad", "  " + FORGED]


def test_json_lines_are_unchanged_values_and_safe_to_split():
    stream = io.StringIO()
    setup_logging("info", "json", stream=stream)
    try:
        logging.getLogger("tracelet.test").info("%s and \u2028 and \x85", HOSTILE)
    finally:
        logging.getLogger().handlers.clear()
    out = stream.getvalue()
    assert len(out.splitlines()) == 1  # str.splitlines also splits at U+2028 and NEL
    assert json.loads(out)["msg"] == HOSTILE + " and \u2028 and \x85"


def test_a_decompression_bomb_warning_is_one_json_line():
    """PIL warns (it does not raise) for images above MAX_IMAGE_PIXELS; the header alone does it."""
    from PIL import Image

    ihdr = struct.pack(">IIBBBBB", 9500, 9500, 1, 0, 0, 0, 0)  # 90 Mpx, 1 bit grey: over the limit
    png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b""))
           + _chunk(b"IEND", b""))
    stream = io.StringIO()
    with warnings.catch_warnings():  # restores Python's warning hook and filters afterwards
        warnings.simplefilter("always")
        setup_logging("info", "json", stream=stream)
        try:
            Image.open(io.BytesIO(png))  # lazy: the header is read, no pixel is decoded
        finally:
            logging.getLogger().handlers.clear()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(records) == 1, stream.getvalue()
    assert records[0]["level"] == "warning" and records[0]["logger"] == "py.warnings"
    assert records[0]["msg"].startswith("DecompressionBombWarning: Image size (90250000 pixels)")


def test_a_worker_record_is_written_by_the_parent_like_its_own(monkeypatch):
    """`upload --jobs`: workers forward records; the parent formats and redacts them."""
    import queue

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    channel: queue.Queue = queue.Queue()
    forward_logging(channel, logging.INFO)  # as a worker process does
    try:
        log = logging.getLogger("tracelet.engine")
        log.debug("not at this level")
        try:
            raise OSError(f"key {'k' * 40} rejected")
        except OSError:
            log.exception("%s: failed", HOSTILE)
    finally:
        logging.getLogger().handlers.clear()
    records = [channel.get_nowait() for _ in range(channel.qsize())]
    assert len(records) == 1 and records[0].exc_info is None  # plain values: it crossed a pipe
    stream = io.StringIO()
    setup_logging("info", "text", stream=stream)  # as the parent does
    try:
        handle_forwarded(records[0])
    finally:
        logging.getLogger().handlers.clear()
    lines = stream.getvalue().splitlines()
    assert LINE_START.match(lines[0]) and lines[0].endswith("ERROR   r\\n" + FORGED + ": failed")
    assert lines[1:] and all(ln.startswith("  ") for ln in lines[1:])
    assert lines[-1] == "  OSError: key *** rejected"


# -- through a real upload ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_hostile_directory_name_forges_no_log_line(runs_root, tmp_path, wandb_env):
    write_run(SummaryWriter, runs_root / HOSTILE, steps=20, hist_every=0, image_every=0, eval_every=0)
    res = upload(runs_root, tmp_path / "state")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert not [ln for ln in lines if ln.startswith(FORGED)], res.stderr
    # every line is a record of its own (or the closing summary); the name shows, escaped
    assert all(LINE_START.match(ln) or ln.startswith("tracelet: ") for ln in lines), res.stderr
    opened = [ln for ln in lines if " opened at " in ln]
    assert len(opened) == 1, res.stderr
    assert opened[0].split("INFO    ", 1)[1].startswith("r\\n" + FORGED + ": run "), opened
    assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], HOSTILE)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Invalid APNG")  # the test's own check reads the image too
@pytest.mark.parametrize("jobs", [[], ["--jobs", "2"]], ids=["in-process", "two-workers"])
def test_a_warning_while_uploading_keeps_json_logs_json(jobs, runs_root, tmp_path, wandb_env):
    write_run_with_warning_image(runs_root / "warns")
    write_run(SummaryWriter, runs_root / "plain", steps=20, hist_every=0, image_every=0, eval_every=0)
    res = upload(runs_root, tmp_path / "state", "--log-format", "json", *jobs)
    assert res.returncode == 0, res.stderr
    records = []
    for line in res.stderr.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\n{res.stderr}")
    warned = [r for r in records if r["logger"] == "py.warnings"]
    assert warned, res.stderr
    assert all(r["level"] == "warning" and "Invalid APNG" in r["msg"] for r in warned), warned
    assert any(r["msg"].startswith("warns: run ") for r in records)  # the run itself went on
    if jobs:  # the workers' own lines come through the parent, as JSON too
        assert any(r["msg"].startswith("replaying 2 run(s) in 2 worker processes") for r in records)
    for name in ("warns", "plain"):
        assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], name)
