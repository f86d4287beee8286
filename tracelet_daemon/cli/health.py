"""`tracelet health`: exit 0 if the daemon is alive and making progress, 1 otherwise.

For probes (Docker HEALTHCHECK, Kubernetes liveness/startup, monitoring scripts). It reads the
state directory only, so it needs no port and works from a read-only mount.

* **alive**: ``status.json``'s heartbeat is at most ``--max-age`` seconds old and its pid is
  a running process (skip the pid check with ``--no-pid-check`` when probing from another pid
  namespace, e.g. the host looking into a container's volume);
* **making progress**: the daemon read new bytes, or had nothing left to read, within the last
  ``--stall-after`` seconds (from ``progress.json``, which the daemon updates every second).
  Unread bytes that sit still for that long mean it is stuck (W&B unreachable and retrying, a
  wedged backend call, ...). Quarantined files and an incomplete last record that has not grown
  do not count as unread.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated

import typer

from ..metrics import bytes_behind, read_progress
from ..state import default_state_dir
from ..status import read_status
from ._common import StateDirOpt

DEFAULT_MAX_AGE = 60.0
DEFAULT_STALL_AFTER = 300.0


@dataclass
class Verdict:
    healthy: bool
    running: bool
    pid: int | None = None
    heartbeat_age: float | None = None
    bytes_behind: int = 0
    seconds_since_progress: float | None = None
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.healthy:
            return (f"healthy: pid {self.pid}, heartbeat {self.heartbeat_age:.1f}s ago,"
                    f" {self.bytes_behind} byte(s) behind")
        return "unhealthy: " + "; ".join(self.problems)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    except OSError:
        return False
    return True


def assess(snapshot: dict | None, progress: dict | None, *, now: float | None = None,
           max_age: float = DEFAULT_MAX_AGE, stall_after: float = DEFAULT_STALL_AFTER,
           check_pid: bool = True) -> Verdict:
    """The verdict for one snapshot and progress record (pure except for the pid and stat look-ups)."""
    now = time.time() if now is None else now
    if not snapshot:
        return Verdict(False, False,
                       problems=["no status.json: the daemon has not started with this state directory"])
    pid = snapshot.get("pid")
    age = max(0.0, now - float(snapshot.get("heartbeat") or 0))
    verdict = Verdict(True, True, pid=pid, heartbeat_age=age, bytes_behind=bytes_behind(snapshot))
    if check_pid and (not isinstance(pid, int) or not pid_alive(pid)):
        verdict.running = False
        verdict.problems.append(f"process {pid} is not running (last heartbeat {age:.0f}s ago)")
    elif age > max_age:
        verdict.running = False
        verdict.problems.append(f"heartbeat is {age:.0f}s old (limit {max_age:g}s)")
    if progress and progress.get("pid") == pid and progress.get("last_progress"):
        since = max(0.0, now - float(progress["last_progress"]))
        verdict.seconds_since_progress = since
        if verdict.running and verdict.bytes_behind > 0 and since > stall_after:
            verdict.problems.append(f"no progress for {since:.0f}s with {verdict.bytes_behind} byte(s)"
                                    f" unread (limit {stall_after:g}s)")
    verdict.healthy = not verdict.problems
    return verdict


def check(state_dir: str, **kwargs: object) -> Verdict:
    return assess(read_status(state_dir), read_progress(state_dir), **kwargs)  # type: ignore[arg-type]


def health(
    state_dir: StateDirOpt = None,
    max_age: Annotated[float, typer.Option(
        envvar="TRACELET_HEALTH_MAX_AGE", min=1,
        help="Oldest acceptable heartbeat, in seconds.")] = DEFAULT_MAX_AGE,
    stall_after: Annotated[float, typer.Option(
        envvar="TRACELET_HEALTH_STALL_AFTER", min=1,
        help="Unread bytes with no progress for this many seconds make the daemon unhealthy.",
    )] = DEFAULT_STALL_AFTER,
    pid_check: Annotated[bool, typer.Option(
        help="Check that the daemon's pid is running (off when probing from another pid namespace).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """Exit 0 if the daemon is alive and making progress, 1 if not (for probes)."""
    verdict = check(state_dir or default_state_dir(), max_age=max_age, stall_after=stall_after,
                    check_pid=pid_check)
    typer.echo(json.dumps(asdict(verdict), sort_keys=True) if as_json else verdict.line())
    if not verdict.healthy:
        raise typer.Exit(1)
