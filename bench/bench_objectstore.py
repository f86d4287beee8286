"""Object-store roots: lag, listing requests of idle runs, and retroactive upload from a bucket.

Everything talks HTTP to a real S3 endpoint: moto's standalone server on 127.0.0.1
(``tests/s3_server.py``, started and stopped here by pid, in its own process group); tracelet
reads it through fsspec + s3fs like any bucket, and the logs are written into it by the real
tensorboardX ``SummaryWriter("s3://...")`` (``tests/s3_writers.py``). Every tracelet is
``python -m tracelet_daemon watch|upload ...`` in its own process, offline W&B in temp dirs.

* ``lag``:    one tensorboardX writer flushing a step (2 scalars) every ~0.5 s for ~30 s, into
              ``s3://bench-lag/runs/lag`` under ``watch s3://bench-lag/runs --rescan-interval 1``,
              and the same writer into a local directory under ``watch DIR --rescan-interval 1``
              (inotify). For each flush: the writer's clock after the flush returned (``t`` in
              its JSON line; tensorboardX re-uploads the whole object before returning), and the
              object's size right after it (from the final object: the end of the last record of
              that step). The state store (``state.sqlite3``, as ``tests/watch_helpers.py``
              ``read_position`` reads it: acked offsets and journaled batch ranges) is polled
              every 20 ms; lag = first poll that shows the file read and journaled up to that
              size - ``t``. The engine hands the rows to the W&B SDK right after journaling them,
              in the same step. Flushes before the first journaled batch are warm-up (they waited
              for ``wandb.init``) and left out.
* ``idle``:   20 finished runs in ``s3://bench-idle/runs`` (one real tensorboardX log copied under
              20 run prefixes), uploaded once (untimed setup), then ``watch --rescan-interval 1
              --idle-after 10 --idle-interval 60`` for up to ``--idle-seconds`` (stops early once
              every run has shown a full gap at the cap). Requests are counted from moto's access
              log (every request the server answered, with its prefix) and from tracelet's own
              status.json ``source`` counters. The steady state starts at the first listing of a
              run that is followed by a gap of at least 0.9 x ``--idle-interval``.
* ``upload``: the reference log (make_log, 12.6 MB at scale 1) uploaded with ``tracelet upload``
              from a local directory and from the bucket (the same bytes put as one object), each
              ``--upload-repeat`` times alternating, fresh state and W&B dirs each time, fastest
              kept; plus one boto3 GetObject of the whole object (the transport floor) and, with
              ``--sdk-floor``, bench_upload's W&B SDK floor.

Run standalone: ``python bench/bench_objectstore.py [--quick] [--only lag|idle|upload]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from urllib.parse import parse_qs, urlsplit

import _common as common

common.ensure_repo_on_path()

TESTS_DIR = os.path.join(common.REPO_ROOT, "tests")
POLL_S = 0.02  # state store polling period for the lag figures
LAG_TARGET_S = 2.0  # p50 target for the bucket
UPLOAD_TARGET_RATIO = 1.5  # bucket time / local time
CAP_FRACTION = 0.9  # a gap >= this x --idle-interval is "at the cap"
TAGS = ("loss", "acc")


def _tests():
    """tests/s3_server.py and tests/s3_writers.py (imported, not copied)."""
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    import s3_server
    import s3_writers

    return s3_server, s3_writers


# -- processes: every one is started here, in its own group, and stopped by pid ---------------


class Procs:
    """Every subprocess the bench starts (its own session), so `stop_all` can end them by pid/group."""

    def __init__(self) -> None:
        self.live: dict[int, subprocess.Popen] = {}

    def popen(self, argv, **kw) -> subprocess.Popen:
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(list(argv), **kw)
        self.live[p.pid] = p
        return p

    def adopt(self, p: subprocess.Popen) -> subprocess.Popen:
        self.live[p.pid] = p
        return p

    def kill(self, p: subprocess.Popen) -> None:
        """SIGKILL the process, its group and every descendant still there (wandb-core has its own
        session and exits with its parent anyway); then reap it."""
        kids = common.descendants(p.pid) if p.poll() is None else []
        for target in ("group", *kids):
            try:
                if target == "group":
                    os.killpg(p.pid, signal.SIGKILL)
                else:
                    os.kill(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.live.pop(p.pid, None)

    def done(self, p: subprocess.Popen) -> None:
        self.live.pop(p.pid, None)

    def stop_all(self) -> None:
        for p in list(self.live.values()):
            if p.poll() is None:
                self.kill(p)
            self.live.pop(p.pid, None)


PROCS = Procs()


class Daemon(common.WatchDaemon):
    """`common.WatchDaemon` (a path or an s3:// URL) started through PROCS, its own session, and
    killed with its group and descendants if it does not drain."""

    def __init__(self, root: str, tmp: str, **kw) -> None:
        super().__init__(root, tmp, popen=PROCS.popen, **kw)

    def kill(self) -> None:
        PROCS.kill(self.proc)

    def stop(self, timeout: float = 120.0) -> int:
        code = super().stop(timeout)
        PROCS.done(self.proc)
        return code


def timed_run(argv: list[str], env: dict, timeout: float = 900.0) -> dict:
    """Spawn-to-exit wall time of a subprocess (own group, killed on timeout), its rusage and
    sampled tree RSS, as bench_upload's ``tracelet upload`` figure."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = PROCS.popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=common.REPO_ROOT)
        try:
            rusage, peaks = common._wait4(proc, timeout)
        finally:
            if proc.poll() is None:
                PROCS.kill(proc)
            PROCS.done(proc)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    return {"rc": proc.returncode, "wall_s": wall, "tree_peak_kib": peaks[0],
            "cpu_s": (rusage.ru_utime + rusage.ru_stime) if rusage else None,
            "tail": "\n".join(text.strip().splitlines()[-6:])}


# -- moto's access log ----------------------------------------------------------------------

_LINE = re.compile(r'\[(\d+/\w+/\d+ \d+:\d+:\d+)\] "(\w+) (\S+) HTTP/[\d.]+" (\d+)')


def log_size(moto) -> int:
    try:
        return os.path.getsize(moto.log_path)
    except OSError:
        return 0


def read_requests(moto, start: int, end: int | None = None) -> list[dict]:
    """Requests moto answered between two byte offsets of its log: time (the log's, 1 s grain),
    method, bucket, kind (list/get/put/head/...), prefix and delimiter of listings, status."""
    with open(moto.log_path, "rb") as f:
        f.seek(start)
        data = f.read() if end is None else f.read(max(0, end - start))
    return [r for r in map(parse_request, data.decode("utf-8", "replace").splitlines()) if r]


def parse_request(line: str) -> dict | None:
    m = _LINE.search(line)
    if not m:
        return None
    stamp, method, target, status = m.groups()
    url = urlsplit(target)
    parts = url.path.lstrip("/").split("/", 1)
    q = parse_qs(url.query, keep_blank_values=True)
    if parts[0] == "moto-api":
        return None
    if method == "GET" and "list-type" in q:
        kind = "list"
    elif method == "GET" and len(parts) > 1 and parts[1]:
        kind = "get"
    else:
        kind = method.lower()
    return {"t": datetime.strptime(stamp, "%d/%b/%Y %H:%M:%S").timestamp(), "method": method,
            "bucket": parts[0], "key": parts[1] if len(parts) > 1 else "", "kind": kind,
            "prefix": q.get("prefix", [None])[0], "delimiter": q.get("delimiter", [None])[0],
            "status": int(status)}


class LogTail(threading.Thread):
    """Follows moto's access log every 50 ms and stamps each request with the time its line
    appeared (the log's own stamps have a 1 s grain; werkzeug writes a line as it answers)."""

    PERIOD = 0.05

    def __init__(self, path: str, offset: int) -> None:
        super().__init__(daemon=True)
        self.path, self.offset = path, offset
        self.requests: list[dict] = []
        self.halt = threading.Event()
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._partial = b""

    def run(self) -> None:
        while not self.halt.is_set():
            self.poll()
            self.halt.wait(self.PERIOD)

    def poll(self) -> None:
        with self._io_lock:  # the thread and a final poll from the caller
            self._poll()

    def _poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        now = time.time()
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        found = []
        for line in lines:
            r = parse_request(line.decode("utf-8", "replace"))
            if r:
                r["t_log"], r["t"] = r["t"], now
                found.append(r)
        with self._lock:
            self.requests += found

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.requests)


# -- the state store ------------------------------------------------------------------------


def file_position(db_path: str, basename: str) -> int:
    """How far tracelet has read `basename` (acked, or journaled in a batch): watch_helpers'
    read_position, matching the event file by name (one event file per bench root)."""
    if not os.path.exists(db_path):
        return 0
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return 0
    best = 0
    try:
        for path, acked in db.execute("SELECT path, acked_offset FROM files"):
            if str(path).endswith("/" + basename):
                best = max(best, int(acked or 0))
        for (ranges,) in db.execute("SELECT ranges FROM batches"):
            for p, _s, e in json.loads(ranges):
                if str(p).endswith("/" + basename):
                    best = max(best, int(e))
    except (sqlite3.Error, ValueError):
        pass
    finally:
        db.close()
    return best


def step_ends(data: bytes) -> dict[int, int]:
    """step -> byte offset just past the last record of that step (records framed as TFRecord:
    8-byte length, 4-byte CRC, payload, 4-byte CRC); the size of the object after that step's flush."""
    from tracelet_daemon.events import decode_event

    ends: dict[int, int] = {}
    plugins: dict[str, str] = {}
    off = 0
    while off + 12 <= len(data):
        (n,) = struct.unpack_from("<Q", data, off)
        end = off + 12 + n + 4
        if end > len(data):
            break
        ev = decode_event(data[off + 12: off + 12 + n], plugins)
        if ev is not None:
            ends[ev.step] = max(ends.get(ev.step, 0), end)
        off = end
    return ends


def nearest_rank(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 1)) - 1))
    return sorted_values[k]


# -- 1. lag -----------------------------------------------------------------------------------


class Poller(threading.Thread):
    """Polls the state store every POLL_S; keeps (time.time() after the query, position) on change."""

    def __init__(self, db_path: str, name_of) -> None:
        super().__init__(daemon=True)
        self.db_path, self.name_of = db_path, name_of
        self.timeline: list[tuple[float, int]] = []
        self.polls = 0
        self.halt = threading.Event()

    def run(self) -> None:
        best = 0
        while not self.halt.is_set():
            name = self.name_of()
            if name:
                pos = file_position(self.db_path, name)
                now = time.time()
                self.polls += 1
                if pos > best:
                    best = pos
                    self.timeline.append((now, pos))
            self.halt.wait(POLL_S)

    @property
    def position(self) -> int:
        return self.timeline[-1][1] if self.timeline else 0


def run_lag(where: str, moto, seconds: float, interval: float, rescan: float, keep: bool,
            progress: bool) -> dict:
    """One writer flushing every `interval` s for ~`seconds` s under a fresh `watch`."""
    _s3, writers = _tests()
    tmp = tempfile.mkdtemp(prefix=f"tracelet-bench-objectstore-lag-{where}-")
    res: dict = {"root_kind": where, "ok": False, "error": "", "rescan_s": rescan, "interval_s": interval}
    daemon = writer = None
    poller = None
    try:
        wenv = common.wandb_env(tmp)
        if where == "s3":
            bucket = moto.make_bucket("bench-lag")
            root = f"s3://{bucket}/runs"
            env, wr_env = moto.subprocess_env(wenv), moto.subprocess_env()
        else:
            bucket = None
            root = os.path.join(tmp, "root")
            os.makedirs(root)
            env, wr_env = wenv, common.python_env()
        res["root"] = root
        state = os.path.join(tmp, "state")
        daemon = Daemon(root, tmp, state_dir=state, env=env, rescan_interval=rescan)
        if daemon.wait_status() is None:
            res["error"] = "watch wrote no status.json: " + daemon.log_tail(10)
            return res
        steps = max(2, round(seconds / interval))
        events: list[dict] = []
        werr = open(os.path.join(tmp, "writer.err"), "w")  # noqa: SIM115 - closed below
        writer = PROCS.adopt(writers.spawn("tbx", f"{root}/lag", steps, interval, env=wr_env, tags=TAGS,
                                           flush_every=1, stderr=werr))

        def read_events() -> None:
            for line in writer.stdout:
                if line.startswith("{"):
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        pass

        reader = threading.Thread(target=read_events, daemon=True)
        reader.start()

        def event_name() -> str:
            opened = next((e for e in events if e.get("event") == "open"), None)
            return os.path.basename(opened["key"]) if opened else ""

        poller = Poller(os.path.join(state, "state.sqlite3"), event_name)
        poller.start()
        if progress:
            print(f"  objectstore: lag, {where} root, {steps} flushes every {interval:g} s ...",
                  file=sys.stderr, flush=True)
        try:
            writer.wait(timeout=seconds * 4 + 120)
        except subprocess.TimeoutExpired:
            res["error"] = "the writer did not finish"
            return res
        reader.join(10)
        werr.close()
        PROCS.done(writer)
        if writer.returncode != 0 or not event_name():
            with open(os.path.join(tmp, "writer.err")) as f:
                res["error"] = f"writer exit {writer.returncode}: " + f.read()[-1500:]
            return res
        key = next(e for e in events if e.get("event") == "open")["key"]
        if bucket:
            data = moto.get_object(bucket, writers.split_url(key)[1])
        else:
            with open(key, "rb") as f:
                data = f.read()
        ends = step_ends(data)
        deadline = time.monotonic() + 120
        while poller.position < len(data) and time.monotonic() < deadline and daemon.proc.poll() is None:
            time.sleep(0.1)
        poller.halt.set()
        poller.join(5)
        snap = daemon.status() or {}
        res["source"] = snap.get("source")
        res["daemon_exit"] = daemon.stop()
        daemon = None
        if poller.position < len(data):
            res["error"] = f"tracelet read {poller.position} of {len(data)} bytes within 120 s"
            return res
        flushes = [e for e in events if e.get("event") == "flush"]
        timeline = poller.timeline
        first_read = timeline[0][0]
        samples, warm = [], []
        for e in flushes:
            size = ends.get(e["step"])
            if size is None:
                continue
            reached = next(t for t, pos in timeline if pos >= size)
            lag = reached - e["t"]
            (warm if e["t"] < first_read else samples).append(lag)
        lags = sorted(samples)
        period = ((flushes[-1]["t"] - flushes[0]["t"]) / (len(flushes) - 1)) if len(flushes) > 1 else None
        res.update({
            "ok": bool(lags), "flushes": len(flushes), "samples": len(lags), "warmup_excluded": len(warm),
            "first_flush_lag_s": warm[0] if warm else (samples[0] if samples else None),
            "p50_s": nearest_rank(lags, 0.50), "p90_s": nearest_rank(lags, 0.90), "max_s": lags[-1] if lags else None,
            "mean_s": sum(lags) / len(lags) if lags else None, "negative": sum(x < 0 for x in lags),
            "flush_period_s": period, "object_bytes": len(data), "polls": poller.polls,
            "writer_span_s": flushes[-1]["t"] - flushes[0]["t"] if flushes else None,
        })
        if not lags:
            res["error"] = "no flush after the warm-up"
        return res
    finally:
        if poller is not None:
            poller.halt.set()
        if writer is not None and writer.poll() is None:
            PROCS.kill(writer)
        if daemon is not None:
            daemon.stop(timeout=60)
        if not keep:
            common.remove_tree(tmp)
        elif progress:
            print(f"  objectstore: kept {tmp}", file=sys.stderr)


# -- 2. idle runs -------------------------------------------------------------------------------


def backoff_to_cap(idle_after: float, cap: float) -> float:
    """Seconds from a run's last change to the listing after which it is listed once per `cap`:
    unchanged for idle_after, then gaps of 1, 2, 4, ... s (objectstore._list_prefix) below the cap."""
    total, step = idle_after, 1.0
    while step < cap:
        total += step
        step *= 2
    return total


def schedule_figures(runs: int, rescan: float, idle_after: float, cap: float) -> dict:
    """What the documented schedule predicts for `runs` unchanged runs (derived, not measured)."""
    root_per_min = 60.0 / rescan
    per_run = 60.0 / cap
    return {"rescan_s": rescan, "idle_after_s": idle_after, "idle_interval_s": cap,
            "prefix_per_run_per_min_steady": per_run, "prefix_per_run_per_min_before_idle": 60.0 / rescan,
            "root_per_min": root_per_min, "root_share_steady": root_per_min / (root_per_min + per_run * runs),
            "all_per_run_per_min_steady": per_run + root_per_min / runs,
            "to_cap_s": backoff_to_cap(idle_after, cap)}


def steady_state(listings: dict[str, list[float]], cap: float) -> dict:
    """Per run: the first listing followed by a gap >= CAP_FRACTION x cap starts its steady state;
    the gaps from there on give the rate."""
    starts, ends, gaps, to_cap = [], [], [], []
    missing = []
    for name, times in sorted(listings.items()):
        k = next((i for i in range(len(times) - 1) if times[i + 1] - times[i] >= CAP_FRACTION * cap), None)
        if k is None:
            missing.append(name)
            continue
        starts.append(times[k])
        ends.append(times[-1])
        gaps += [b - a for a, b in zip(times[k:], times[k + 1:])]
        to_cap.append(times[k] - times[0])
    return {"runs_at_cap": len(starts), "runs_not_at_cap": missing, "gaps": gaps,
            "window": (min(starts), min(ends)) if starts else None,
            "to_cap_s": (min(to_cap), max(to_cap)) if to_cap else None}


def run_idle(moto, runs: int, max_seconds: float, rescan: float, idle_after: float, cap: float,
             keep: bool, progress: bool) -> dict:
    _s3, writers = _tests()
    tmp = tempfile.mkdtemp(prefix="tracelet-bench-objectstore-idle-")
    res: dict = {"ok": False, "error": "", "runs": runs, "rescan_s": rescan, "idle_after_s": idle_after,
                 "idle_interval_s": cap, "max_seconds": max_seconds}
    daemon = tail = None
    try:
        bucket = moto.make_bucket("bench-idle")
        root = f"s3://{bucket}/runs"
        res["root"] = root
        env = moto.subprocess_env(common.wandb_env(tmp))
        wr_env = moto.subprocess_env()
        one = writers.write_tbx(f"{root}/idle-00", 50, tags=TAGS, flush_every=25, env=wr_env)
        body = moto.get_object(bucket, one.key)
        name = os.path.basename(one.key)
        for i in range(1, runs):
            moto.put_object(bucket, f"runs/idle-{i:02d}/{name}", body)
        res["object_bytes"] = len(body)
        state = os.path.join(tmp, "state")
        up = timed_run([sys.executable, "-m", "tracelet_daemon", "upload", root, "--backend", "wandb",
                        "--state-dir", state, "--no-progress"], env, timeout=600)
        res["setup_upload_s"] = up["wall_s"]
        if up["rc"] != 0:
            res["error"] = f"setup upload exit {up['rc']}: {up['tail']}"
            return res
        if progress:
            print(f"  objectstore: idle, {runs} finished runs, up to {max_seconds:g} s of watch ...",
                  file=sys.stderr, flush=True)
        tail = LogTail(moto.log_path, log_size(moto))
        tail.start()
        daemon = Daemon(root, tmp, state_dir=state, env=env, rescan_interval=rescan,
                        extra_args=["--idle-after", f"{idle_after:g}", "--idle-interval", f"{cap:g}"])
        t0 = time.time()
        samples: list[dict] = []
        seen_heartbeat = 0.0
        next_check = time.monotonic() + 10
        stopped_early = False
        while time.time() - t0 < max_seconds and daemon.proc.poll() is None:
            time.sleep(1.0)
            snap = daemon.status()
            if snap and snap.get("heartbeat", 0) > seen_heartbeat and snap.get("source"):
                seen_heartbeat = snap["heartbeat"]
                samples.append({"t": snap["heartbeat"] - t0, **snap["source"]})
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 5
                st = steady_state(_prefix_listings(tail.snapshot(), bucket), cap)
                if st["runs_at_cap"] >= runs and not st["runs_not_at_cap"]:
                    stopped_early = True
                    break
        if daemon.proc.poll() is not None:
            res["error"] = f"watch exited ({daemon.proc.returncode}): " + daemon.log_tail(10)
            return res
        watched = time.time() - t0
        tail.poll()
        reqs = tail.snapshot()  # everything up to the stop (the final drain's listings are not idle ones)
        last_live = daemon.status() or {}
        res["daemon_exit"] = daemon.stop()
        tail.halt.set()
        tail.join(5)
        tail.poll()
        all_reqs = tail.snapshot()
        final = _final_status(state)
        daemon = None
        res.update(_idle_figures(reqs, bucket, cap, runs, rescan))
        res["watched_s"] = watched
        res["stopped_early"] = stopped_early
        res["samples"] = samples
        res["status_at_stop"] = last_live.get("source")
        res["status_final"] = (final or {}).get("source")
        res["server_totals"] = _kind_counts(all_reqs)
        res["predicted"] = schedule_figures(runs, rescan, idle_after, cap)
        res["ok"] = not res.get("error")
        return res
    finally:
        if tail is not None:
            tail.halt.set()
        if daemon is not None:
            daemon.stop(timeout=60)
        if not keep:
            common.remove_tree(tmp)
        elif progress:
            print(f"  objectstore: kept {tmp}", file=sys.stderr)


def _final_status(state_dir: str) -> dict | None:
    from tracelet_daemon.status import read_status

    return read_status(state_dir)


def _kind_counts(reqs: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reqs:
        out[r["kind"]] = out.get(r["kind"], 0) + 1
    return out


def _prefix_listings(reqs: list[dict], bucket: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in reqs:
        if r["bucket"] == bucket and r["kind"] == "list" and r["prefix"] and r["prefix"] != "runs/" \
                and r["prefix"].startswith("runs/"):
            out.setdefault(r["prefix"][len("runs/"):].strip("/"), []).append(r["t"])
    return out


def _root_listings(reqs: list[dict], bucket: str) -> list[float]:
    return [r["t"] for r in reqs if r["bucket"] == bucket and r["kind"] == "list" and r["prefix"] == "runs/"]


def _idle_figures(reqs: list[dict], bucket: str, cap: float, runs: int, rescan: float) -> dict:
    """Steady-state figures. Run-prefix listings: one per steady gap of each run. Root listings,
    reads and other requests: counted in the window from the first run's steady start to the first
    run's steady end, both moved half a rescan earlier so each boundary falls between two scans (a
    scan lists the root, then the due run prefixes, within tens of ms)."""
    listings = _prefix_listings(reqs, bucket)
    roots = _root_listings(reqs, bucket)
    st = steady_state(listings, cap)
    out: dict = {"prefixes_listed": len(listings), "runs_at_cap": st["runs_at_cap"],
                 "runs_not_at_cap": st["runs_not_at_cap"], "to_cap_s": st["to_cap_s"],
                 "listings_per_run": sorted({len(v) for v in listings.values()}),
                 "total_prefix_listings": sum(len(v) for v in listings.values()), "total_root_listings": len(roots),
                 "total_reads": sum(r["kind"] == "get" for r in reqs),
                 "span_s": (reqs[-1]["t"] - reqs[0]["t"]) if reqs else None}
    if not st["window"] or not st["gaps"]:
        out["error"] = (f"the back-off did not reach the cap within the window for {len(st['runs_not_at_cap'])} run(s)"
                        f" (run longer: --idle-seconds)")
        return out
    a, b = st["window"]
    gaps = st["gaps"]
    shift = rescan / 2
    in_window = [r for r in reqs if r["bucket"] == bucket and a - shift <= r["t"] < b - shift]
    root_n = sum(1 for r in in_window if r["kind"] == "list" and r["prefix"] == "runs/")
    prefix_n = len(gaps)
    minutes = (b - a) / 60.0
    out.update({
        "steady_window": [a, b], "steady_window_s": b - a, "steady_gap_mean_s": sum(gaps) / len(gaps),
        "steady_gap_min_s": min(gaps), "steady_gap_max_s": max(gaps), "steady_gaps": len(gaps),
        "prefix_per_run_per_min": len(gaps) / (sum(gaps) / 60.0),
        "root_per_min": root_n / minutes if minutes > 0 else None,
        "root_share": root_n / (root_n + prefix_n) if root_n + prefix_n else None,
        "window_counts": {"root_list": root_n, "prefix_list": prefix_n,
                          "prefix_list_in_window": sum(1 for r in in_window if r["kind"] == "list"
                                                       and r["prefix"] != "runs/"),
                          "reads": sum(1 for r in in_window if r["kind"] == "get"),
                          "other": sum(1 for r in in_window if r["kind"] not in ("list", "get"))},
    })
    out["all_per_run_per_min"] = (root_n + prefix_n) / runs / minutes if minutes > 0 else None
    return out


# -- 3. retroactive upload -----------------------------------------------------------------------


def run_upload(moto, log, repeat: int, sdk_floor: bool, keep: bool, progress: bool) -> dict:
    import bench_upload

    bucket = moto.make_bucket("bench-upload")
    event_file = log.event_file
    with open(event_file, "rb") as f:
        body = f.read()
    run_name = os.path.basename(os.path.dirname(event_file))
    key = f"logs/{run_name}/{os.path.basename(event_file)}"
    moto.put_object(bucket, key, body)
    common.warm_page_cache(event_file)
    roots = {"local": log.root, "s3": f"s3://{bucket}/logs"}
    tries: dict[str, list[dict]] = {"local": [], "s3": []}
    for i in range(max(1, repeat)):
        for where in ("local", "s3"):
            tmp = tempfile.mkdtemp(prefix=f"tracelet-bench-objectstore-upload-{where}-")
            try:
                wenv = common.wandb_env(tmp)
                env = moto.subprocess_env(wenv)  # the same environment for both roots
                if progress:
                    print(f"  objectstore: upload from {where} (run {i + 1}/{repeat}) ...", file=sys.stderr, flush=True)
                start = log_size(moto)
                run = timed_run([sys.executable, "-m", "tracelet_daemon", "upload", roots[where], "--backend", "wandb",
                                 "--state-dir", os.path.join(tmp, "state"), "--no-progress"], env)
                run["requests"] = _kind_counts([r for r in read_requests(moto, start) if r["bucket"] == bucket])
                d = bench_upload.count_delivered(bench_upload.wandb_files(wenv["WANDB_DIR"]))
                run["delivered"] = {"rows": d.rows, "scalars": d.scalars, "histograms": d.histograms,
                                    "images": d.images, "finished": d.finished, "files": d.files}
                run["ok"] = run["rc"] == 0 and d.finished
                tries[where].append(run)
            finally:
                if not keep:
                    common.remove_tree(tmp)
    best = {}
    for where, runs in tries.items():
        good = [r for r in runs if r["ok"]]
        best[where] = min(good, key=lambda r: r["wall_s"]) if good else (runs[-1] if runs else None)
    size = len(body)
    out: dict = {"object_bytes": size, "log": log.root, "url": roots["s3"], "repeat": repeat, "tries": tries,
                 "best": best}
    for where in ("local", "s3"):
        b = best[where]
        out[f"{where}_mb_s"] = size / 1e6 / b["wall_s"] if b and b["ok"] else None
    if best["local"] and best["s3"] and best["local"]["ok"] and best["s3"]["ok"]:
        out["ratio_s3_local"] = best["s3"]["wall_s"] / best["local"]["wall_s"]
    # transport floor: the whole object in one GetObject (boto3, this process), best of 3
    client = moto.client(timeout=60)
    gets = []
    for _ in range(3):
        t = time.perf_counter()
        n = len(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        gets.append(time.perf_counter() - t)
    out["get_floor_s"] = min(gets)
    out["get_floor_mb_s"] = n / 1e6 / min(gets)
    # a fixed cost of the bucket upload: importing the S3 client stack in a fresh interpreter
    code = "import time; t = time.perf_counter(); import s3fs; print(time.perf_counter() - t)"
    took = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env=common.python_env(), check=False)
        if done.returncode == 0:
            took.append(float(done.stdout.strip().splitlines()[-1]))
    out["s3fs_import_s"] = min(took) if took else None
    if sdk_floor:
        if progress:
            print("  objectstore: W&B SDK floor (bench_upload) ...", file=sys.stderr, flush=True)
        c = bench_upload.run_worker("floor", "W&B SDK floor", log.root, keep)
        out["sdk_floor"] = {"ok": c.ok, "timed_s": c.timed_s, "wall_s": c.wall_s, "error": c.error}
    return out


# -- the bench ------------------------------------------------------------------------------------


def run_bench(quick: bool = False, only: list[str] | None = None, *, scale: float | None = None,
              out: str | None = None, lag_seconds: float | None = None, interval: float = 0.5,
              idle_seconds: float | None = None, idle_runs: int = 20, idle_after: float | None = None,
              idle_interval: float | None = None, upload_repeat: int | None = None, sdk_floor: bool = False,
              keep: bool = False, progress: bool = True) -> dict:
    s3_server, _writers = _tests()
    if not s3_server.moto_available():
        return {"ok": False, "error": "moto[server] and boto3 are needed (pip install 'moto[server]')"}
    try:
        import s3fs  # noqa: F401
    except ImportError:
        return {"ok": False, "error": "s3fs is needed (pip install 'tracelet[s3]')"}
    lag_seconds = lag_seconds or (10.0 if quick else 30.0)
    idle_seconds = idle_seconds or (60.0 if quick else 180.0)
    idle_after = idle_after if idle_after is not None else (5.0 if quick else 10.0)
    idle_interval = idle_interval or (15.0 if quick else 60.0)
    upload_repeat = upload_repeat or (1 if quick else 2)
    scale = scale or (0.1 if quick else 1.0)
    summary: dict = {"quick": quick, "ok": True}
    moto = s3_server.MotoServer()
    try:
        moto.start()
        summary["moto"] = {"endpoint": moto.endpoint, "pid": moto.pid}
        if not only or "lag" in only:
            summary["lag"] = {where: run_lag(where, moto, lag_seconds, interval, 1.0, keep, progress)
                              for where in ("s3", "local")}
        if not only or "idle" in only:
            summary["idle"] = run_idle(moto, idle_runs, idle_seconds, 1.0, idle_after, idle_interval, keep, progress)
            from tracelet_daemon.engine import Options

            o = Options()
            summary["idle"]["defaults"] = schedule_figures(idle_runs, o.rescan_interval, o.idle_after,
                                                           o.idle_interval)
        if not only or "upload" in only:
            import make_log

            log = make_log.ensure_log(scale, out)
            summary["upload"] = run_upload(moto, log, upload_repeat, sdk_floor, keep, progress)
            summary["upload"]["scale"] = scale
    finally:
        PROCS.stop_all()
        moto.close()
    return summary


def _s(x: float | None) -> str:
    return common.secs_cell(x)


def _verdict(ok: bool | None) -> str:
    return "not run" if ok is None else ("met" if ok else "NOT met")


def format_report(summary: dict) -> str:
    if summary.get("error"):
        return f"object store bench not run: {summary['error']}"
    text: list[str] = []
    lag = summary.get("lag")
    if lag:
        rows = []
        for where in ("s3", "local"):
            r = lag[where]
            label = ("bucket (moto S3), rescan 1 s" if where == "s3" else "local dir, inotify + rescan 1 s")
            if not r["ok"]:
                rows.append([label + " FAILED", None, None, None, None, None, None, None, None])
                continue
            rows.append([label, f"{r['samples']} (+{r['warmup_excluded']} warm-up)", _s(r["p50_s"]), _s(r["p90_s"]),
                         _s(r["max_s"]), _s(r["mean_s"]), _s(r["first_flush_lag_s"]), _s(r["flush_period_s"]),
                         f"{r['object_bytes']:,}"])
        s3, loc = lag["s3"], lag["local"]
        if s3["ok"] and loc["ok"]:
            rows.append(["ratio bucket / local", None, common.fmt_ratio_sig(s3["p50_s"] / loc["p50_s"]),
                         common.fmt_ratio_sig(s3["p90_s"] / loc["p90_s"]),
                         common.fmt_ratio_sig(s3["max_s"] / loc["max_s"]),
                         common.fmt_ratio_sig(s3["mean_s"] / loc["mean_s"]), None, None, None])
        text += [("lag: the writer's flush returned -> tracelet has read and journaled that flush's bytes"
                  " (state store polled every 20 ms; the rows go to the W&B SDK right after, in the same step)"),
                 common.format_table(["root", "flushes", "p50", "p90", "max", "mean", "first flush", "flush every",
                                      "object bytes"], rows)]
        if s3["ok"]:
            src = s3.get("source") or {}
            text.append(f"  target p50 <= {LAG_TARGET_S:g} s on the bucket: {_verdict(s3['p50_s'] <= LAG_TARGET_S)};"
                        f" tracelet's requests while following it: {src.get('requests_list', '?')} list,"
                        f" {src.get('requests_read', '?')} read ({s3['flushes']} flushes)")
            text.append("  first flush: includes wandb.init (the run opens on its first data); warm-up = flushes"
                        " made before the first journaled batch, left out of p50/p90/max")
            text.append(f"  the local figures are at the scale of the {POLL_S * 1000:.0f} ms polling grain (+ one SQLite"
                        " query), so the ratio is indicative; the bucket's lag is set by the rescan period (a flush"
                        " waits 0-1 s for the next listing)")
        for where in ("s3", "local"):
            if not lag[where]["ok"]:
                text.append(f"  {where}: {lag[where]['error']}")
            elif lag[where].get("negative"):
                text.append(f"  {where}: {lag[where]['negative']} flush(es) were read before flush() returned (lag < 0,"
                            " kept): the writer's thread writes events into the file before the flush")
        text.append("")
    idle = summary.get("idle")
    if idle:
        text.append(f"idle runs: {idle['runs']} finished runs already uploaded, `watch {idle.get('root', '')}"
                    f" --rescan-interval {idle['rescan_s']:g} --idle-after {idle['idle_after_s']:g}"
                    f" --idle-interval {idle['idle_interval_s']:g}` for {idle.get('watched_s', 0):.0f} s"
                    f"{' (stopped once the cap was seen)' if idle.get('stopped_early') else ''}; requests from moto's"
                    " access log, stamped as its lines appear (50 ms grain)")
        if not idle.get("steady_gaps"):
            text.append(f"  FAILED: {idle.get('error')}")
        else:
            p, d = idle["predicted"], idle["defaults"]
            lo, hi = idle["to_cap_s"]
            rows = [
                ["list requests per idle run per minute, steady (run prefix)",
                 f"{idle['prefix_per_run_per_min']:.3f}", f"{p['prefix_per_run_per_min_steady']:.3f}",
                 f"{d['prefix_per_run_per_min_steady']:.3f}"],
                ["  gap between two listings of a run, steady (mean; min-max)",
                 f"{idle['steady_gap_mean_s']:.1f} s ({idle['steady_gap_min_s']:.1f}-{idle['steady_gap_max_s']:.1f})",
                 f"{p['idle_interval_s']:.0f} s", f"{d['idle_interval_s']:.0f} s"],
                ["  before idle-after: listings per run per minute", "-",
                 f"{p['prefix_per_run_per_min_before_idle']:.0f}", f"{d['prefix_per_run_per_min_before_idle']:.0f}"],
                ["  last change -> listed at the cap", f"{lo:.1f}-{hi:.1f} s", f"{p['to_cap_s']:.0f} s",
                 f"{d['to_cap_s']:.0f} s"],
                ["root listings per minute, steady", f"{idle['root_per_min']:.1f}", f"{p['root_per_min']:.1f}",
                 f"{d['root_per_min']:.1f}"],
                [f"root share of list requests, steady ({idle['runs']} runs)", f"{100 * idle['root_share']:.1f}%",
                 f"{100 * p['root_share_steady']:.1f}%", f"{100 * d['root_share_steady']:.1f}%"],
                ["all list requests per idle run per minute (root shared)", f"{idle['all_per_run_per_min']:.2f}",
                 f"{p['all_per_run_per_min_steady']:.2f}", f"{d['all_per_run_per_min_steady']:.2f}"],
                ["range reads in the steady window", f"{idle['window_counts']['reads']}", "0", "0"],
            ]
            text.append(common.format_table(["figure", "measured", "schedule, these flags",
                                             (f"schedule, defaults (rescan {d['rescan_s']:g} s, idle-after"
                                              f" {d['idle_after_s']:g} s, interval {d['idle_interval_s']:g} s)")],
                                            rows))
            w = idle["window_counts"]
            fin = idle.get("status_final") or {}
            tot = idle.get("server_totals") or {}
            text.append(f"  steady window: {idle['steady_window_s']:.0f} s from the first listing at the cap"
                        f" ({idle['runs_at_cap']}/{idle['runs']} runs); in it {w['root_list']} root and"
                        f" {w['prefix_list']} run-prefix listings, {w['reads']} reads, {w['other']} other")
            text.append(f"  whole watch: tracelet counted {fin.get('requests_list', '?')} list /"
                        f" {fin.get('requests_read', '?')} read requests (status.json at exit,"
                        f" {fin.get('prefixes', '?')} prefixes, {fin.get('idle_prefixes', '?')} idle);"
                        f" the server answered {tot.get('list', 0)} list / {tot.get('get', 0)} get /"
                        f" {sum(v for k, v in tot.items() if k not in ('list', 'get'))} other (incl. the start-up check)")
            text.append("  schedule columns are derived from the documented back-off (1, 2, 4 ... s up to the"
                        " interval after idle-after s unchanged; one root listing per rescan), not measured")
        text.append("")
    up = summary.get("upload")
    if up:
        rows = []
        for where, label in (("local", "tracelet upload DIR"), ("s3", "tracelet upload s3://...")):
            b = up["best"][where]
            if not b:
                continue
            d = b["delivered"]
            req = b.get("requests") or {}
            rows.append([label + ("" if b["ok"] else " FAILED"), f"{b['wall_s']:.2f}",
                         common.fmt_num(up.get(f"{where}_mb_s")),
                         ", ".join(f"{t['wall_s']:.2f}" for t in up["tries"][where]),
                         f"{d['rows']:,}", f"{d['scalars']:,}", d["histograms"], d["images"],
                         "yes" if d["finished"] else "no", common.fmt_mib(b["tree_peak_kib"]),
                         f"{req.get('list', 0)} list, {req.get('get', 0)} get" if where == "s3" else "-"])
        text.append(f"retroactive upload: the reference log (scale {up['scale']:g}, {up['object_bytes'] / 1e6:.1f} MB),"
                    f" spawn to exit, best of {up['repeat']} (fresh state + W&B dirs each)")
        text.append(common.format_table(["contender", "best s", "MB/s", "tries s", "rows", "scalars", "hist", "img",
                                         "finished", "RSS tree MiB", "requests"], rows))
        ratio = up.get("ratio_s3_local")
        text.append(f"  bucket / local: {common.fmt_ratio(ratio)} (target <= {UPLOAD_TARGET_RATIO:g}x:"
                    f" {_verdict(None if ratio is None else ratio <= UPLOAD_TARGET_RATIO)})")
        text.append(f"  transport floor: one boto3 GetObject of the whole object, {up['get_floor_s']:.3f} s"
                    f" ({common.fmt_num(up['get_floor_mb_s'])} MB/s, best of 3)")
        if up.get("s3fs_import_s") is not None:
            text.append(f"  fixed cost in the bucket's time: `import s3fs` (aiobotocore) in a fresh interpreter,"
                        f" {up['s3fs_import_s']:.2f} s (best of 2)")
        if up.get("sdk_floor"):
            f = up["sdk_floor"]
            text.append("  W&B SDK floor (bench_upload, imports excluded): "
                        + (f"{f['timed_s']:.2f} s timed, {f['wall_s']:.2f} s process" if f["ok"] else f"FAILED {f['error']}"))
        for where in ("local", "s3"):
            b = up["best"][where]
            if b and not b["ok"]:
                text.append(f"  {where}: exit {b['rc']}: {b['tail']}")
    return "\n".join(text).rstrip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 10 s of writing, 60 s idle window (idle-after 5, interval 15), scale 0.1, 1 try")
    ap.add_argument("--only", action="append", choices=["lag", "idle", "upload"], help="run only this part")
    ap.add_argument("--lag-seconds", type=float, default=None, help="writing time per lag scenario (default 30)")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between the writer's flushes (0.5)")
    ap.add_argument("--idle-seconds", type=float, default=None,
                    help="longest idle window (default 180; it stops once every run showed a gap at the cap)")
    ap.add_argument("--idle-runs", type=int, default=20, help="finished runs in the idle bucket (20)")
    ap.add_argument("--idle-after", type=float, default=None, help="watch --idle-after (default 10)")
    ap.add_argument("--idle-interval", type=float, default=None, help="watch --idle-interval (default 60)")
    ap.add_argument("--scale", type=float, default=None, help="reference log scale for upload (default 1)")
    ap.add_argument("--out", default=None, help="make_log cache directory")
    ap.add_argument("--upload-repeat", type=int, default=None, help="uploads per root, fastest kept (default 2)")
    ap.add_argument("--sdk-floor", action="store_true", help="also time bench_upload's W&B SDK floor (~15 s)")
    ap.add_argument("--keep", action="store_true", help="keep the temp directories")
    ap.add_argument("--json", metavar="FILE", nargs="?", const="-",
                    help="also write the figures as JSON to FILE (or stdout without FILE)")
    args = ap.parse_args(argv)

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    info = common.machine_info()
    print("machine:\n" + common.format_machine(info), flush=True)
    started = time.perf_counter()
    try:
        summary = run_bench(args.quick, args.only, scale=args.scale, out=args.out, lag_seconds=args.lag_seconds,
                            interval=args.interval, idle_seconds=args.idle_seconds, idle_runs=args.idle_runs,
                            idle_after=args.idle_after, idle_interval=args.idle_interval,
                            upload_repeat=args.upload_repeat, sdk_floor=args.sdk_floor, keep=args.keep)
    finally:
        PROCS.stop_all()
    summary["elapsed_s"] = time.perf_counter() - started
    summary["machine"] = info
    print()
    print(format_report(summary))
    print(f"\n(object store bench took {summary['elapsed_s']:.0f} s)")
    if args.json:
        text = json.dumps(summary, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
            print(f"figures written to {os.path.abspath(args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
