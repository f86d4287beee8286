"""`tracelet upload` on a terminal: log lines above the progress bar, never on its line.

The upload runs under a real pseudo-terminal; its raw output (carriage returns, cursor movement,
erase-line, colours) is replayed on a small terminal model to get the final screen, which is
what a person sees. Issue 15.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time

import pytest
from tensorboardX import SummaryWriter

from helpers import assert_exactly_once, write_run

pty = pytest.importorskip("pty", reason="pseudo-terminals need a POSIX system")
import fcntl  # noqa: E402 - POSIX only, after the skip
import struct  # noqa: E402
import termios  # noqa: E402

WIDTH = 120
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)")
BAR = "━"
CSI = re.compile(r"\x1b\[([0-9;?]*)([@-~])")
OSC = re.compile(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)")


class Screen:
    """Just enough of a VT100 to replay what rich and a log handler write: printable characters
    with auto-wrap, CR, LF, backspace, cursor up/down/column, erase in line and display. Colours
    and modes are ignored. Rows are kept forever (no scrolling off), so the whole session is one
    screen; `wrapped[r]` says row r continues row r-1 (soft wrap), so logical lines can be rebuilt.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: list[list[str]] = [[]]
        self.wrapped: list[bool] = [False]
        self.row = self.col = 0
        self.pending_wrap = False

    def _goto_row(self, row: int, *, wrapped: bool = False) -> None:
        self.row = max(0, row)
        while len(self.rows) <= self.row:
            self.rows.append([])
            self.wrapped.append(wrapped)

    def _put(self, ch: str) -> None:
        if self.pending_wrap:
            self._goto_row(self.row + 1, wrapped=True)
            self.col, self.pending_wrap = 0, False
        line = self.rows[self.row]
        line.extend(" " * (self.col + 1 - len(line)))
        line[self.col] = ch
        if self.col == self.width - 1:
            self.pending_wrap = True
        else:
            self.col += 1

    def _csi(self, params: str, final: str) -> None:
        nums = [int(p) if p.isdigit() else 0 for p in params.lstrip("?").split(";")] if params else []
        n = (nums[0] if nums else 0) or 1
        self.pending_wrap = False
        line = self.rows[self.row]
        if final == "A":
            self.row = max(0, self.row - n)
        elif final in "BE":
            self._goto_row(self.row + n)
            if final == "E":
                self.col = 0
        elif final == "C":
            self.col = min(self.width - 1, self.col + n)
        elif final == "D":
            self.col = max(0, self.col - n)
        elif final == "G":
            self.col = min(self.width, n) - 1
        elif final == "K":
            mode = nums[0] if nums else 0
            if mode == 0:
                del line[self.col:]
            elif mode == 1:
                line[: self.col + 1] = [" "] * min(len(line), self.col + 1)
            else:
                line.clear()
        elif final == "J":
            mode = nums[0] if nums else 0
            if mode == 0:
                del line[self.col:]
                for r in range(self.row + 1, len(self.rows)):
                    self.rows[r] = []
        # m (colours), h/l (modes such as the cursor's visibility): nothing to draw

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                m = CSI.match(text, i) or OSC.match(text, i)
                if m and m.re is CSI:
                    self._csi(m.group(1), m.group(2))
                i = m.end() if m else i + 2
                continue
            if ch == "\r":
                self.col, self.pending_wrap = 0, False
            elif ch == "\n":
                self._goto_row(self.row + 1)
                self.pending_wrap = False
            elif ch == "\b":
                self.col, self.pending_wrap = max(0, self.col - 1), False
            elif ch >= " ":
                self._put(ch)
            i += 1

    def lines(self) -> list[str]:
        """Logical lines: soft-wrapped rows joined again, trailing blanks dropped."""
        out: list[str] = []
        for row, cont in zip(self.rows, self.wrapped):
            text = "".join(row)
            if cont and out:
                out[-1] += text
            else:
                out.append(text)
        while out and not out[-1].strip():
            out.pop()
        return [line.rstrip() for line in out]


def test_screen_model_replays_redraws_and_wraps():
    s = Screen(10)
    s.feed("abc\r\n\x1b[?25lbar 1\r\x1b[2Kbar 22\x1b[0m\r\n0123456789xy\r\nz")
    assert s.lines() == ["abc", "bar 22", "0123456789xy", "z"]
    s = Screen(10)
    s.feed("log one\r\nbar\r\x1b[2K\x1b[1A\x1b[2Klog two\r\nbar 2")
    assert s.lines() == ["log two", "bar 2"]


def run_in_pty(cmd: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run `cmd` with stdin, stdout and stderr on a fresh pseudo-terminal WIDTH columns wide."""
    try:
        master, slave = pty.openpty()
    except OSError as exc:
        pytest.skip(f"no pseudo-terminal available: {exc}")
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, WIDTH, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed its end
                break
            if not data:
                break
            chunks.append(data)
        else:
            proc.kill()
            pytest.fail(f"{cmd} did not end within {timeout}s")
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return rc, b"".join(chunks).decode("utf-8", "replace")


def tty_env(wandb_env: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(WIDTH), LINES="40")
    for var in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(var, None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [[], ["--jobs", "2"]], ids=["in-process", "two-workers"])
def test_log_lines_stay_above_the_bar_on_a_terminal(jobs, runs_root, tmp_path, wandb_env):
    names = [f"run{i}" for i in range(4)]
    steps = 120
    for i, name in enumerate(names):
        write_run(SummaryWriter, runs_root / name, steps=steps, hist_every=40, image_every=60, seed=i)
    cmd = [sys.executable, "-m", "tracelet_daemon", "upload", str(runs_root), "--state-dir",
           str(tmp_path / "state"), "--max-batch-bytes", "4096", *jobs]
    rc, raw = run_in_pty(cmd, tty_env(wandb_env))
    screen = Screen(WIDTH)
    screen.feed(raw)
    lines = screen.lines()
    shown = "\n".join(lines)
    assert rc == 0, shown

    # every log line starts a line of its own and shares it with nothing
    for line in lines:
        m = TIMESTAMP.search(line)
        if m:
            assert m.start() == 0, f"a log line does not start its own line:\n{line}"
            assert BAR not in line, f"a log line shares its line with the bar:\n{line}"
    for name in names:  # each run's "opened" line is there, whole
        whole = re.compile(TIMESTAMP.pattern + rf" +{name}: run \S+ opened at \S+$")
        opened = [ln for ln in lines if whole.match(ln)]
        assert len(opened) == 1, f"{name}: no whole 'opened' line on the screen:\n{shown}"

    # one bar, pinned below the log lines, complete, with the per-run counts
    bars = [i for i, ln in enumerate(lines) if BAR in ln]
    assert len(bars) == 1, f"the bar was drawn in {len(bars)} places:\n{shown}"
    bar = lines[bars[0]]
    logs = [i for i, ln in enumerate(lines) if TIMESTAMP.match(ln)]
    assert max(logs) < bars[0], f"a log line below the bar:\n{shown}"
    assert bar.startswith("upload ") and "100%" in bar, bar
    assert f"runs {len(names)}/{len(names)}" in bar, bar
    mb = re.search(r"([\d.]+)/([\d.]+) ([kMG]?B)", bar)
    assert mb and mb.group(1) == mb.group(2), bar
    # the closing summary follows the bar, and the bar counted the rows it reports
    summary = [re.match(r"tracelet: (\d+) row\(s\) from (\d+) run\(s\)", ln) for ln in lines[bars[0] + 1:]]
    summary = [m for m in summary if m]
    assert summary and int(summary[0].group(2)) == len(names), shown
    rows = int(summary[0].group(1))
    assert rows >= len(names) * steps and f" {rows:,} rows" in bar, bar
    for name in names:
        assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], name)


@pytest.mark.slow
def test_no_bar_when_logs_are_json_even_on_a_terminal(runs_root, tmp_path, wandb_env):
    write_run(SummaryWriter, runs_root / "only", steps=30, image_every=0, hist_every=0)
    cmd = [sys.executable, "-m", "tracelet_daemon", "upload", str(runs_root), "--state-dir",
           str(tmp_path / "state"), "--log-format", "json"]
    rc, raw = run_in_pty(cmd, tty_env(wandb_env))
    assert rc == 0, raw
    assert BAR not in raw and "\x1b[" not in raw, raw
    import json

    records = [json.loads(line) for line in raw.replace("\r\n", "\n").splitlines() if line.strip()]
    assert any(r["msg"].startswith("only: run ") and " opened at " in r["msg"] for r in records), raw
