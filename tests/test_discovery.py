"""Discovery: the remembering scanner finds exactly what a fresh listing finds."""

from __future__ import annotations

import os
import time

from tracelet_daemon.discovery import Scanner, scan

OLD_NS = 1_600_000_000 * 10**9  # 2020: far outside the scanner's racy window


def _touch(path, mtime_ns=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb"):
        pass
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def _age(directory):
    """Give a directory an old mtime, as if it had not changed for years."""
    os.utime(directory, ns=(OLD_NS, OLD_NS))


def test_scanner_matches_a_fresh_scan_as_the_tree_changes(tmp_path):
    root = str(tmp_path / "root")
    os.makedirs(root)
    _touch(f"{root}/a/events.out.tfevents.1.h")
    _touch(f"{root}/b/train/events.out.tfevents.2.h")
    _touch(f"{root}/b/notes.txt")
    _touch(f"{root}/.hidden/events.out.tfevents.3.h")
    for d in (root, f"{root}/a", f"{root}/b", f"{root}/b/train"):
        _age(d)
    scanner = Scanner(root, full_every=1000)
    assert scanner.scan() == scan(root)
    assert scanner.run_dirs() == ["", "a", "b"]

    # a new file, a new run, a removed file: each changes its directory's mtime
    _touch(f"{root}/b/eval/events.out.tfevents.4.h")
    _touch(f"{root}/c/events.out.tfevents.5.h")
    os.unlink(f"{root}/a/events.out.tfevents.1.h")
    assert scanner.scan() == scan(root)
    assert scanner.run_dirs() == ["", "a", "b", "c"]
    assert f"{root}/b/eval/events.out.tfevents.4.h" in scanner.scan()


def test_an_unchanged_directory_is_not_listed_again(tmp_path):
    """Proof that the memory is used: a change hidden behind an unchanged mtime (what a coarse
    timestamp could do) is seen only at the next full listing, which comes every `full_every`."""
    root = str(tmp_path / "root")
    os.makedirs(root)
    _touch(f"{root}/r/events.out.tfevents.1.h")
    _age(f"{root}/r")
    _age(root)
    scanner = Scanner(root, full_every=3)
    first = scanner.scan()  # full
    _touch(f"{root}/r/events.out.tfevents.2.h")
    _age(f"{root}/r")  # the change is invisible to the mtime check
    assert scanner.scan() == first  # remembered listing
    assert scanner.scan() == first
    assert scanner.scan() == scan(root) != first  # the third scan after the first is full again


def test_a_recent_listing_is_not_trusted(tmp_path):
    """A directory changed within the racy window is listed again even if its mtime is unchanged."""
    root = str(tmp_path / "root")
    os.makedirs(root)
    _touch(f"{root}/r/events.out.tfevents.1.h")
    now_ns = time.time_ns()
    os.utime(f"{root}/r", ns=(now_ns, now_ns))
    scanner = Scanner(root, full_every=1000)
    scanner.scan()
    _touch(f"{root}/r/events.out.tfevents.2.h")
    os.utime(f"{root}/r", ns=(now_ns, now_ns))  # same mtime as when it was listed
    assert f"{root}/r/events.out.tfevents.2.h" in scanner.scan()


def test_vanished_and_unreadable_directories(tmp_path, caplog):
    root = str(tmp_path / "root")
    os.makedirs(root)
    _touch(f"{root}/gone/events.out.tfevents.1.h")
    _touch(f"{root}/keep/events.out.tfevents.2.h")
    scanner = Scanner(root, full_every=1000)
    assert len(scanner.scan()) == 2
    os.unlink(f"{root}/gone/events.out.tfevents.1.h")
    os.rmdir(f"{root}/gone")
    assert scanner.scan() == [f"{root}/keep/events.out.tfevents.2.h"]
    assert scanner.run_dirs() == ["", "keep"]
    missing = Scanner(str(tmp_path / "nope"))
    assert missing.scan() == [] and missing.run_dirs() == [""]
    assert "cannot read directory" in caplog.text and "nope" in caplog.text


def _hints_until(watcher, path: str, timeout: float = 10.0) -> set[str]:
    """Every hint collected until `path` is among them (or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    hints: set[str] = set()
    while path not in hints and time.monotonic() < deadline:
        hints |= watcher.wait(0.5)
    return hints


def test_watcher_hints_new_and_growing_event_files(tmp_path):
    """inotify through watchdog, limited to changes: a new event file and its growth wake the
    waiter with the file's path; merely opening and listing things does not."""
    from tracelet_daemon.discovery import Watcher

    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    watcher = Watcher(str(root))
    try:
        assert watcher.inotify, "watchdog's inotify observer did not start"
        path = root / "run" / "events.out.tfevents.1.h"
        path.write_bytes(b"x")
        assert str(path) in _hints_until(watcher, str(path))
        watcher.wait(0.5)  # drain
        for _ in range(3):
            scan(str(root))  # opens and lists every directory
            with open(path, "rb") as f:
                f.read()
        assert watcher.wait(1.0) == set()
        with open(path, "ab") as f:
            f.write(b"y")
        assert str(path) in _hints_until(watcher, str(path))
    finally:
        watcher.stop()
