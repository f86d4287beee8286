"""A real `mlflow server` for the tests, and helpers that read back what MLflow holds.

The server runs on 127.0.0.1 with a SQLite backend and proxied artifacts (the setup people
deploy), in its own process group: stopping it kills the group, so no uvicorn worker outlives a
test. Everything read back goes through MLflow's own client (`get_run`, `get_metric_history`,
`list_artifacts`, `download_artifacts`): tracelet's sink is not trusted to check itself.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest
from server_process import free_port

READY_TIMEOUT = float(os.environ.get("TRACELET_MLFLOW_READY_TIMEOUT", "150"))  # 13-60 s on 2 busy cores
SERVER_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job runner / huey consumer processes
}
# the client side of every test: no telemetry, and give up on a dead server quickly
CLIENT_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def have_mlflow() -> bool:
    try:
        import mlflow  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken
        return False
    return True


NEEDS_MLFLOW = pytest.mark.skipif(not have_mlflow(), reason="mlflow is not installed (pip install '.[mlflow]')")


class MlflowServer:
    """`mlflow server` on a SQLite store in `directory`; stop() and start() keep the store."""

    def __init__(self, directory: str, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(directory, "server.log")
        os.makedirs(directory, exist_ok=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{os.path.join(self.directory, 'mlflow.db')}",
               "--artifacts-destination", os.path.join(self.directory, "artifacts"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = dict(os.environ, **SERVER_ENV)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.directory,
                                         start_new_session=True)  # its own group: killed as a whole
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}: {self.tail()}")
            if self.healthy():
                return self
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"mlflow server not ready after {READY_TIMEOUT:.0f}s: {self.tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (server, uvicorn and its workers) and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        if sig != signal.SIGKILL:  # workers exit ~20 s after SIGTERM; do not wait for them
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None
        deadline = time.monotonic() + 10
        while self.healthy() and time.monotonic() < deadline:  # nothing answers on the port any more
            time.sleep(0.2)

    def tail(self, n: int = 1500) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""


# -- reading back -----------------------------------------------------------------------------------
def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def find_run(uri: str, run_id: str, experiment: str = "tracelet"):
    """The one MLflow run tagged tracelet.run_id = `run_id` (asserts there is exactly one)."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    runs = c.search_runs([exp.experiment_id], f"tags.`tracelet.run_id` = '{run_id}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs for {run_id}"
    return runs[0]


def _f32(value: float) -> float | str:
    v = float(np.float32(value))
    return "nan" if math.isnan(v) else v


def metric_points(uri: str, mlflow_run_id: str, skip: frozenset[str] = frozenset({"tracelet.seq"})) -> Counter:
    """(key, step, float32 value) -> how many times MLflow holds it."""
    c = client(uri)
    run = c.get_run(mlflow_run_id)
    out: Counter = Counter()
    for key in run.data.metrics:
        if key in skip:
            continue
        for m in c.get_metric_history(mlflow_run_id, key):
            out[(key, int(m.step), _f32(m.value))] += 1
    return out


def artifact_paths(uri: str, mlflow_run_id: str, path: str | None = None) -> list[str]:
    """Every file under `path` (recursively), by MLflow's list_artifacts."""
    c = client(uri)
    out = []
    for f in c.list_artifacts(mlflow_run_id, path):
        out.extend(artifact_paths(uri, mlflow_run_id, f.path) if f.is_dir else [f.path])
    return out


def download(uri: str, mlflow_run_id: str, path: str, dst: str) -> str:
    from mlflow.artifacts import download_artifacts

    return download_artifacts(run_id=mlflow_run_id, artifact_path=path, dst_path=dst, tracking_uri=uri)


def _row_of(name: str) -> tuple[int, int, int]:
    """(step, row, index) from ``step<N>-row<M>[-i].ext``."""
    stem = name.rsplit(".", 1)[0]
    step, _, rest = stem[len("step"):].partition("-row")
    row, _, index = rest.partition("-")
    return int(step), int(row), int(index or 0)


def _markdown_rows(text: str) -> tuple[tuple[str, ...], ...]:
    lines = text.splitlines()
    if not (len(lines) >= 2 and lines[0].startswith("| ") and set(lines[1]) <= set("|-")):
        return ((text,),)
    out = []
    for line in lines[2:]:
        cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
        out.append(tuple(c.strip().replace("\\|", "|").replace("<br>", "\n") for c in cells))
    return tuple(out)


def mlflow_points(uri: str, mlflow_run_id: str, dst: str) -> Counter:
    """Everything a run holds as (key, step, kind, canonical value), like types_helpers.tb_points:
    metrics, then each artifact kind of docs/data-types.md read back from its file."""
    from PIL import Image
    from types_helpers import decode_pixels, digest, f32, pixels_key

    out: Counter = Counter()
    for (key, step, value), n in metric_points(uri, mlflow_run_id).items():
        out[(key, step, "scalar", f32(value))] += n
    grouped: dict[tuple, list] = {}
    for path in artifact_paths(uri, mlflow_run_id):
        local = download(uri, mlflow_run_id, path, dst)
        with open(local, "rb") as f:
            data = f.read()
        parts = path.split("/")
        if parts[0] == "images":
            name = parts[1]
            if name.endswith("+compressed.webp"):
                with Image.open(local) as img:
                    assert max(img.size) <= 256, name  # the thumbnail the UI's grid loads
                continue
            key, _s, step, _t, ts, _id = name[: -len(".png")].split("+")
            grouped.setdefault(("image", key.replace("~", "/"), int(step), ts), []).append(
                pixels_key(decode_pixels(data)))
            continue
        if parts[0] != "tensorboard" or len(parts) < 4:
            continue
        kind, key, (step, row, index) = parts[1], "/".join(parts[2:-1]), _row_of(parts[-1])
        if kind == "histograms":
            table = json.loads(data)
            assert table["columns"] == ["left", "right", "count"]
            rows = table["data"]
            canon = (round(sum(r[2] for r in rows)), float(rows[0][0]), float(rows[-1][1]))
            out[(key, step, "histogram", canon)] += 1
        elif kind == "pr_curves":
            cols = list(zip(*json.loads(data)["data"]))
            out[(key, step, "pr_curve", tuple(tuple(f32(x) for x in cols[i]) for i in (3, 4, 5, 6, 1, 2)))] += 1
        elif kind == "text":
            out[(key, step, "text", _markdown_rows(data.decode()))] += 1
        elif kind in ("audio", "videos"):
            grouped.setdefault((kind, key, step, row), []).append((index, digest(data)))
    for (kind, key, step, _row), items in grouped.items():
        if kind == "image":
            canon = items[0] if len(items) == 1 else tuple(sorted(items))
            out[(key, step, "image", canon)] += 1
        else:
            digests = tuple(d for _i, d in sorted(items))
            out[(key, step, "audio" if kind == "audio" else "video", digests[0] if len(digests) == 1 else digests)] += 1
    return out


def comparable(points: Counter) -> Counter:
    """tb_points' canonical values as MLflow keeps them: histograms by (total, min, max) (no
    rebinning), image batches as a sorted multiset (file names carry no order)."""
    out: Counter = Counter()
    for (key, step, kind, canon), n in points.items():
        if kind == "histogram":
            canon = (canon[0], canon[2], canon[3])
        elif kind == "image" and isinstance(canon[0], tuple) and isinstance(canon[0][0], tuple):
            canon = tuple(sorted(canon))
        out[(key, step, kind, canon)] += n
    return out


# -- fixtures (imported by the test modules; one server per session, whoever asks first) --------------
_shared: dict[str, MlflowServer] = {}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite store, proxied artifacts), shared by the session."""
    if not have_mlflow():
        pytest.skip("mlflow is not installed (pip install '.[mlflow]')")
    server = _shared.get("server")
    if server is None or server.proc is None:
        server = _shared["server"] = MlflowServer(str(tmp_path_factory.mktemp("mlflow-server"))).start()
    yield server
    server.kill()


@pytest.fixture
def mlflow_env(monkeypatch):
    """The client settings of every MLflow test; set here so the CLI's defaults change nothing
    outside the test (monkeypatch restores them)."""
    for key, value in CLIENT_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    return dict(os.environ)
