"""Which state store owns a W&B run id inside a shared W&B directory.

Run ids are derived from run directories, so two tracelet processes with two state stores
watching the same root compute the same ids. With ``WANDB_DIR`` pointed at one shared place,
both would write (and each replay from its own offsets into) the same offline runs: every value
twice. The first state store to open a run id there records itself; another one is refused
before anything is sent, unless the recorded store no longer exists (a lost state store is
recovered from W&B's own checkpoints, see docs/architecture.md).
"""

from __future__ import annotations

import os

from ...errors import BackendError

OWNER_ENV = "TRACELET_STATE_OWNER"  # set by prepare_environment; inherited by worker processes
_DIRNAME = ".tracelet-owners"


def claim(wandb_dir: str, run_id: str, owner: str) -> None:
    """Record `owner` (a state directory) for `run_id` in `wandb_dir`, or raise BackendError if
    another existing state directory holds it."""
    if not owner:
        return
    real_wandb, real_owner = os.path.realpath(wandb_dir), os.path.realpath(owner)
    if real_wandb == real_owner or real_wandb.startswith(real_owner + os.sep):
        return  # the W&B directory is private to this state store
    base = os.path.join(wandb_dir, _DIRNAME)
    os.makedirs(base, mode=0o700, exist_ok=True)
    path = os.path.join(base, run_id)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        with open(path, encoding="utf-8", errors="replace") as f:
            holder = f.read(4096).strip()
        if os.path.realpath(holder) == real_owner:
            return
        if os.path.exists(os.path.join(holder, "state.sqlite3")):
            raise BackendError(
                f"W&B run {run_id} in {wandb_dir} belongs to state directory {holder}; a second state"
                f" store ({owner}) would send its values again. Use --state-dir {holder}, or another"
                f" WANDB_DIR (delete {path} if {holder} is gone for good)") from None
        with open(path, "w", encoding="utf-8") as f:  # the old store is gone: take over
            f.write(real_owner)
        return
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(real_owner)
