"""Upload wall time: ``tracelet upload`` vs the bare W&B SDK doing the same logging by hand.

Contenders (each in its own subprocess with fresh, offline W&B directories):

* ``tracelet upload``   ``python -m tracelet_daemon upload ROOT --backend wandb --state-dir DIR
                        --no-progress``; timed from spawn to exit, so it includes interpreter
                        start-up, imports, reading, decoding, journaling and W&B's finish.
* ``tracelet (in-process)`` the same upload through the Python API (``cli._common.wire`` ->
                        ``Engine.upload``) in a worker whose imports are done before the clock
                        starts; timed like the SDK contenders, to the ``exit`` record. The
                        like-for-like figure against the floor: both exclude interpreter start-up
                        and imports, and tracelet's window still includes reading the file.
* ``W&B SDK floor``     the issue's floor: the log's events decoded (by tracelet's reader) and
                        grouped by step untimed; then times ``wandb.init`` -> per step: rebin the
                        histograms to <= 512 bins into ``wandb.Histogram``, decode the PNGs into
                        ``wandb.Image``, ``run.log(row, step=i)`` -> ``run.finish()`` -> the
                        ``exit`` record present in the run's ``.wandb`` file.
* ``W&B SDK floor, objects pre-built`` the same with the ``wandb.Histogram``/``wandb.Image``
                        objects built before the clock too: only init, ``run.log`` and finish are
                        timed. No tool that goes through the SDK can deliver these rows faster.
* ``wandb TB ingestion`` (``--with-wandb-tb``) wandb's own Go TensorBoard reader:
                        ``run._tensorboard_callback(logdir, save=False, root_logdir=ROOT)``,
                        timed the same way as the floor. Slow (40 s and more), so off by default.

What each delivered is counted from the ``.wandb`` file it produced (``load_offline_run``):
history rows, scalar values, histograms, images. A fast contender that dropped data is not fast.

Run standalone: ``python bench/bench_upload.py --log DIR`` (DIR holds one run directory).
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import _common as common

common.ensure_repo_on_path()

MAX_HIST_BINS = 512
EXIT_TIMEOUT = 120.0
POLL_INTERVAL = 0.02
PREBUILT = "W&B SDK floor, objects pre-built"
BOOKKEEPING_KEYS = frozenset({"global_step"})  # per-row bookkeeping keys, not logged values


# -- what a .wandb file holds ---------------------------------------------------------------


@dataclass
class Delivered:
    """Values found in the history of the .wandb files a contender produced."""

    files: int = 0
    rows: int = 0
    scalars: int = 0
    histograms: int = 0
    images: int = 0
    other: int = 0
    finished: bool = False
    record_counts: dict = field(default_factory=dict)


def count_delivered(paths: list[str]) -> Delivered:
    """Count logged values per kind; W&B's own keys (``_step``, ``_runtime``...) are not values."""
    from tracelet_daemon.backends.wandb.txlog import load_offline_run

    out = Delivered(files=len(paths), finished=bool(paths))
    for path in paths:
        run = load_offline_run(path)
        out.finished = out.finished and run.finished
        for kind, n in run.record_counts.items():
            out.record_counts[kind] = out.record_counts.get(kind, 0) + n
        for row in run.history:
            values = {k: v for k, v in row.items() if not k.startswith("_") and k not in BOOKKEEPING_KEYS}
            if values:
                out.rows += 1
            for value in values.values():
                _count_value(out, value)
    return out


def _count_value(out: Delivered, value: object) -> None:
    if isinstance(value, bool):
        out.other += 1
    elif isinstance(value, (int, float)):
        out.scalars += 1
    elif isinstance(value, dict) and value.get("_type") == "histogram":
        out.histograms += 1
    elif isinstance(value, dict) and value.get("_type") in ("image-file", "images/separated"):
        out.images += int(value.get("count", 1)) if value.get("_type") == "images/separated" else 1
    else:
        out.other += 1


def wandb_files(wandb_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(wandb_dir, "wandb", "*run-*", "run-*.wandb")))


# -- workers (run in their own subprocess) ----------------------------------------------------


def decoded_rows(event_file: str) -> list[dict]:
    """Every step's decoded values (floats, tracelet Histogram/Image) as one dict, in step order."""
    from tracelet_daemon.events import decode_event
    from tracelet_daemon.records import iter_records

    by_step: dict[int, dict] = {}
    plugins: dict[str, str] = {}
    for payload in iter_records(event_file):
        ev = decode_event(payload, plugins)
        if ev is None:
            continue
        row = by_step.setdefault(ev.step, {})
        for tag, value in ev.values:
            row[tag] = value
    return [by_step[s] for s in sorted(by_step)]


def convert_row(row: dict, sent: dict) -> dict:
    """What a hand-written replay logs: floats as they are, histograms rebinned to <= 512 bins,
    images decoded from their PNG."""
    import wandb
    from PIL import Image as PILImage

    from tracelet_daemon.values import Histogram, Image

    out = {}
    for tag, value in row.items():
        if isinstance(value, float):
            out[tag] = value
            sent["scalars"] += 1
        elif isinstance(value, Histogram):
            h = value.rebinned(MAX_HIST_BINS)
            out[tag] = wandb.Histogram(np_histogram=(list(h.counts), list(h.edges)))
            sent["histograms"] += 1
        elif isinstance(value, Image):
            pic = PILImage.open(io.BytesIO(value.encoded))
            pic.load()
            out[tag] = wandb.Image(pic)
            sent["images"] += 1
    return out


def _new_sent(rows: list) -> dict:
    return {"rows": len(rows), "scalars": 0, "histograms": 0, "images": 0}


def wait_for_exit_record(path: str, timeout: float = EXIT_TIMEOUT) -> tuple[bool, int, float]:
    """Poll the .wandb file until its ``exit`` record is there; returns (found, polls, seen_at).

    Each poll is ``load_offline_run(path).finished``, which re-reads and decodes the whole file
    (a noticeable fraction of a second for 10k rows). The file is read at the start of a poll,
    so the exit record was on disk by the time that poll *started*: ``seen_at`` is that
    ``perf_counter`` value, which keeps the decode cost out of the measurement. Its error is at
    most one poll's duration, and zero in the usual case where the first poll already finds it.
    """
    from tracelet_daemon.backends.wandb.txlog import load_offline_run

    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        polls += 1
        seen_at = time.perf_counter()
        if os.path.exists(path) and load_offline_run(path).finished:
            return True, polls, seen_at
        if time.monotonic() > deadline:
            return False, polls, time.perf_counter()
        time.sleep(POLL_INTERVAL)


def lean_init(wandb_dir: str, name: str):
    import wandb

    settings = wandb.Settings(x_disable_stats=True, console="off", x_save_requirements=False,
                              disable_git=True, x_disable_machine_info=True)
    return wandb.init(mode="offline", dir=wandb_dir, project="tracelet-bench", name=name,
                      settings=settings)


def worker_floor(log_root: str, wandb_dir: str, prebuilt: bool = False) -> dict:
    """The SDK floor: decoded rows ready, then init -> (convert and) log every row -> finish -> exit."""
    import wandb  # noqa: F401 - imports before the clock
    from PIL import Image as _PIL  # noqa: F401

    t0 = time.perf_counter()
    rows = decoded_rows(common.single_event_file(log_root))
    sent = _new_sent(rows)
    if prebuilt:
        rows = [convert_row(row, sent) for row in rows]
    prebuild = time.perf_counter() - t0

    start = time.perf_counter()
    run = lean_init(wandb_dir, "sdk-floor")
    t_init = time.perf_counter() - start
    for i, row in enumerate(rows):
        run.log(row if prebuilt else convert_row(row, sent), step=i)
    t_logged = time.perf_counter() - start
    sync_file = str(run.settings.sync_file)
    run.finish()
    t_finish = time.perf_counter() - start
    found, polls, seen_at = wait_for_exit_record(sync_file)
    total = seen_at - start
    return {"timed_s": total, "init_s": t_init, "log_s": t_logged - t_init,
            "finish_s": t_finish - t_logged, "exit_wait_s": total - t_finish, "exit_polls": polls,
            "exit_found": found, "prebuild_s": prebuild, "sent": sent, "sync_file": sync_file}


def worker_floor_prebuilt(log_root: str, wandb_dir: str) -> dict:
    return worker_floor(log_root, wandb_dir, prebuilt=True)


def worker_tracelet(log_root: str, wandb_dir: str) -> dict:
    """tracelet's upload through its Python API, imports done before the clock."""
    import wandb  # noqa: F401

    from tracelet_daemon.cli._common import wire
    from tracelet_daemon.engine import Options

    state_dir = os.path.join(os.path.dirname(wandb_dir), "state")
    start = time.perf_counter()
    w = wire(log_root, "wandb", None, None, None, state_dir, Options())
    report = w.engine.upload()
    w.backend.close()
    w.store.close()
    t_upload = time.perf_counter() - start
    files = wandb_files(wandb_dir)
    found, polls, seen_at = wait_for_exit_record(files[0]) if len(files) == 1 else (False, 0, time.perf_counter())
    total = seen_at - start
    return {"timed_s": total, "upload_s": t_upload, "exit_wait_s": total - t_upload, "exit_polls": polls,
            "exit_found": found, "rows_reported": report.rows}


def stage_for_wandb_tb(log_root: str, staging: str) -> tuple[str, str]:
    """Give the event file a name wandb-core will read; returns (run_dir, root_dir).

    wandb-core only reads ``tfevents.<time>.<hostname>`` files written by this host at or after
    the run's start (it skips older logs on purpose), so the reference log's fixed name would be
    ignored silently and the run would deliver nothing. A hard link (copy across filesystems)
    named with this hostname and a time a day ahead passes both checks; done before the clock.
    """
    src = common.single_event_file(log_root)
    run_dir = os.path.join(staging, os.path.basename(os.path.dirname(src)))
    os.makedirs(run_dir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time()) + 86400}.{socket.gethostname()}"
    dst = os.path.join(run_dir, name)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return run_dir, staging


def worker_wandb_tb(log_root: str, wandb_dir: str) -> dict:
    """wandb's own TensorBoard ingestion (wandb-core, in Go) of the same run directory."""
    import wandb  # noqa: F401

    run_dir, root = stage_for_wandb_tb(log_root, os.path.join(os.path.dirname(wandb_dir), "tb-staged"))
    start = time.perf_counter()
    run = lean_init(wandb_dir, "wandb-tb")
    t_init = time.perf_counter() - start
    sync_file = str(run.settings.sync_file)
    run._tensorboard_callback(run_dir, save=False, root_logdir=root)
    run.finish()
    t_finish = time.perf_counter() - start
    found, polls, seen_at = wait_for_exit_record(sync_file)
    total = seen_at - start
    return {"timed_s": total, "init_s": t_init, "finish_s": t_finish - t_init,
            "exit_wait_s": total - t_finish, "exit_polls": polls, "exit_found": found,
            "sync_file": sync_file}


WORKERS = {"floor": worker_floor, "floor-prebuilt": worker_floor_prebuilt, "tracelet": worker_tracelet,
           "wandb-tb": worker_wandb_tb}


# -- parent -----------------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    ok: bool
    wall_s: float  # spawn to exit of the subprocess
    timed_s: float | None  # what the comparison uses
    delivered: Delivered
    maxrss_kib: int = 0
    tree_peak_kib: int = 0
    detail: dict = field(default_factory=dict)
    error: str = ""


def run_tracelet(log_root: str, keep: bool = False) -> Contender:
    """Time `tracelet upload` from spawn to exit on fresh state and W&B directories."""
    tmp = tempfile.mkdtemp(prefix="tracelet-bench-upload-")
    try:
        env = common.wandb_env(tmp)
        argv = [sys.executable, "-m", "tracelet_daemon", "upload", os.path.abspath(log_root),
                "--backend", "wandb", "--state-dir", os.path.join(tmp, "state"), "--no-progress"]
        child = common.run_child(argv, env=env)
        delivered = count_delivered(wandb_files(env["WANDB_DIR"]))
        error = "" if child.ok else f"exit {child.returncode}: {child.tail(8)}"
        return Contender("tracelet upload", child.ok, child.wall, child.wall, delivered,
                         child.maxrss_kib, child.tree_peak_kib, {"stderr_tail": child.tail(4)}, error)
    finally:
        if not keep:
            common.remove_tree(tmp)


def run_worker(kind: str, label: str, log_root: str, keep: bool = False) -> Contender:
    """Run a timed SDK worker in a subprocess and count what its .wandb file holds."""
    tmp = tempfile.mkdtemp(prefix=f"tracelet-bench-{kind}-")
    try:
        env = common.wandb_env(tmp)
        argv = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--log",
                os.path.abspath(log_root), "--wandb-dir", env["WANDB_DIR"]]
        child = common.run_child(argv, env=env)
        res = child.result
        delivered = count_delivered(wandb_files(env["WANDB_DIR"]))
        ok = child.ok and bool(res) and res.get("exit_found", False)
        error = "" if ok else f"exit {child.returncode}: {child.tail(8)}"
        return Contender(label, ok, child.wall, res.get("timed_s"), delivered, child.maxrss_kib,
                         child.tree_peak_kib, res, error)
    finally:
        if not keep:
            common.remove_tree(tmp)


def run_bench(log_root: str, with_wandb_tb: bool = False, repeat: int = 1, keep: bool = False,
              progress: bool = True, wandb_tb_repeat: int | None = None) -> dict:
    """Each contender `repeat` times (fastest kept); returns a JSON-able summary.

    `wandb_tb_repeat` overrides `repeat` for wandb's TB ingestion, which is 10-20x slower than
    the others at scale 1 (run_all --all runs it once to stay near 10 minutes).
    """
    common.warm_page_cache(common.single_event_file(log_root))
    plan = [("tracelet upload", lambda: run_tracelet(log_root, keep)),
            ("tracelet (in-process)", lambda: run_worker("tracelet", "tracelet (in-process)", log_root, keep)),
            ("W&B SDK floor", lambda: run_worker("floor", "W&B SDK floor", log_root, keep)),
            (PREBUILT, lambda: run_worker("floor-prebuilt", PREBUILT, log_root, keep))]
    if with_wandb_tb:
        plan.append(("wandb TB ingestion",
                     lambda: run_worker("wandb-tb", "wandb TB ingestion", log_root, keep)))
    contenders = []
    for name, fn in plan:
        tries = []
        n = repeat if (wandb_tb_repeat is None or name != "wandb TB ingestion") else wandb_tb_repeat
        for i in range(max(1, n)):
            if progress:
                print(f"  upload: {name} (run {i + 1}/{n}) ...", file=sys.stderr, flush=True)
            tries.append(fn())
        good = [c for c in tries if c.ok and c.timed_s is not None]
        contenders.append(min(good, key=lambda c: c.timed_s) if good else tries[-1])
    return summarize(log_root, contenders)


def summarize(log_root: str, contenders: list[Contender]) -> dict:
    floor = next((c for c in contenders if c.name == "W&B SDK floor" and c.ok), None)
    sent = (floor.detail.get("sent") if floor else None) or {}
    out = []
    for c in contenders:
        d = asdict(c)
        if floor is not None and c.ok and c.timed_s:
            d["vs_floor"] = c.timed_s / floor.timed_s
            d["process_vs_floor"] = c.wall_s / floor.wall_s
        out.append(d)
    return {"log": os.path.abspath(log_root), "expected": sent, "contenders": out}


def format_report(summary: dict) -> str:
    exp = summary.get("expected") or {}
    headers = ["contender", "timed s", "vs floor", "process s", "vs floor", "rows", "scalars", "histograms",
               "images", "finished", "RSS py MiB", "RSS tree MiB"]
    rows = []
    if exp:
        rows.append(["(in the log)", None, None, None, None, f"{exp['rows']:,}", f"{exp['scalars']:,}",
                     exp["histograms"], exp["images"], None, None, None])
    for c in summary["contenders"]:
        d = c["delivered"]
        rows.append([c["name"] + ("" if c["ok"] else " FAILED"),
                     None if c["timed_s"] is None else f"{c['timed_s']:.2f}",
                     common.fmt_ratio(c.get("vs_floor")), f"{c['wall_s']:.2f}",
                     common.fmt_ratio(c.get("process_vs_floor")), f"{d['rows']:,}", f"{d['scalars']:,}",
                     d["histograms"], d["images"], "yes" if d["finished"] else "no",
                     common.fmt_mib(c["maxrss_kib"]), common.fmt_mib(c["tree_peak_kib"])])
    text = [f"upload: {summary['log']}",
            "  timed s: tracelet upload = whole process (spawn to exit, imports included); the others ="
            " from the first call (wire / wandb.init) to the exit record in .wandb, imports excluded",
            "  W&B SDK floor: decoded rows ready, rebinning + PNG decoding + run.log timed; objects pre-built:"
            " only init + run.log + finish timed (a lower bound no SDK-based tool can beat)",
            "  process s: spawn to exit of each subprocess (the floors' include decoding the log"
            " untimed)",
            "  RSS py: ru_maxrss of the subprocess; RSS tree: peak of the summed RSS of it and its"
            " children (wandb-core), sampled every 50 ms",
            common.format_table(headers, rows)]
    for c in summary["contenders"]:
        if c["error"]:
            text.append(f"  {c['name']}: {c['error']}")
        det = c.get("detail") or {}
        if "init_s" in det:
            parts = [f"{k[:-2]} {det[k]:.2f}s" for k in ("init_s", "log_s", "finish_s", "exit_wait_s",
                                                          "prebuild_s") if k in det]
        elif "upload_s" in det:
            parts = [f"{k[:-2]} {det[k]:.2f}s" for k in ("upload_s", "exit_wait_s")]
        if "init_s" in det or "upload_s" in det:
            text.append(f"  {c['name']}: " + ", ".join(parts) + f" ({det.get('exit_polls')} exit poll(s))")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", help="runs root holding one run directory (default: the cached reference log)")
    ap.add_argument("--scale", type=float, default=None, help="use the cached reference log of this scale")
    ap.add_argument("--out", default=None, help="make_log cache directory")
    ap.add_argument("--with-wandb-tb", action="store_true", help="also time wandb's own TB ingestion (slow)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per contender (fastest is reported)")
    ap.add_argument("--keep", action="store_true", help="keep the temp W&B/state directories")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--wandb-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        common.emit_result(WORKERS[args.worker](args.log, args.wandb_dir))
        return 0
    log = args.log
    if log is None:
        import make_log

        log = make_log.ensure_log(args.scale or 1.0, args.out).root
    summary = run_bench(log, args.with_wandb_tb, args.repeat, args.keep)
    if args.json:
        import json

        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_report(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
