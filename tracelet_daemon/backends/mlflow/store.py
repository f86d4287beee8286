"""Where MLflow data goes: the tracking URI, the embedded default, and how to show it safely.

``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else an **embedded** SQLite store inside the
state directory (``<state>/mlflow/mlflow.db``, artifacts in ``<state>/mlflow/artifacts``).
MLflow's own default would put ``mlflow.db`` and ``./mlruns`` in the working directory; its file
store (``file:``, a bare path) refuses to start by default in MLflow 3 and keeps duplicate
points, which would break the replay-fills-gaps rule, so it is refused here with a clear error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ...errors import UsageError

EMBEDDED_DIR = "mlflow"

# MLflow's client retries a failed request 7 times with a backoff factor of 2 (minutes of
# blocking while a server is down). The daemon has its own backoff, status line and health
# probe, so it asks MLflow to give up sooner; a user's own setting wins.
DAEMON_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # a sidecar phones nowhere but the tracking server
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # the closing summary names every run
}


@dataclass(frozen=True)
class Target:
    """A resolved tracking URI: where to write and how to talk about it."""

    uri: str
    embedded: bool = False
    artifact_root: str | None = None  # embedded: where experiments keep their artifacts

    @property
    def remote(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    @property
    def display(self) -> str:
        return redact(self.uri)


def prepare_environment() -> None:
    """The daemon's defaults for MLflow's client (never overriding the user's)."""
    for key, value in DAEMON_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def embedded(state_dir: str) -> Target:
    base = os.path.join(os.path.abspath(state_dir), EMBEDDED_DIR)
    return Target(f"sqlite:///{os.path.join(base, 'mlflow.db')}", True, os.path.join(base, "artifacts"))


def resolve(tracking_uri: str | None, state_dir: str | None) -> Target:
    uri = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        if not state_dir:
            raise UsageError("MLflow needs --tracking-uri, MLFLOW_TRACKING_URI or a state directory"
                             " for its embedded store")
        return embedded(state_dir)
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("", "file") or re.fullmatch(r"[a-z]", scheme):  # a bare path (or C:\...)
        raise UsageError(f"MLflow tracking URI {redact(uri)!r} is a file store, which keeps duplicate points"
                         " (a replay would repeat them); use sqlite:///PATH/mlflow.db or a server URL")
    return Target(uri)


def redact(uri: str) -> str:
    """`uri` without a password or token in it (tracking URIs may carry user:password@)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparsable tracking URI>"
    if parts.password is None and not parts.username:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{parts.username}:***@{host}" if parts.password else f"***@{host}",
                       parts.path, parts.query, parts.fragment))


def run_location(target: Target, experiment_id: str, run_id: str) -> str:
    """Where a person finds the run: its page on a server, else the store and the ids."""
    if target.remote:
        return f"{target.display.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{target.display} (experiment {experiment_id}, run {run_id})"


def ui_command(target: Target) -> str:
    """How to look at an embedded store: MLflow's UI on this machine, serving its artifacts."""
    return (f"mlflow ui --backend-store-uri {target.uri} --artifacts-destination {target.artifact_root}"
            " --port 5000")
