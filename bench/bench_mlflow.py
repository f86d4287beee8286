"""MLflow: the sequential `log_batch` floor vs `tracelet upload --backend mlflow`, one local server.

    python bench/bench_mlflow.py                  # the 12.6 MB reference log (scale 1)
    python bench/bench_mlflow.py --scale 0.1      # a smoke run
    python bench/bench_mlflow.py --in-flight 1,2,4

One `mlflow server` (SQLite store, proxied artifacts, its default 4 workers) on 127.0.0.1 serves
every contender, each into its own experiment:

* **floor**: what a hand-written replay costs at best. Every request is built before the clock
  starts (1,000 pre-built ``Metric`` entities per ``log_batch``, histogram JSON and PNG files on
  disk); the timed window is the calls alone, one after the other.
* **tracelet upload**: the whole `tracelet upload --backend mlflow` process (imports, reading,
  decoding, journaling, the acknowledgement marker, everything), with 1, 2 or 4 requests in
  flight (``TRACELET_MLFLOW_IN_FLIGHT``); "minus startup" subtracts the same command on a
  one-scalar log (interpreter, imports, wiring, opening and finishing a run).

After each tracelet run every metric is read back with ``get_metric_history`` and counted: a
figure only counts if nothing was lost. Nothing is asserted; the figures are printed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import _common as common
import make_log

common.ensure_repo_on_path()

SERVER_READY_TIMEOUT = 180.0
CLIENT_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
              "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


# -- the server -----------------------------------------------------------------------------------
class Server:
    """`mlflow server` in its own process group (stopped as a whole, workers included)."""

    def __init__(self, directory: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(directory, "server.log"), "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               f"sqlite:///{os.path.join(directory, 'mlflow.db')}", "--artifacts-destination",
               os.path.join(directory, "artifacts"), "--host", "127.0.0.1", "--port", str(self.port)]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **CLIENT_ENV)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=directory,
                                     start_new_session=True)
        started = time.monotonic()
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() - started > SERVER_READY_TIMEOUT:
                self.stop()
                raise RuntimeError("mlflow server did not start (see server.log)")
            time.sleep(0.5)
        self.ready_s = time.monotonic() - started

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.log.close()


# -- the floor ------------------------------------------------------------------------------------
def prebuilt_requests(event_file: str, files_dir: str):
    """(metric chunks of 1,000 pre-built entities, artifact files on disk) for the whole log."""
    from bench_upload import decoded_rows
    from mlflow.entities import Metric
    from PIL import Image as PILImage

    from tracelet_daemon.values import Histogram, Image

    metrics, files = [], []
    for i, row in enumerate(decoded_rows(event_file)):
        step = i
        for tag, value in row.items():
            if isinstance(value, float):
                metrics.append(Metric(tag, value, 1_700_000_000_000 + step, step))
            elif isinstance(value, Histogram):
                folder = os.path.join(files_dir, "tensorboard", "histograms", tag)
                os.makedirs(folder, exist_ok=True)
                path = os.path.join(folder, f"step{step}.json")
                data = [[value.edges[j], value.edges[j + 1], value.counts[j]] for j in range(len(value.counts))]
                with open(path, "w") as f:
                    json.dump({"columns": ["left", "right", "count"], "data": data}, f)
                files.append((path, f"tensorboard/histograms/{tag}"))
            elif isinstance(value, Image):
                folder = os.path.join(files_dir, "images")
                os.makedirs(folder, exist_ok=True)
                path = os.path.join(folder, f"{tag}+step+{step}+timestamp+0+x.png")
                PILImage.open(io.BytesIO(value.encoded)).save(path)
                files.append((path, "images"))
    chunks = [metrics[i:i + 1000] for i in range(0, len(metrics), 1000)]
    return chunks, files


def run_floor(uri: str, event_file: str, work: str) -> dict:
    from mlflow import MlflowClient

    chunks, files = prebuilt_requests(event_file, os.path.join(work, "floor-files"))
    client = MlflowClient(uri)
    exp = client.create_experiment(f"floor-{time.time_ns()}")
    run_id = client.create_run(exp).info.run_id
    started = time.perf_counter()
    for chunk in chunks:
        client.log_batch(run_id, metrics=chunk)
    for path, folder in files:
        client.log_artifact(run_id, path, folder)
    elapsed = time.perf_counter() - started
    return {"name": "floor (sequential log_batch, pre-built)", "ok": True, "timed_s": elapsed,
            "values": sum(len(c) for c in chunks), "requests": len(chunks), "files": len(files)}


# -- tracelet ---------------------------------------------------------------------------------------
def _tracelet_cmd(root: str, uri: str, project: str, state: str) -> list[str]:
    return [sys.executable, "-m", "tracelet_daemon", "upload", root, "--backend", "mlflow", "--tracking-uri", uri,
            "--project", project, "--state-dir", state, "--no-progress", "--log-level", "warning"]


def run_tracelet(uri: str, root: str, work: str, depth: int, startup_s: float, verify: bool) -> dict:
    project = f"tracelet-{depth}-{time.time_ns()}"
    env = common.python_env({**CLIENT_ENV, "TRACELET_MLFLOW_IN_FLIGHT": str(depth)})
    child = common.run_child(_tracelet_cmd(root, uri, project, os.path.join(work, f"state-{project}")), env=env)
    out = {"name": f"tracelet upload, {depth} in flight", "ok": child.ok, "timed_s": child.wall,
           "minus_startup_s": child.wall - startup_s, "tree_peak_kib": child.tree_peak_kib,
           "error": "" if child.ok else child.tail()}
    if child.ok and verify:
        out["delivered"] = delivered(uri, project)
    return out


def measure_startup(uri: str, work: str) -> float:
    """The same command on a one-scalar log: interpreter, imports (MLflow ~1.3 s), wiring, the
    experiment and run round trips, finishing; what is left of a real upload is the replay."""
    from tensorboardX import SummaryWriter

    root = os.path.join(work, "tiny-root")
    w = SummaryWriter(os.path.join(root, "tiny"))
    w.add_scalar("x", 1.0, 0)
    w.close()
    env = common.python_env(CLIENT_ENV)
    child = common.run_child(_tracelet_cmd(root, uri, f"startup-{time.time_ns()}", os.path.join(work, "state-startup")),
                             env=env)
    return child.wall


def delivered(uri: str, project: str) -> dict:
    """What the run holds, counted through MLflow's own client."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(project)
    (run,) = client.search_runs([exp.experiment_id])
    points = sum(len(client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics if k != "tracelet.seq")

    def count(path: str) -> int:
        return sum(count(f.path) if f.is_dir else 1 for f in client.list_artifacts(run.info.run_id, path))

    return {"scalars": points, "histograms": count("tensorboard/histograms"),
            "images": count("images") // 2}


# -- the bench ------------------------------------------------------------------------------------
def run_bench(log: make_log.LogInfo, depths: list[int], verify: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="tracelet-bench-mlflow-") as work:
        server = Server(work)
        try:
            floor = run_floor(server.uri, log.event_file, work)
            startup = measure_startup(server.uri, work)
            contenders = [run_tracelet(server.uri, log.root, work, d, startup, verify) for d in depths]
        finally:
            server.stop()
    for c in contenders:
        c["vs_floor"] = c["timed_s"] / floor["timed_s"] if c["ok"] else None
        c["minus_startup_vs_floor"] = c["minus_startup_s"] / floor["timed_s"] if c["ok"] else None
    return {"server_ready_s": server.ready_s, "startup_s": startup, "floor": floor, "contenders": contenders,
            "expected": {"scalars": log.spec.scalars, "histograms": log.spec.histograms, "images": log.spec.images}}


def format_report(res: dict) -> str:
    floor = res["floor"]
    exp = res["expected"]
    rows = [[floor["name"], f"{floor['timed_s']:.1f}", common.fmt_num(floor["values"] / floor["timed_s"]), "-", "1.00x",
             "-", f"{floor['values']:,} values, {floor['files']} files"]]
    for c in res["contenders"]:
        if not c["ok"]:
            rows.append([c["name"] + " FAILED", None, None, None, None, None, c["error"][-200:]])
            continue
        d = c.get("delivered")
        lost = "" if not d else ("all delivered" if d["scalars"] == exp["scalars"] and d["histograms"] == exp["histograms"]
                                 and d["images"] == exp["images"] else f"MISSING: {d} of {exp}")
        rows.append([c["name"], f"{c['timed_s']:.1f}", common.fmt_num(exp["scalars"] / c["timed_s"]),
                     f"{c['minus_startup_s']:.1f}", common.fmt_ratio(c["vs_floor"]),
                     common.fmt_ratio(c["minus_startup_vs_floor"]), lost or "(not verified)"])
    table = common.format_table(["contender", "time s", "values/s", "minus startup s", "vs floor",
                                 "minus startup vs floor", "read back"], rows)
    return (table + f"\n`tracelet upload --backend mlflow` of a one-scalar log: {res['startup_s']:.1f} s;"
            f" server ready in {res['server_ready_s']:.0f} s. vs floor > 1 is slower.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--out", default=None, help="log cache directory")
    ap.add_argument("--in-flight", default="1,2,4", help="comma-separated request depths for tracelet")
    ap.add_argument("--skip-verify", action="store_true", help="do not read the metrics back")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    print("machine:\n" + common.format_machine(common.machine_info()), flush=True)
    log = make_log.ensure_log(args.scale, args.out)
    res = run_bench(log, [int(d) for d in args.in_flight.split(",")], verify=not args.skip_verify)
    print(f"\nlog: {log.event_file} ({log.size_bytes / 1e6:.1f} MB)\n")
    print(format_report(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
