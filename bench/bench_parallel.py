"""Parallel replay: 50 run directories uploaded with 1 worker process vs 2.

The root holds 50 run directories, each a 1/50 copy of the reference log (``make_log`` at scale
0.02: 20 tags x 200 steps = 4,000 scalars, 4 histograms, 1 image; about 260 KB), so the whole
root is the reference log's size spread over many runs, the case ``upload_parallel`` is for.

Each contender is one subprocess with fresh offline W&B and state directories:

* if ``tracelet upload --help`` lists ``--jobs``: ``python -m tracelet_daemon upload ROOT --jobs N
  --state-dir S --no-progress`` (an explicit ``--jobs`` starts workers even below the CLI's own
  threshold for going parallel);
* otherwise a small worker that wires an engine the way the CLI does and calls
  ``tracelet_daemon.parallel.upload_parallel(engine, N, "wandb", {})`` (with N=1 that is
  ``engine.upload()``, the CLI's path; with N=2 it spawns two worker processes, each with its own
  wandb-core and half the runs).

Figures: wall time from spawn to exit (what a user waits for), the time of the upload call
alone (worker path only: no interpreter start-up or imports), the 1 / 2 ratio, and what was
delivered, counted per run from the ``.wandb`` files (``find_run_files`` + ``load_offline_run``):
runs found and finished, history rows and values by kind, against what the log holds.

Run standalone: ``python bench/bench_parallel.py [--quick] [--runs 50] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import _common as common

common.ensure_repo_on_path()

RUN_SCALE = 0.02  # each run is this fraction of the reference log


def make_root(root: str, runs: int) -> dict:
    """`runs` copies of a scale-0.02 log, one per run directory; returns what one run holds."""
    import make_log

    spec = make_log.LogSpec.for_scale(RUN_SCALE)
    scratch = os.path.join(root, ".template")
    written = make_log.write_log(scratch, spec)
    size = os.path.getsize(written)
    for i in range(runs):
        d = os.path.join(root, f"run-{i:02d}")
        os.makedirs(d)
        shutil.copyfile(written, os.path.join(d, make_log.EVENT_FILE))
    shutil.rmtree(scratch)
    return {"steps": spec.steps, "scalars": spec.scalars, "histograms": spec.histograms, "images": spec.images,
            "bytes": size}


def cli_has_jobs() -> bool:
    child = common.run_child([sys.executable, "-m", "tracelet_daemon", "upload", "--help"],
                             env=common.python_env({"COLUMNS": "200"}))
    return "--jobs" in child.stdout


# -- the worker (its own subprocess) -----------------------------------------------------------


def worker_main(root: str, state_dir: str, jobs: int) -> dict:
    from tracelet_daemon.cli._common import wire
    from tracelet_daemon.engine import Options
    from tracelet_daemon.parallel import upload_parallel

    t0 = time.perf_counter()
    w = wire(root, "wandb", None, None, None, state_dir, Options())
    try:
        report = upload_parallel(w.engine, jobs, "wandb", {})
    finally:
        w.backend.close()
        w.store.close()
    return {"upload_s": time.perf_counter() - t0, "rows": report.rows, "runs": report.runs,
            "failed": list(report.failed_runs), "ok": report.ok}


# -- the parent ---------------------------------------------------------------------------------


@dataclass
class Attempt:
    jobs: int
    ok: bool
    wall_s: float
    upload_s: float | None
    error: str = ""
    runs_found: int = 0
    runs_finished: int = 0
    rows: int = 0
    scalars: int = 0
    histograms: int = 0
    images: int = 0
    tree_peak_kib: int = 0
    cpu_s: float = 0.0  # CPU of the subprocess and every descendant it reaped (workers, wandb-core)
    worker: dict = field(default_factory=dict)


def count_delivered(wandb_dir: str, run_ids: list[str]) -> dict:
    """Per run (by id): its .wandb files, whether they end with an exit record, values by kind."""
    import bench_upload

    from tracelet_daemon.backends.wandb.txlog import find_run_files

    out = {"runs_found": 0, "runs_finished": 0, "rows": 0, "scalars": 0, "histograms": 0, "images": 0}
    for rid in run_ids:
        paths = find_run_files(wandb_dir, rid)
        if not paths:
            continue
        d = bench_upload.count_delivered(paths)  # load_offline_run on each file
        out["runs_found"] += 1
        out["runs_finished"] += d.finished
        for k in ("rows", "scalars", "histograms", "images"):
            out[k] += getattr(d, k)
    return out


def run_once(root: str, jobs: int, use_cli: bool, keep: bool = False) -> Attempt:
    tmp = tempfile.mkdtemp(prefix=f"tracelet-bench-parallel-{jobs}-")
    try:
        env = common.wandb_env(tmp)
        state = os.path.join(tmp, "state")
        if use_cli:
            argv = [sys.executable, "-m", "tracelet_daemon", "upload", root, "--backend", "wandb",
                    "--jobs", str(jobs), "--state-dir", state, "--no-progress"]
        else:
            argv = [sys.executable, os.path.abspath(__file__), "--worker", "--jobs", str(jobs),
                    "--root", root, "--state-dir", state]
        child = common.run_child(argv, env=env)
        from tracelet_daemon.status import read_status

        snap = read_status(state) or {}
        run_ids = [r["run_id"] for r in snap.get("runs", [])]
        att = Attempt(jobs, child.ok, child.wall, child.result.get("upload_s"), tree_peak_kib=child.tree_peak_kib,
                      cpu_s=child.cpu_s, worker=child.result)
        if not child.ok:
            att.error = f"exit {child.returncode}: {child.tail(6)}"
        for k, v in count_delivered(env["WANDB_DIR"], run_ids).items():
            setattr(att, k, v)
        return att
    finally:
        if not keep:
            common.remove_tree(tmp)


def run_bench(runs: int = 50, repeat: int = 1, keep: bool = False, progress: bool = True) -> dict:
    tmp = tempfile.mkdtemp(prefix="tracelet-bench-parallel-root-")
    try:
        root = os.path.join(tmp, "root")
        os.makedirs(root)
        per_run = make_root(root, runs)
        use_cli = cli_has_jobs()
        attempts: dict[int, list[Attempt]] = {1: [], 2: []}
        for i in range(max(1, repeat)):
            for jobs in (1, 2):  # alternate, so drift over time hits both alike
                if progress:
                    print(f"  parallel: {runs} runs, {jobs} worker(s) (run {i + 1}/{repeat}) ...",
                          file=sys.stderr, flush=True)
                attempts[jobs].append(run_once(root, jobs, use_cli, keep))
        best = {}
        for jobs, tries in attempts.items():
            good = [a for a in tries if a.ok]
            best[jobs] = min(good, key=lambda a: a.wall_s) if good else tries[-1]
        expected = {"runs": runs, "rows": runs * per_run["steps"], "scalars": runs * per_run["scalars"],
                    "histograms": runs * per_run["histograms"], "images": runs * per_run["images"]}
        return {"runs": runs, "per_run": per_run, "root_bytes": runs * per_run["bytes"], "via": "cli --jobs"
                if use_cli else "upload_parallel()", "repeat": repeat, "expected": expected,
                "best": {str(j): asdict(a) for j, a in best.items()},
                "all": {str(j): [asdict(a) for a in t] for j, t in attempts.items()}}
    finally:
        common.remove_tree(tmp)


def format_report(summary: dict) -> str:
    one, two = summary["best"]["1"], summary["best"]["2"]
    exp = summary["expected"]
    rows = [["(in the log)", None, None, None, None, f"{exp['runs']}", f"{exp['rows']:,}", f"{exp['scalars']:,}",
             exp["histograms"], exp["images"], None, None]]
    for a in (one, two):
        ratio_wall = (one["wall_s"] / a["wall_s"]) if (one["ok"] and a["ok"]) else None
        ratio_up = (one["upload_s"] / a["upload_s"]) if (one["ok"] and a["ok"] and a["upload_s"]) else None
        rows.append([f"{a['jobs']} worker{'s' if a['jobs'] > 1 else ''}" + ("" if a["ok"] else " FAILED"),
                     f"{a['wall_s']:.2f}", common.fmt_ratio(ratio_wall),
                     None if a["upload_s"] is None else f"{a['upload_s']:.2f}", common.fmt_ratio(ratio_up),
                     f"{a['runs_finished']}/{a['runs_found']}", f"{a['rows']:,}", f"{a['scalars']:,}",
                     a["histograms"], a["images"], f"{a['cpu_s']:.1f}", common.fmt_mib(a["tree_peak_kib"])])
    head = (f"parallel replay: {summary['runs']} runs x {summary['per_run']['bytes'] / 1e3:.0f} KB"
            f" ({summary['root_bytes'] / 1e6:.1f} MB in all) via {summary['via']}; best of {summary['repeat']};"
            " speed-up = 1-worker time / this time (>1 is faster)")
    table = common.format_table(["workers", "wall s", "speed-up", "upload() s", "speed-up", "runs finished/found",
                                 "rows", "scalars", "histograms", "images", "CPU s", "RSS tree MiB"], rows)
    notes = [("  wall s: spawn to exit of the subprocess; upload() s: the upload_parallel call alone;"
             " CPU s: user + system time of the subprocess and the descendants it reaped (workers,"
             " wandb-core); RSS tree: peak of the summed RSS of every process")]
    for a in (one, two):
        if a["error"]:
            notes.append(f"  {a['jobs']} worker(s): {a['error']}")
    times = {j: ", ".join(f"{t['wall_s']:.2f}" for t in tries) for j, tries in summary["all"].items()}
    notes.append(f"  every run's wall s: 1 worker: {times['1']}; 2 workers: {times['2']}")
    return "\n".join([head, table, *notes])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 runs, one repetition")
    ap.add_argument("--runs", type=int, default=None, help="run directories (default 50)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per worker count, best kept (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the W&B/state directories")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--jobs", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        common.emit_result(worker_main(args.root, args.state_dir, args.jobs))
        return 0
    runs = args.runs or (20 if args.quick else 50)
    repeat = args.repeat or (1 if args.quick else 2)
    summary = run_bench(runs, repeat, args.keep)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_report(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
