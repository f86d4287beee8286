"""Map files to runs and events to rows: pure functions, except that `locate` lists the directory
holding ``add_hparams`` folders (the listing is a parameter, for tests).

* Each first-level directory under the root is one run, named after it; files directly in the
  root form a run named after the root.
* A writer-session directory deeper down is a run of its own, named by its path: Lightning's
  ``version_<N>`` and the default ``<Mon><DD>_<HH>-<MM>-<SS>_<host>`` log dirs of torch,
  tensorboardX and Hugging Face (``root/lightning_logs/version_3/...`` is run
  ``lightning_logs/version_3``). Each is a separate training, as TensorBoard shows it.
* Deeper directories become key prefixes: ``runs/exp1/eval/events...`` tag ``loss`` is key
  ``eval/loss`` in run ``exp1``, except the directories writers create on their own:
  - ``add_hparams``' ``<time.time()>`` directory (``1795789123.456``) adds no prefix; only the
    first of a writer's such directories (lowest time) does that: each further one is an
    ``add_hparams`` session of its own, a run named by its path and grouped under its parent run;
  - ``add_scalars('loss', {'train': ...})`` writes tag ``loss`` into ``loss/train/``
    (tensorboardX) or ``loss_train/`` (torch): the key is ``loss/train``.
* Values of one step that arrive together (one batch, any file of the run) share one row, as long
  as their wall times stay within `ROW_SPREAD` seconds of the row's first value.

docs/data-types.md documents every rule with examples.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from .values import Event, Mesh, Row

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_SLUG = 40
# a row's values lie within this many seconds of its first value's wall time (its _timestamp)
ROW_SPREAD = 1.0


@dataclass(frozen=True, slots=True)
class RunRef:
    """Where a run lives and what it is called; `key` is its identity in the state store."""

    key: str
    name: str
    directory: str
    run_id: str
    group: str = ""  # a further add_hparams session: the name of the run it was written from


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


def hparams_time(name: str) -> float | None:
    """The time in an ``add_hparams`` folder's name (``str(time.time())``), None for other names."""
    return float(name) if _HPARAMS_DIR.fullmatch(name) else None


def subdirectories(directory: str) -> list[str]:
    """Names of the directories in `directory` (none if it cannot be read): `locate`'s listing."""
    try:
        with os.scandir(directory) as entries:
            return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def is_first_session(name: str, siblings: Iterable[str]) -> bool:
    """Whether the add_hparams folder `name` is its writer's first: no sibling folder has an earlier time.

    Live, a writer's folders appear in time order, so a folder's answer is the same whenever it is
    asked: when the folder appears, after a restart, and in a one-shot upload.
    """
    t = hparams_time(name)
    for other in siblings:
        u = hparams_time(other)
        if u is not None and (u, other) < (t, name):
            return False
    return True


def _run_cut(parts: list[str]) -> int:
    """How many leading directories of `parts` (relative to the root) name the run."""
    for i in range(1, len(parts)):
        if is_session_dir(parts[i]):
            return i + 1
    return 1


def locate(root: str, path: str,
           listdir: Callable[[str], Iterable[str]] = subdirectories) -> tuple[str, str]:
    """(run directory relative to root, key prefix) for an event file under `root`.

    `listdir(directory)` names the subdirectories of a directory holding add_hparams folders: only
    the first of them is part of its run, each further one is a run of its own whose keys are
    the ones the session would have had in that run (so sessions compare key by key).
    """
    rel_dir = os.path.relpath(os.path.dirname(path), root)
    if rel_dir == ".":
        return "", ""
    parts = rel_dir.split(os.sep)
    if parts[0] == "..":
        raise ValueError(f"{path} is not under {root}")
    cut = run_end = _run_cut(parts)
    for i in range(cut, len(parts)):
        if hparams_time(parts[i]) is not None:
            if not is_first_session(parts[i], listdir(os.path.join(root, *parts[:i]))):
                run_end = i + 1
            break
    return os.sep.join(parts[:run_end]), key_prefix("/".join(parts[cut:]))


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
    if "://" not in root:  # an object store's root is a URL, already absolute
        root = os.path.abspath(root)
    directory = os.path.join(root, run_rel) if run_rel else root
    name = run_rel or os.path.basename(root.rstrip(os.sep)) or "root"
    return RunRef(key=directory, name=name, directory=directory, run_id=make_run_id(name, directory),
                  group=session_group(run_rel))


def shard_of(run_rel: str, shards: int) -> int:
    """The shard (0..shards-1) of a run, from its path relative to the root ("/"-separated).

    A hash of the name alone, so every replica agrees with no coordination, on any host and for
    any spelling of the root; a run keeps its shard as long as the number of shards is unchanged."""
    digest = hashlib.sha256(run_rel.replace(os.sep, "/").encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def session_group(run_rel: str) -> str:
    """The run a further add_hparams session (``exp1/<time>``) was written from, else ""."""
    parts = run_rel.split(os.sep) if run_rel else []
    if len(parts) < 2 or hparams_time(parts[-1]) is None:
        return ""
    parent = parts[:-1]
    return os.sep.join(parent[: _run_cut(parent)])


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
    same rows with the same numbers. A value joins the newest row of its step whose first value
    lies within `ROW_SPREAD` seconds of its own wall time (so each value's `_timestamp` stays
    close to it, even when files of a run interleave late values with early ones); a key seen
    twice in that row (Lightning logs `epoch` twice) opens a new row instead of overwriting, so no
    value is lost. Parts of one mesh (TF2 writes one event per part) share a value.
    """
    rows: list[Row] = []
    latest: dict[int, Row] = {}  # step -> its newest row
    by_second: dict[tuple[int, object], Row] = {}  # (step, wall-time second) -> newest row opened then
    for prefix, ev in events:
        if not ev.values:
            continue
        row = latest.get(ev.step)
        if row is not None and abs(ev.wall_time - row.wall_time) > ROW_SPREAD:
            row = _row_near(by_second, ev)
        for tag, value in ev.values:
            key = join_key(prefix, tag) if prefix else tag
            if row is not None and key in row.values:
                merged = _merged(row.values[key], value)
                if merged is not None:
                    row.values[key] = merged
                    continue
                row = None
            if row is None:
                row = Row(first_seq + len(rows), ev.step, ev.wall_time, {})
                rows.append(row)
                latest[ev.step] = row
                by_second[(ev.step, _second(ev.wall_time))] = row
            row.values[key] = value
    return rows


def _second(wall_time: float) -> object:
    return math.floor(wall_time) if math.isfinite(wall_time) else str(wall_time)


def _row_near(by_second: dict[tuple[int, object], Row], ev: Event) -> Row | None:
    """The newest row of `ev`'s step opened within `ROW_SPREAD` of its wall time, if any."""
    second = _second(ev.wall_time)
    found = None
    for s in (second - 1, second, second + 1) if isinstance(second, int) else (second,):
        row = by_second.get((ev.step, s))
        if row is None or abs(ev.wall_time - row.wall_time) > ROW_SPREAD:
            continue
        if found is None or row.seq > found.seq:
            found = row
    return found


def _merged(old: object, new: object) -> Mesh | None:
    """`old` and `new` as one value if they are parts of one mesh, else None."""
    if isinstance(old, Mesh) and isinstance(new, Mesh):
        return old.merged(new)
    return None
