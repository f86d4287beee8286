"""`tracelet status`: what the daemon is doing, from its state directory alone.

Reads the ``status.json`` snapshot the daemon rewrites every second (a running daemon is not
disturbed, and a stopped one still shows where it got to). File sizes are re-read from disk
where the files are visible, so "behind" is current even between snapshots.
"""

from __future__ import annotations

import json
import os
import time
from typing import Annotated

import typer

from ..errors import TraceletError
from ..metrics import bytes_unacknowledged, current_size, file_behind, read_progress
from ..metadata import display_text
from ..state import default_state_dir
from ..status import read_status
from ._common import StateDirOpt
from .health import assess


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    for limit, div, unit in ((120, 1, "s"), (7200, 60, "m"), (172800, 3600, "h")):
        if s < limit:
            return f"{s / div:.0f}{unit}"
    return f"{s / 86400:.0f}d"


def run_rows(snapshot: dict, now: float) -> list[dict]:
    """One summary dict per run: the table's cells, also useful for machines."""
    rows = []
    for run in snapshot.get("runs", []):
        files = run.get("files", [])
        errors = [f"{f['path']}: {f['error']}" for f in files if f.get("error")]
        if run.get("last_error"):
            errors.insert(0, run["last_error"])
        last = run.get("last_event_time") or 0
        name = display_text(str(run.get("name", "")), 200)  # a directory name: no escapes on a terminal
        if len(snapshot.get("backends") or ()) > 1:  # one row per (run, backend)
            name = f"{name} [{run.get('backend', '')}]"
        rows.append({
            "name": name,
            "backend": run.get("backend") or snapshot.get("backend", ""),
            "files": len(files),
            "bytes_read": sum(int(f.get("read") or 0) for f in files),
            "bytes_total": sum(current_size(f) for f in files),
            "bytes_behind": sum(file_behind(f) for f in files),
            "last_event_time": last or None,
            "last_event_age": (now - last) if last else None,
            "corrupt_records": sum(int(f.get("corrupt") or 0) for f in files),
            "quarantined_files": sum(1 for f in files if f.get("status", "ok") != "ok"),
            "pending_tails": sum(1 for f in files if f.get("pending_tail")),
            "open": bool(run.get("open")),
            "run_id": run.get("run_id", ""),
            "location": run.get("location", ""),
            "errors": errors,
        })
    return rows


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    right = {i for i, h in enumerate(header) if h in {"FILES", "BEHIND", "CORRUPT", "QUAR"}}

    def fmt(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs)
        return "  ".join(padded).rstrip()

    return [fmt(header), *(fmt(r) for r in body)]


def render(snapshot: dict, progress: dict | None, state_dir: str, now: float) -> list[str]:
    verdict = assess(snapshot, progress, now=now)
    t = snapshot.get("totals", {})
    pid = snapshot.get("pid")
    if verdict.running:
        state = (f"running (pid {pid}, heartbeat {human_age(verdict.heartbeat_age)} ago,"
                 f" up {human_age(now - float(snapshot.get('started') or now))})")
    else:
        state = f"not running (pid {pid}; last heartbeat {human_age(verdict.heartbeat_age)} ago)"
    lag = snapshot.get("lag_seconds", {})
    errors = ", ".join(f"{k} {v}" for k, v in sorted(t.get("errors", {}).items())) or "none"
    lines = [
        f"tracelet {state}",
        f"root {snapshot.get('root', '?')}  backend {snapshot.get('backend', '?')}  state {state_dir}",
        (f"{t.get('runs', 0)} run(s), {t.get('open_runs', 0)} open; {t.get('rows', 0)} row(s),"
         f" {t.get('events', 0)} record(s), {human_bytes(t.get('bytes_read', 0))} read this session;"
         f" {human_bytes(verdict.bytes_behind)} behind,"
         f" {human_bytes(bytes_unacknowledged(snapshot))} unconfirmed"),
        f"corrupt records {t.get('corrupt_records', 0)}; errors: {errors}",
    ]
    if lag.get("samples"):
        lines.append(f"lag p50 {lag['p50']:.2f}s  p99 {lag['p99']:.2f}s  last {lag['last']:.2f}s"
                     f" ({lag['samples']} samples)")
    source = snapshot.get("source") or {}
    if source:  # an object-store root: what listing and reading cost, and whether it answers
        down = source.get("unreachable_seconds") or 0
        lines.append(f"object store: {source.get('requests_list', 0)} listing(s),"
                     f" {source.get('requests_read', 0)} read(s); {source.get('prefixes', 0)} run prefix(es),"
                     f" {source.get('idle_prefixes', 0)} idle (listed with back-off)"
                     + (f"; failing for {human_age(down)}" if down else ""))
    if verdict.problems and verdict.running:
        lines.append("health: " + "; ".join(verdict.problems))
    rows = run_rows(snapshot, now)
    if not rows:
        return [*lines, "", "no runs yet"]
    body = [[
        r["name"], str(r["files"]), f"{human_bytes(r['bytes_read'])} / {human_bytes(r['bytes_total'])}",
        human_bytes(r["bytes_behind"]),
        "-" if r["last_event_age"] is None else f"{human_age(r['last_event_age'])} ago",
        str(r["corrupt_records"]), str(r["quarantined_files"]), r["run_id"],
    ] for r in rows]
    # the id column is tracelet's run id: W&B's own run id; other backends find their run by it
    id_header = "W&B RUN" if snapshot.get("backend", "wandb") == "wandb" else "RUN ID"
    header = ["RUN", "FILES", "READ", "BEHIND", "LAST EVENT", "CORRUPT", "QUAR", id_header]
    lines += ["", *_table(header, body)]
    lines += ["", "where the runs are:"]
    lines += [f"  {r['name']}: {r['location'] or '(not opened yet)'}" for r in rows]
    problems = [(r["name"], e) for r in rows for e in r["errors"]]
    if problems:
        lines += ["", "errors:"]
        lines += [f"  {name}: {e}" for name, e in problems]
    return lines


def status(
    state_dir: StateDirOpt = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the snapshot and derived figures as JSON.")] = False,
) -> None:
    """Show the daemon's runs: files, bytes read, lag, last event, W&B run and location, errors."""
    path = os.path.abspath(state_dir or default_state_dir())
    snapshot = read_status(path)
    if snapshot is None:
        raise TraceletError(f"no status in {path}: tracelet has not run with this state directory"
                            " (pass --state-dir or set TRACELET_STATE_DIR)")
    progress = read_progress(path)
    now = time.time()
    if as_json:
        verdict = assess(snapshot, progress, now=now)
        out = dict(snapshot)
        out["derived"] = {
            "state_dir": path, "running": verdict.running, "healthy": verdict.healthy,
            "problems": verdict.problems, "heartbeat_age": verdict.heartbeat_age,
            "bytes_behind": verdict.bytes_behind, "bytes_unacknowledged": bytes_unacknowledged(snapshot),
            "seconds_since_progress": verdict.seconds_since_progress, "runs": run_rows(snapshot, now),
        }
        typer.echo(json.dumps(out, indent=1, sort_keys=True, default=str))
        return
    for line in render(snapshot, progress, path, now):
        typer.echo(line)
