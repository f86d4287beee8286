"""The one interface every backend implements (W&B now; MLflow, ClearML, Aim later).

A backend turns typed rows into its own records and answers one question the engine's
exactly-once guarantee rests on: *which rows do you durably hold?* Rows carry a per-run
sequence number (``Row.seq``) that a backend stores with them, so that after a crash the
engine can recompute its position from the backend, as Litestream does from its replica.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import BackendError
from ..metadata import ArtifactRequest, RunMetadata
from ..values import Row


@dataclass(frozen=True)
class RunSpec:
    """What a backend needs to open a run; `extra` holds backend-specific settings."""

    run_id: str
    name: str
    directory: str
    project: str | None = None
    entity: str | None = None
    metadata: RunMetadata | None = None  # from the run directory (.tracelet/run.json, hparams.yaml)
    extra: dict[str, object] = field(default_factory=dict)


class RunSink(abc.ABC):
    """One open run in a backend."""

    @abc.abstractmethod
    def durable_seq(self) -> int:
        """Highest row sequence number the backend held when the run was opened (-1: none).

        Called once, right after opening: it is where replay after a crash starts.
        """

    @abc.abstractmethod
    def write(self, rows: Sequence[Row]) -> None:
        """Hand rows over, in order. Returning is not durability; raise BackendError on refusal."""

    @abc.abstractmethod
    def acknowledged(self) -> int:
        """Highest sequence number confirmed durable so far (cheap; called often)."""

    @abc.abstractmethod
    def finish(self, timeout: float) -> int:
        """Flush and close the run; return the highest sequence number now durable."""

    def checkpoint(self, seq: int, positions: dict[str, int]) -> None:  # noqa: B027 - optional
        """Store, with the rows, that rows up to `seq` came from these file positions.

        `positions` maps paths relative to the run directory to byte offsets. It lets a daemon
        whose state store was lost resume from what the backend holds.
        """

    def recovered_checkpoint(self) -> dict | None:
        """The newest checkpoint the backend holds at or below `durable_seq()`, if any."""
        return None

    def update_metadata(self, metadata: RunMetadata) -> None:  # noqa: B027 - optional
        """Apply changed run metadata (config, tags, notes) to the open run."""

    def log_artifact(self, request: ArtifactRequest) -> None:
        """Store an artifact with the run; backends without artifacts refuse clearly."""
        raise BackendError(f"this backend cannot store artifacts (requested {request.name!r})")

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where a person finds this run (a URL, or a local path for offline runs)."""


class Backend(abc.ABC):
    """A factory of run sinks plus whatever the backend needs to say at the end."""

    name: str = ""

    @abc.abstractmethod
    def open_run(self, spec: RunSpec) -> RunSink: ...

    def summary(self) -> list[str]:
        """Lines for the user once the command ends (e.g. how to upload offline runs)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release process-wide resources."""
