"""Scale figures: a big idle root under `tracelet watch`, and memory against log size.

* ``idle``: 1,000 run directories x 2 event files (``train/`` and ``eval/``, 5 scalars each),
  uploaded once with ``tracelet upload`` (untimed setup, its time is printed), then followed by
  ``python -m tracelet_daemon watch ROOT --state-dir S --rescan-interval 10`` (the default) on the same state.
  Once the daemon has written its first status.json and settled (20 s, two rescans), CPU and
  RSS are sampled every 5 s for ``--idle-seconds`` (60 s by default; the issue's "flat over an
  hour" is ``--idle-seconds 3600``): CPU as % of one core from utime+stime in /proc/<pid>/stat
  over the window, RSS (VmRSS) at the start and end of the window, plus its min/max and a
  least-squares slope. The daemon's descendants (wandb-core, if any W&B run is open) are
  reported beside it. Nothing is written during the window, so no run should be opened:
  ``watch`` keeps at most ``--max-open-runs`` (default 64, ``Options.max_open_runs``) W&B runs
  open; the bench leaves it at the default.
* ``memory``: peak RSS of ``tracelet upload`` on the reference log (12.6 MB) and on the x10 log
  (``make_log.py --scale 10``, ~130 MB), split into the Python process, its descendants
  (wandb-core) and their sampled sum, next to ``tbparse`` (which keeps every scalar in memory)
  and tracelet's reader alone (``iter_records`` + ``decode_event``, bench_reader's worker), each
  on both logs. The ratio column is x10 / x1: 1.00x means independent of the log's size.

Run standalone: ``python bench/bench_scale.py [--quick] [--only idle|memory] [--runs N]
[--idle-seconds S]``. ``--quick`` uses 100 runs, a 15 s window and the 0.1 / 1 logs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import _common as common

common.ensure_repo_on_path()

SAMPLE_EVERY = 5.0
PROGRESS_EVERY = 300.0  # a progress line (CPU and RSS so far) on stderr during long windows
SCALARS_PER_FILE = 5
SUBDIRS = ("train", "eval")


# -- the idle root ----------------------------------------------------------------------------


def make_idle_root(root: str, runs: int) -> int:
    """`runs` run directories, each with train/ and eval/ event files of a few scalars.

    Written with tensorboardX's synchronous ``EventsWriter`` (no writer thread per file);
    returns the number of files.
    """
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2
    from tensorboardX.summary import scalar

    files = 0
    for i in range(runs):
        for sub in SUBDIRS:
            d = os.path.join(root, f"run-{i:04d}", sub)
            os.makedirs(d, exist_ok=True)
            w = EventsWriter(os.path.join(d, "events"))
            for step in range(SCALARS_PER_FILE):
                w.write_event(event_pb2.Event(wall_time=1_700_000_000.0 + step, step=step,
                                              summary=scalar("loss", 1.0 / (step + 1))))
            w.close()
            files += 1
    return files


def _slope_mib_per_hour(samples: list[tuple[float, int]]) -> float | None:
    if len(samples) < 2:
        return None
    t0 = samples[0][0]
    xs = [t - t0 for t, _ in samples]
    ys = [common.mib(v) for _, v in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den <= 0:
        return None
    return 3600.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


@dataclass
class IdleResult:
    runs: int
    files: int = 0
    ok: bool = False
    error: str = ""
    partial: bool = False  # the daemon died during the window; figures cover the part before
    make_s: float = 0.0
    upload_s: float = 0.0  # the untimed setup: `tracelet upload` of the whole root
    upload_rows: int = 0
    startup_s: float | None = None  # spawn -> first status.json of the daemon
    startup_cpu_s: float | None = None  # CPU the daemon used by then
    settle_s: float = 0.0
    cpu: dict = field(default_factory=dict)  # cpu_between over the window
    samples: list[dict] = field(default_factory=list)  # t, main_rss_kib, children_rss_kib
    children_names: list[str] = field(default_factory=list)
    status_runs: int = 0
    open_runs: int = 0
    rows_sent: int = 0  # rows the watching daemon sent (0 when nothing was reopened)
    opened_log_lines: int = 0
    errors: dict = field(default_factory=dict)
    max_open_runs: int = 0
    cli_has_max_open_runs: bool = False
    rescan_interval: float = 10.0  # the CLI default
    daemon_exit: int | None = None


def run_idle(runs: int, idle_seconds: float, settle: float, keep: bool = False,
             progress: bool = True) -> IdleResult:
    from tracelet_daemon.engine import Options

    res = IdleResult(runs, max_open_runs=Options().max_open_runs)
    tmp = tempfile.mkdtemp(prefix="tracelet-bench-idle-")
    daemon = None
    try:
        root = os.path.join(tmp, "root")
        state = os.path.join(tmp, "state")
        env = common.wandb_env(tmp)
        if progress:
            print(f"  scale: writing {runs:,} runs x {len(SUBDIRS)} files ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        res.files = make_idle_root(root, runs)
        res.make_s = time.perf_counter() - t
        if progress:
            print("  scale: uploading them once (setup) ...", file=sys.stderr, flush=True)
        up = common.run_child([sys.executable, "-m", "tracelet_daemon", "upload", root, "--backend", "wandb",
                               "--state-dir", state, "--no-progress"], env=env)
        res.upload_s = up.wall
        snap = _read_status(state) or {}
        res.upload_rows = snap.get("totals", {}).get("rows", 0)
        if not up.ok:
            res.error = f"setup upload failed (exit {up.returncode}): {up.tail(6)}"
            return res
        help_text = common.run_child([sys.executable, "-m", "tracelet_daemon", "watch", "--help"],
                                     env=common.python_env()).stdout
        res.cli_has_max_open_runs = "--max-open-runs" in help_text

        if progress:
            print(f"  scale: tracelet watch on {runs:,} idle runs: settle {settle:g} s, then"
                  f" {idle_seconds:g} s window ...", file=sys.stderr, flush=True)
        daemon = common.WatchDaemon(root, tmp, state_dir=state, env=env, rescan_interval=res.rescan_interval)
        first = daemon.wait_status(timeout=300)
        if first is None:
            res.error = "the daemon wrote no status.json: " + daemon.log_tail(8)
            return res
        res.startup_s = time.monotonic() - daemon.started
        res.startup_cpu_s = common.proc_cpu_seconds(daemon.pid)
        time.sleep(settle)
        res.settle_s = settle
        before = common.sample_tree(daemon.pid)
        samples = [before]
        end_at = before.t + idle_seconds
        next_report = before.t + PROGRESS_EVERY
        while True:
            now = time.monotonic()
            if now >= end_at - 1e-3:
                break
            time.sleep(min(SAMPLE_EVERY, end_at - now))
            if not daemon.alive():
                # killed from outside: keep what the window had so far (marked partial)
                res.error = (f"the daemon exited {samples[-1].t - before.t:.0f} s into the window"
                             f" (exit {daemon.proc.returncode}); figures up to then: " + daemon.log_tail(3))
                res.partial = True
                break
            samples.append(common.sample_tree(daemon.pid))
            if progress and samples[-1].t >= next_report:
                so_far = common.cpu_between(before, samples[-1])
                print(f"  scale: idle {so_far['wall_s']:.0f} s: CPU {so_far['total_pct']:.2f}% of one core,"
                      f" RSS {common.mib(samples[-1].main_rss_kib):.1f} MiB (start"
                      f" {common.mib(before.main_rss_kib):.1f})", file=sys.stderr, flush=True)
                next_report += PROGRESS_EVERY
        after = samples[-1]
        res.cpu = common.cpu_between(before, after)
        res.samples = [{"t": s.t - before.t, "main_rss_kib": s.main_rss_kib,
                        "children_rss_kib": s.children_rss_kib} for s in samples]
        res.children_names = sorted({n for s in samples for n in s.children_names})
        if res.partial:
            return res
        snap = daemon.wait_status(timeout=30, newer_than=time.time()) or daemon.status() or {}
        totals = snap.get("totals", {})
        res.status_runs = totals.get("runs", 0)
        res.open_runs = totals.get("open_runs", 0)
        res.rows_sent = totals.get("rows", 0)
        res.errors = totals.get("errors", {})
        res.daemon_exit = daemon.stop()
        res.opened_log_lines = daemon.log_count(" opened at ") + daemon.log_count(" resumed at ")
        daemon = None
        res.ok = True
        return res
    finally:
        if daemon is not None:
            res.daemon_exit = daemon.stop()
        if not keep:
            common.remove_tree(tmp)
        elif progress:
            print(f"  scale: kept {tmp}", file=sys.stderr)


def _read_status(state_dir: str) -> dict | None:
    from tracelet_daemon.status import read_status

    return read_status(state_dir)


# -- memory against log size ------------------------------------------------------------------


def run_memory(scales: tuple[float, float], out: str | None = None, keep: bool = False,
               progress: bool = True) -> dict:
    import bench_reader
    import make_log

    per_scale = []
    for scale in scales:
        log = make_log.ensure_log(scale, out)
        common.warm_page_cache(log.event_file)
        entry = {"scale": scale, "size_bytes": log.size_bytes, "scalars": log.spec.scalars}
        if progress:
            print(f"  scale: tracelet upload, {log.size_bytes / 1e6:.0f} MB log ...", file=sys.stderr, flush=True)
        up = _tracelet_upload(log.root, keep)
        entry["upload"] = up
        for peer in ("tracelet decode", "tbparse"):
            if progress:
                print(f"  scale: {peer}, {log.size_bytes / 1e6:.0f} MB log ...", file=sys.stderr, flush=True)
            r = bench_reader.run_peer(bench_reader.PEERS_BY_NAME[peer], log.event_file, 1, 0.0)
            entry[peer] = {"ok": r.ok, "error": r.error, "time_s": r.best, "rss_base_kib": r.rss_base_kib,
                           "rss_peak_kib": r.rss_peak_kib, "counts": r.counts}
        per_scale.append(entry)
    return {"scales": per_scale}


def _tracelet_upload(log_root: str, keep: bool) -> dict:
    import bench_upload

    tmp = tempfile.mkdtemp(prefix="tracelet-bench-mem-")
    try:
        env = common.wandb_env(tmp)
        argv = [sys.executable, "-m", "tracelet_daemon", "upload", os.path.abspath(log_root), "--backend",
                "wandb", "--state-dir", os.path.join(tmp, "state"), "--no-progress"]
        child = common.run_child(argv, env=env)
        delivered = bench_upload.count_delivered(bench_upload.wandb_files(env["WANDB_DIR"]))
        return {"ok": child.ok, "error": "" if child.ok else child.tail(6), "time_s": child.wall,
                "main_peak_kib": child.main_peak_kib, "children_peak_kib": child.children_peak_kib,
                "tree_peak_kib": child.tree_peak_kib, "maxrss_kib": child.maxrss_kib,
                "rows": delivered.rows, "scalars": delivered.scalars, "finished": delivered.finished}
    finally:
        if not keep:
            common.remove_tree(tmp)


# -- reports ----------------------------------------------------------------------------------


def format_idle(r: dict) -> str:
    if not r["ok"] and not (r.get("partial") and len(r["samples"]) >= 2):
        return f"idle: {r['runs']:,} runs FAILED: {r['error']}"
    s = r["samples"]
    cpu = r["cpu"]
    main = [(x["t"], x["main_rss_kib"]) for x in s]
    kids = [(x["t"], x["children_rss_kib"]) for x in s]

    def span(series):
        vals = [v for _, v in series]
        if not any(vals):
            return "-", "-", "-", "-"
        slope = _slope_mib_per_hour(series)
        return (f"{common.mib(vals[0]):.1f}", f"{common.mib(vals[-1]):.1f}",
                f"{common.mib(min(vals)):.1f} / {common.mib(max(vals)):.1f}",
                "-" if slope is None else f"{slope:+.1f}")

    kid_label = ", ".join(r["children_names"]) or "none running"
    rows = [
        ["tracelet watch (Python)", common.pct_cell(cpu["main_pct"]), *span(main)],
        [f"descendants ({kid_label})", common.pct_cell(cpu["children_pct"]), *span(kids)],
        ["together", common.pct_cell(cpu["total_pct"]),
         *span([(a[0], a[1] + b[1]) for a, b in zip(main, kids)])],
    ]
    head = (f"idle: {r['runs']:,} runs x {len(SUBDIRS)} files ({r['files']:,} files, {SCALARS_PER_FILE} scalars each),"
            f" all uploaded before; window {cpu['wall_s']:.0f} s after {r['settle_s']:g} s of settling;"
            f" rescans every {r['rescan_interval']:g} s, inotify on")
    table = common.format_table(["process", "CPU (% of one core)", "RSS start MiB", "RSS end MiB",
                                 "RSS min / max MiB", "slope MiB/h"], rows)
    step = max(1, len(s) // 12)
    trail = " ".join(f"{common.mib(x['main_rss_kib']):.1f}" for x in s[::step])
    notes = [
        f"  tracelet RSS samples (MiB, every {SAMPLE_EVERY * step:g} s): {trail}",
        (f"  open W&B runs during the window: {r['open_runs']} (watch keeps at most {r['max_open_runs']} open,"
        f" Options.max_open_runs; CLI option: {'yes' if r['cli_has_max_open_runs'] else 'none'});"
        f" runs known: {r['status_runs']:,}; rows sent by the watcher: {r['rows_sent']}; runs (re)opened: "
        f"{r['opened_log_lines']}; errors: {r['errors'] or 'none'}"),
        (f"  start-up: first status.json {r['startup_s']:.1f} s after spawn, {r['startup_cpu_s']:.1f} s of CPU by then;"
        f" setup: files written in {r['make_s']:.1f} s, `tracelet upload` of all {r['runs']:,} runs took"
        f" {r['upload_s']:.1f} s ({r['upload_rows']:,} rows)"),
    ]
    if r.get("partial"):
        notes.append(f"  PARTIAL: {r['error']}")
    return "\n".join([head, table, *notes])


def format_memory(m: dict) -> str:
    scales = m["scales"]
    if len(scales) != 2:
        return "memory: needs two scales"
    a, b = scales

    def mb(e):
        return f"{e['size_bytes'] / 1e6:.0f} MB"

    def row(name, ka, kb, ta, tb, okay=True):
        ratio = (kb / ka) if (okay and ka and kb) else None
        return [name, common.fmt_mib(ka) if okay else "FAILED", common.fmt_mib(kb) if okay else "FAILED",
                common.fmt_ratio(ratio), None if ta is None else f"{ta:.1f}", None if tb is None else f"{tb:.1f}"]

    ua, ub = a["upload"], b["upload"]
    ok = ua["ok"] and ub["ok"]
    rows = [
        row("tracelet upload: Python", ua["main_peak_kib"], ub["main_peak_kib"], ua["time_s"], ub["time_s"], ok),
        row("tracelet upload: wandb-core", ua["children_peak_kib"], ub["children_peak_kib"], None, None, ok),
        row("tracelet upload: tree (sum)", ua["tree_peak_kib"], ub["tree_peak_kib"], None, None, ok),
    ]
    for peer, label in (("tracelet decode", "tracelet reader only (decode)"), ("tbparse", "tbparse")):
        pa, pb = a[peer], b[peer]
        rows.append(row(label, pa["rss_peak_kib"], pb["rss_peak_kib"], pa["time_s"], pb["time_s"],
                        pa["ok"] and pb["ok"]))
    head = (f"memory vs log size: peak RSS on the {mb(a)} (scale {a['scale']:g}) and {mb(b)} (scale {b['scale']:g})"
            " logs; x10/x1 = ratio of the peaks (1.00x: independent of the log's size)")
    table = common.format_table(["contender", f"peak MiB @ {mb(a)}", f"peak MiB @ {mb(b)}", "ratio",
                                 f"time s @ {mb(a)}", f"time s @ {mb(b)}"], rows)
    notes = [("  tracelet upload: sampled every 50 ms from /proc (Python process, its descendants, their"
             " sum); readers: VmHWM of the worker process (bench_reader)")]
    for e in scales:
        u = e["upload"]
        notes.append(f"  scale {e['scale']:g}: tracelet delivered {u['rows']:,} rows / {u['scalars']:,} scalars"
                     f" (log: {e['scalars']:,} scalars), finished: {'yes' if u['finished'] else 'no'}"
                     + ("" if u["ok"] else f"; FAILED: {u['error']}"))
        for peer in ("tracelet decode", "tbparse"):
            if not e[peer]["ok"]:
                notes.append(f"  scale {e['scale']:g}: {peer} FAILED: {e[peer]['error']}")
    return "\n".join([head, table, *notes])


def format_report(summary: dict) -> str:
    parts = []
    if summary.get("idle"):
        parts.append(format_idle(summary["idle"]))
    if summary.get("memory"):
        parts.append(format_memory(summary["memory"]))
    return "\n\n".join(parts)


def run_bench(quick: bool = False, only: list[str] | None = None, runs: int | None = None,
              idle_seconds: float | None = None, settle: float | None = None,
              scales: tuple[float, float] | None = None, out: str | None = None, keep: bool = False,
              progress: bool = True) -> dict:
    runs = runs or (100 if quick else 1000)
    idle_seconds = idle_seconds or (15.0 if quick else 60.0)
    settle = settle if settle is not None else (6.0 if quick else 20.0)
    scales = scales or ((0.1, 1.0) if quick else (1.0, 10.0))
    summary: dict = {"quick": quick}
    if not only or "idle" in only:
        summary["idle"] = asdict(run_idle(runs, idle_seconds, settle, keep, progress))
    if not only or "memory" in only:
        summary["memory"] = run_memory(scales, out, keep, progress)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 runs, 15 s window, logs of scale 0.1 and 1")
    ap.add_argument("--only", action="append", choices=["idle", "memory"], help="run only this part")
    ap.add_argument("--runs", type=int, default=None, help="idle run directories (default 1000)")
    ap.add_argument("--idle-seconds", type=float, default=None,
                    help="measurement window (default 60; 3600 for the issue's hour)")
    ap.add_argument("--settle", type=float, default=None, help="seconds after start-up before the window (20)")
    ap.add_argument("--scales", type=float, nargs=2, default=None, metavar=("SMALL", "BIG"),
                    help="the two log scales of the memory part (default 1 10)")
    ap.add_argument("--out", default=None, help="make_log cache directory")
    ap.add_argument("--keep", action="store_true", help="keep the temp directories")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    summary = run_bench(args.quick, args.only, args.runs, args.idle_seconds, args.settle,
                        tuple(args.scales) if args.scales else None, args.out, args.keep)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_report(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
