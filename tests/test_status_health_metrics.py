"""`tracelet status`, `tracelet health`, the Prometheus endpoint and sd_notify, against a real
`tracelet watch` process (offline W&B) fed by a real TensorBoard writer.

One daemon serves the whole module (starting W&B runs is the slow part); every test only reads
from it, except the one that appends more steps and waits for them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from tensorboardX import SummaryWriter

from helpers import run_id_for
from tracelet_daemon.cli.health import assess
from tracelet_daemon.metrics import ProgressTracker

pytestmark = pytest.mark.slow

KEY = "tl0test" + "9f8e7d6c5b4a39281706f5e4d3c2b1a0fedcba98"  # fake, 47 chars, only for leak checks


def wait_until(predicate, timeout=45.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def clean_env(base: str) -> dict[str, str]:
    """The parent's environment minus anything W&B/tracelet/systemd, plus isolated offline W&B."""
    systemd = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_", "TRACELET_")) and k not in systemd}
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    for var, sub in (("WANDB_DIR", "wandb-dir"), ("WANDB_DATA_DIR", "wandb-data"),
                     ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_CONFIG_DIR", "wandb-config")):
        env[var] = os.path.join(base, sub)
    os.makedirs(env["WANDB_DIR"], exist_ok=True)
    return env


def tracelet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracelet_daemon", *args], capture_output=True, text=True,
                          env=env, timeout=60)


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket (read continuously,
    as systemd does)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return

    def drain(self) -> list[str]:
        return list(self.messages)

    def close(self) -> None:
        self._closed.set()
        self._reader.join(timeout=5)
        self.sock.close()


def write_steps(run_dir, rng, start, stop, suffix=""):
    """A closed writer: every record is whole on disk (a flush may leave half a record behind)."""
    writer = SummaryWriter(run_dir, filename_suffix=suffix)
    for step in range(start, stop):
        writer.add_scalar("loss", float(rng.normal()), step)
        if step % 10 == 0:
            writer.add_histogram("weights", rng.normal(size=2000), step)
    writer.close()


class Daemon:
    def __init__(self, base) -> None:
        self.base = str(base)
        self.root = os.path.join(self.base, "runs")
        self.state = os.path.join(self.base, "state")
        self.log_path = os.path.join(self.base, "watch.log")
        os.makedirs(self.root)
        self.env = clean_env(self.base)
        key_file = os.path.join(self.base, "wandb_api_key")
        with open(key_file, "w") as f:
            f.write(KEY + "\n")
        self.rng = np.random.default_rng(3)
        for name in ("alpha", "beta"):
            write_steps(os.path.join(self.root, name), self.rng, 0, 50)
        self.notify = NotifySocket(os.path.join(self.base, "notify.sock"))
        env = dict(self.env, NOTIFY_SOCKET=self.notify.path, WATCHDOG_USEC="2000000",
                   WANDB_API_KEY_FILE=key_file)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracelet_daemon", "watch", self.root, "--state-dir", self.state,
             "--rescan-interval", "0.5", "--metrics-port", "0", "--metrics-host", "127.0.0.1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.metrics_url = wait_until(self._metrics_url, what="the metrics endpoint in the log")
        wait_until(lambda: os.path.exists(os.path.join(self.state, "status.json")), what="status.json")

    def _metrics_url(self) -> str | None:
        assert self.proc.poll() is None, self.read_log()
        m = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", self.read_log())
        return m.group(1) if m else None

    def read_log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return tracelet(*args, "--state-dir", self.state, env=self.env)

    def status_json(self) -> dict:
        res = self.cli("status", "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def caught_up(self) -> dict | None:
        """The status once every byte on disk is read and no file is missing from it."""
        snap = self.status_json()
        files = [f for run in snap["runs"] for f in run["files"]]
        on_disk = {os.path.join(d, n) for d, _s, names in os.walk(self.root)
                   for n in names if "tfevents" in n}
        if {f["path"] for f in files} != on_disk or snap["derived"]["bytes_behind"]:
            return None
        if any(f["read"] != os.path.getsize(f["path"]) for f in files):
            return None
        return snap

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            assert resp.status == 200
            return resp.read().decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.notify.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    pytest.importorskip("prometheus_client", reason="prometheus-client is not installed (for --metrics-port)")
    d = Daemon(tmp_path_factory.mktemp("daemon"))
    try:
        yield d
    finally:
        rc = d.stop()
    assert rc == 0, d.read_log()


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} not in the metrics output"
    return float(m.group(1))


def test_sd_notify_ready_status_and_watchdog_over_a_real_socket(daemon):
    messages = wait_until(lambda: any("WATCHDOG=1" in m for m in daemon.notify.drain())
                          and daemon.notify.drain(),
                          what="a watchdog ping")
    first = messages[0].split("\n")
    assert first[0] == "READY=1", messages[0]
    assert f"MAINPID={daemon.proc.pid}" in first
    assert any(line.startswith("STATUS=") and "run(s)" in line for m in messages for line in m.split("\n"))


def test_status_shows_each_run_with_its_wandb_run_and_location(daemon):
    snap = wait_until(daemon.caught_up, what="the daemon to read everything")
    res = daemon.cli("status")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"running (pid {daemon.proc.pid}" in out
    for name in ("alpha", "beta"):
        rid = run_id_for(daemon.root, name)
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert rid in row
        assert re.search(r"\b\d\s+(\S+ KiB) / \1\s+0 B\b", row), row  # every byte read, 0 behind
    runs = {r["name"]: r for r in snap["runs"]}
    for name, run in runs.items():
        assert os.path.isdir(run["location"]), run["location"]  # offline folder of that W&B run
        assert run["run_id"] in os.path.basename(run["location"])
        assert f"{name}: {run['location']}" in out
    derived = {r["name"]: r for r in snap["derived"]["runs"]}
    assert derived["alpha"]["corrupt_records"] == 0 and derived["alpha"]["quarantined_files"] == 0
    assert derived["alpha"]["last_event_time"] > 0
    assert snap["derived"]["running"] and snap["derived"]["healthy"]
    assert snap["pid"] == daemon.proc.pid and snap["totals"]["runs"] == 2


def test_health_exits_0_for_a_live_daemon(daemon):
    res = daemon.cli("health")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("healthy: pid")
    verdict = json.loads(daemon.cli("health", "--json").stdout)
    assert verdict["healthy"] and verdict["running"] and verdict["pid"] == daemon.proc.pid


def test_metrics_follow_a_growing_log(daemon):
    wait_until(daemon.caught_up, what="the daemon to read everything")
    before = daemon.scrape()
    rows_before = metric(before, "tracelet_rows_total")
    write_steps(os.path.join(daemon.root, "alpha"), daemon.rng, 50, 120, suffix=".more")  # a second file
    snap = wait_until(daemon.caught_up, what="the new steps to be read")
    wait_until(lambda: metric(daemon.scrape(), "tracelet_rows_total") >= rows_before + 70,
               what="metrics to move")
    text = daemon.scrape()
    size = sum(f["size"] for run in snap["runs"] for f in run["files"])
    assert metric(text, "tracelet_bytes_read_total") == size
    assert metric(text, "tracelet_records_total") >= 2 * (50 + 5) + (70 + 7)  # scalars + histograms
    assert metric(text, "tracelet_open_runs") == 2
    assert metric(text, "tracelet_runs") == 2
    assert metric(text, "tracelet_bytes_behind") == 0
    assert metric(text, "tracelet_files", '{status="ok"}') == 3
    assert metric(text, "tracelet_lag_seconds", '{quantile="0.5"}') >= 0
    assert metric(text, "tracelet_corrupt_records_total") == 0
    assert "# TYPE tracelet_errors_total counter" in text
    assert re.search(r'^tracelet_info\{.*version="', text, re.M)


def test_the_api_key_never_leaves_the_process(daemon):
    wait_until(daemon.caught_up, what="the daemon to read everything")
    assert "W&B API key from " in daemon.read_log()  # it was loaded from the file...
    outputs = [daemon.read_log(), daemon.cli("status", "--json").stdout, daemon.cli("status").stdout,
               daemon.cli("health", "--json").stdout, daemon.scrape(), *daemon.notify.drain()]
    for text in outputs:
        assert KEY not in text
    for dirpath, _dirs, names in os.walk(daemon.base):  # state DB, status.json, W&B's own files
        for name in names:
            path = os.path.join(dirpath, name)
            if name == "wandb_api_key" or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                assert KEY.encode() not in f.read(), path


def test_health_reports_a_stall_and_a_dead_pid(tmp_path):
    """The verdict logic on real files: unread bytes with no progress, and a pid that is gone."""
    path = tmp_path / "events.out.tfevents.1.host"
    path.write_bytes(b"x" * 1000)
    now = time.time()
    snap = {"pid": os.getpid(), "heartbeat": now - 1, "totals": {"bytes_read": 400},
            "runs": [{"name": "r", "files": [{"path": str(path), "size": 400, "read": 400, "acked": 400,
                                              "status": "ok", "pending_tail": False}]}]}
    tracker = ProgressTracker(now=now - 1000)
    progress = tracker.observe(snap, now=now - 1000)  # first sight counts as progress
    progress = tracker.observe(snap, now=now)  # same bytes_read, 600 bytes behind: no progress since
    assert progress["bytes_behind"] == 600 and progress["last_progress"] == now - 1000
    verdict = assess(snap, progress, now=now, stall_after=300)
    assert not verdict.healthy and verdict.running
    assert "no progress for 1000s with 600 byte(s) unread" in verdict.problems[0]
    assert assess(snap, progress, now=now, stall_after=5000).healthy

    file0 = snap["runs"][0]["files"][0]
    caught_up = dict(snap, runs=[{"name": "r", "files": [dict(file0, size=1000, read=1000)]}])
    assert tracker.observe(caught_up, now=now)["last_progress"] == now  # nothing left to read is progress
    quarantined = dict(snap, runs=[{"name": "r", "files": [dict(file0, status="quarantined")]}])
    assert assess(quarantined, progress, now=now, stall_after=300).healthy  # not readable: not "behind"

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = assess(dict(snap, pid=gone.pid), None, now=now)
    assert not dead.healthy and not dead.running and "is not running" in dead.problems[0]
    stale = assess(dict(snap, heartbeat=now - 500), None, now=now, max_age=60)
    assert not stale.healthy and "heartbeat is 500s old" in stale.problems[0]
    assert not assess(None, None).healthy


def test_status_and_health_without_a_daemon(tmp_path, wandb_env):
    env = dict(os.environ)
    res = tracelet("status", "--state-dir", str(tmp_path / "nothing"), env=env)
    assert res.returncode == 1 and "no status in" in res.stderr and "Traceback" not in res.stderr
    res = tracelet("health", "--state-dir", str(tmp_path / "nothing"), env=env)
    assert res.returncode == 1 and res.stdout.startswith("unhealthy: no status.json")


def test_a_busy_metrics_port_and_a_bad_log_format_are_usage_errors(tmp_path, runs_root, wandb_env):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = str(busy.getsockname()[1])
        for extra, says in ((["--metrics-port", port], "cannot serve metrics on 127.0.0.1:" + port),
                            (["--log-format", "xml"], "unknown log format 'xml'")):
            res = tracelet("watch", str(runs_root), "--state-dir", str(tmp_path / "state"), *extra,
                           env=dict(os.environ))
            assert res.returncode == 2, res.stderr
            assert res.stderr.count("\n") == 1 and says in res.stderr and "Traceback" not in res.stderr
    finally:
        busy.close()


def test_the_daemons_own_tracker_trusts_the_snapshot_sizes(tmp_path):
    """look=False (the watching daemon) counts from the sizes its engine last stat'ed, so it does
    not stat every file again each tick; `tracelet health`'s tracker looks at the disk."""
    path = tmp_path / "events.out.tfevents.1.host"
    path.write_bytes(b"x" * 1000)
    snap = {"pid": os.getpid(), "totals": {"bytes_read": 400},
            "runs": [{"name": "r", "files": [{"path": str(path), "size": 700, "read": 400, "acked": 400,
                                              "status": "ok", "pending_tail": False}]}]}
    assert ProgressTracker(look=False).observe(snap)["bytes_behind"] == 300
    assert ProgressTracker().observe(snap)["bytes_behind"] == 600


def test_snapshot_writer_keeps_status_json_exact_as_runs_change(tmp_path):
    from tracelet_daemon.status import SnapshotWriter, read_status

    writer = SnapshotWriter(str(tmp_path / "status.json"))
    runs = [{"name": f"r{i}", "directory": f"/runs/r{i}", "files": [{"read": i}]} for i in range(3)]
    for change in range(4):
        snap = {"version": 1, "heartbeat": time.time(), "runs": [dict(r) for r in runs]}
        if change:
            snap["runs"][change - 1]["files"] = [{"read": 100 + change}]  # one run changes each time
        writer.write(snap)
        assert read_status(str(tmp_path)) == snap
    writer.write({"version": 1, "runs": []})
    assert read_status(str(tmp_path)) == {"version": 1, "runs": []}
