"""Map files to runs and events to rows: pure functions, no I/O.

* Each first-level directory under the root is one run, named after it; files directly in the
  root form a run named after the root.
* A writer-session directory deeper down is a run of its own, named by its path: Lightning's
  ``version_<N>`` and the default ``<Mon><DD>_<HH>-<MM>-<SS>_<host>`` log dirs of torch,
  tensorboardX and Hugging Face (``root/lightning_logs/version_3/...`` is run
  ``lightning_logs/version_3``). Each is a separate training, as TensorBoard shows it.
* Deeper directories become key prefixes: ``runs/exp1/eval/events...`` tag ``loss`` is key
  ``eval/loss`` in run ``exp1``, except the directories writers create on their own:
  - ``add_hparams``' ``<time.time()>`` directory (``1795789123.456``) adds no prefix;
  - ``add_scalars('loss', {'train': ...})`` writes tag ``loss`` into ``loss/train/``
    (tensorboardX) or ``loss_train/`` (torch): the key is ``loss/train``.
* Values of one step that arrive together (one batch, any file of the run) share one row.

docs/data-types.md documents every rule with examples.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

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


# Lightning's TensorBoardLogger: <save_dir>/<name>/version_<N>/
_LIGHTNING_VERSION = re.compile(r"version_\d+")
# torch / tensorboardX / Hugging Face default log dir: runs/May01_12-30-59_host[comment]
_DEFAULT_LOGDIR = re.compile(r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\d{2}_\d{2}-\d{2}-\d{2}_.+")
# add_hparams' default run name: str(time.time()), e.g. 1795789123.4567
_HPARAMS_DIR = re.compile(r"\d{9,11}\.\d{1,9}")


def is_session_dir(name: str) -> bool:
    """A directory one writer session creates (a run of its own wherever it sits)."""
    return bool(_LIGHTNING_VERSION.fullmatch(name) or _DEFAULT_LOGDIR.fullmatch(name))


def locate(root: str, path: str) -> tuple[str, str]:
    """(run directory relative to root, key prefix) for an event file under `root`."""
    rel_dir = os.path.relpath(os.path.dirname(path), root)
    if rel_dir == ".":
        return "", ""
    parts = rel_dir.split(os.sep)
    if parts[0] == "..":
        raise ValueError(f"{path} is not under {root}")
    cut = 1
    for i in range(1, len(parts)):
        if is_session_dir(parts[i]):
            cut = i + 1
            break
    return os.sep.join(parts[:cut]), key_prefix("/".join(parts[cut:]))


def key_prefix(rel: str) -> str:
    """The key prefix of a directory `rel` ("/"-separated) inside a run: add_hparams' ``<time.time()>``
    directories add nothing (its metrics land next to the run's own keys)."""
    return "/".join(p for p in rel.split("/") if p and not _HPARAMS_DIR.fullmatch(p))


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


@lru_cache(maxsize=1 << 16)
def join_key(prefix: str, tag: str) -> str:
    """The history key of `tag` written into the directory `prefix` (relative to its run).

    ``add_scalars(main, {series: v})`` writes tag ``main`` into a directory per series:
    tensorboardX ``<logdir>/<main>/<series>/``, torch ``<logdir>/<main with / as _>_<series>/``.
    Both become ``<logdir prefix>/<main>/<series>``, the series under its chart's name.
    """
    if not prefix:
        return tag
    if tag:
        # tensorboardX: the tag's path segments followed by the series name(s)
        bounded = f"/{prefix}/"
        at = bounded.rfind(f"/{tag}/")
        if at >= 0 and at + len(tag) + 2 < len(bounded):
            return prefix
        # torch: the last directory is "<main_tag with / replaced by _>_<series>"
        parent, _, last = prefix.rpartition("/")
        head = tag.replace("/", "_") + "_"
        if last.startswith(head) and len(last) > len(head):
            key = f"{tag}/{last[len(head):]}"
            return f"{parent}/{key}" if parent else key
    return f"{prefix}/{tag}"


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
            key = join_key(prefix, tag) if prefix else tag
            if row is None or key in row.values:
                row = Row(0, ev.step, ev.wall_time, {})
                rows.append(row)
                latest[ev.step] = row
            row.values[key] = value
    for i, row in enumerate(rows):
        row.seq = first_seq + i
    return rows
