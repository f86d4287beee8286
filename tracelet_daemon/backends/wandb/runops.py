"""Operations on a live W&B run shared by the sinks (our own runs and attached ones)."""

from __future__ import annotations

import logging
import os

from ...metadata import ArtifactRequest

log = logging.getLogger("tracelet.wandb")


class WarnOnce:
    """Log each distinct problem once per run, however often its cause repeats."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, key: str, msg: str) -> None:
        if key not in self._seen:
            self._seen.add(key)
            log.warning(msg)


def log_artifact(run, request: ArtifactRequest) -> None:
    """Store a published artifact request with `run` (raises what wandb raises)."""
    import wandb

    art = wandb.Artifact(request.name, type=request.type, description=request.description or None,
                         metadata=dict(request.metadata) or None)
    for path, name in request.files:
        art.add_file(path, name=name)
    run.log_artifact(art, aliases=list(request.aliases) or None)


def save_file(run, name: str, content: bytes) -> bool:
    """Attach `content` as files/<name> of `run`; False (nothing written) if `name` escapes it."""
    safe = os.path.normpath(name).lstrip(os.sep)
    if safe.startswith(".."):
        return False
    path = os.path.join(str(run.dir), safe)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    run.save(path, base_path=str(run.dir), policy="now")
    return True
