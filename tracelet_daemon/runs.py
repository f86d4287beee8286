"""Map files to runs and events to rows: pure functions, no I/O.

* Each first-level directory under the root is one run, named after it; files directly in the
  root form a run named after the root.
* Deeper directories become key prefixes: ``runs/exp1/eval/events...`` tag ``loss`` is key
  ``eval/loss`` in run ``exp1``.
* Values of one step that arrive together (one batch, any file of the run) share one row.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .values import Event, Row

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_SLUG = 40


@dataclass(frozen=True, slots=True)
class RunRef:
    """Where a run lives and what it is called; `key` is its identity in the state store."""

    key: str
    name: str
    directory: str
    run_id: str


def is_event_file(name: str) -> bool:
    return "tfevents" in name and not name.startswith(".")


def locate(root: str, path: str) -> tuple[str, str]:
    """(run directory relative to root, key prefix) for an event file under `root`."""
    rel_dir = os.path.relpath(os.path.dirname(path), root)
    if rel_dir == ".":
        return "", ""
    parts = rel_dir.split(os.sep)
    if parts[0] == "..":
        raise ValueError(f"{path} is not under {root}")
    return parts[0], "/".join(parts[1:])


def make_run_id(name: str, identity: str) -> str:
    """A valid, stable W&B-style id: a readable slug of `name` plus a hash of `identity`.

    The hash keeps two roots with equal run names apart; the slug keeps ids legible in URLs.
    Only ``[A-Za-z0-9_-]`` survive, so a hostile directory name cannot inject into an id.
    """
    slug = _ID_UNSAFE.sub("-", name).strip("-_")[:_MAX_SLUG] or "run"
    digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{slug}-{digest}"


def run_ref(root: str, run_rel: str) -> RunRef:
    root = os.path.abspath(root)
    directory = os.path.join(root, run_rel) if run_rel else root
    name = run_rel or os.path.basename(root.rstrip(os.sep)) or "root"
    return RunRef(key=directory, name=name, directory=directory, run_id=make_run_id(name, directory))


def join_key(prefix: str, tag: str) -> str:
    return f"{prefix}/{tag}" if prefix else tag


def group_rows(events: Iterable[tuple[str, Event]], first_seq: int) -> list[Row]:
    """Rows from (key prefix, event) pairs, numbered from `first_seq`.

    Deterministic in its input order: replaying the same byte ranges after a crash yields the
    same rows with the same numbers. A key seen twice at one step (Lightning logs `epoch` twice)
    opens a new row instead of overwriting, so no value is lost.
    """
    rows: list[Row] = []
    latest: dict[int, Row] = {}
    for prefix, ev in events:
        if not ev.values:
            continue
        row = latest.get(ev.step)
        for tag, value in ev.values:
            key = f"{prefix}/{tag}" if prefix else tag
            if row is None or key in row.values:
                row = Row(0, ev.step, ev.wall_time, {})
                rows.append(row)
                latest[ev.step] = row
            row.values[key] = value
    for i, row in enumerate(rows):
        row.seq = first_seq + i
    return rows
