"""Replaying many runs uses the machine: 50 run directories uploaded on 1 core vs 2 cores.

The root holds 50 run directories, each a 1/50 copy of the reference log (``make_log`` at scale
0.02: 20 tags x 200 steps = 4,000 scalars, 4 histograms, 1 image; about 260 KB), so the whole
root is the reference log's size spread over many runs, the case ``upload_parallel`` is for.

Each scenario is one ``python -m tracelet_daemon upload ROOT --state-dir S --no-progress``
subprocess with fresh offline W&B and state directories:

* ``1 core``: under ``taskset -c <one cpu>`` with the default ``--jobs`` (one worker per CPU the
  process may use: here one, so the replay stays in-process) - the reference;
* ``2 cores``: under ``taskset -c <two cpus>``, default ``--jobs`` (two workers, each with its own
  wandb-core, runs split between them);
* ``2 cores, --jobs 1`` and ``2 cores, --jobs 2``: the same CPUs with the worker count forced, to
  show where the gain comes from.

Figures: wall time from spawn to exit (what a user waits for), the speed-up against ``1 core``,
CPU used (the subprocess and the descendants it reaped: workers, wandb-core) and what was
delivered, counted per run from the ``.wandb`` files (``find_run_files`` + ``load_offline_run``):
runs found and finished, history rows and values by kind, against what the log holds. Scenarios
alternate across repetitions so drift hits all alike; the fastest attempt of each is reported.

Run standalone: ``python bench/bench_parallel.py [--quick] [--runs 50] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass

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


@dataclass(frozen=True)
class Scenario:
    name: str
    cpus: int  # CPUs the process may use (taskset)
    jobs: int | None = None  # None: the CLI's default


SCENARIOS = (Scenario("1 core", 1), Scenario("2 cores", 2), Scenario("2 cores, --jobs 1", 2, 1),
             Scenario("2 cores, --jobs 2", 2, 2))
REFERENCE = "1 core"


def cpu_list(n: int) -> str | None:
    """The first `n` CPUs this process may use, as taskset wants them; None if there are fewer."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return ",".join(map(str, allowed[:n])) if len(allowed) >= n else None


# -- the parent ---------------------------------------------------------------------------------


@dataclass
class Attempt:
    scenario: str
    cpus: int
    jobs: int | None
    ok: bool
    wall_s: float
    error: str = ""
    runs_found: int = 0
    runs_finished: int = 0
    rows: int = 0
    scalars: int = 0
    histograms: int = 0
    images: int = 0
    tree_peak_kib: int = 0
    cpu_s: float = 0.0  # CPU of the subprocess and every descendant it reaped (workers, wandb-core)


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


def run_once(root: str, sc: Scenario, keep: bool = False) -> Attempt:
    tmp = tempfile.mkdtemp(prefix="tracelet-bench-parallel-")
    try:
        env = common.wandb_env(tmp)
        state = os.path.join(tmp, "state")
        cpus = cpu_list(sc.cpus)
        if cpus is None:
            return Attempt(sc.name, sc.cpus, sc.jobs, False, 0.0, error=f"fewer than {sc.cpus} CPUs here")
        argv = ["taskset", "-c", cpus, sys.executable, "-m", "tracelet_daemon", "upload", root, "--backend",
                "wandb", "--state-dir", state, "--no-progress"]
        if sc.jobs is not None:
            argv += ["--jobs", str(sc.jobs)]
        child = common.run_child(argv, env=env)
        from tracelet_daemon.status import read_status

        snap = read_status(state) or {}
        run_ids = [r["run_id"] for r in snap.get("runs", [])]
        att = Attempt(sc.name, sc.cpus, sc.jobs, child.ok, child.wall, tree_peak_kib=child.tree_peak_kib,
                      cpu_s=child.cpu_s)
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
        attempts: dict[str, list[Attempt]] = {sc.name: [] for sc in SCENARIOS}
        for i in range(max(1, repeat)):
            for sc in SCENARIOS:  # alternate, so drift over time hits all alike
                if progress:
                    print(f"  parallel: {runs} runs, {sc.name} (run {i + 1}/{repeat}) ...", file=sys.stderr,
                          flush=True)
                attempts[sc.name].append(run_once(root, sc, keep))
        best = {}
        for name, tries in attempts.items():
            good = [a for a in tries if a.ok]
            best[name] = min(good, key=lambda a: a.wall_s) if good else tries[-1]
        expected = {"runs": runs, "rows": runs * per_run["steps"], "scalars": runs * per_run["scalars"],
                    "histograms": runs * per_run["histograms"], "images": runs * per_run["images"]}
        ref = best[REFERENCE]
        speedup = {name: (ref.wall_s / a.wall_s if ref.ok and a.ok and a.wall_s else None)
                   for name, a in best.items()}
        return {"runs": runs, "per_run": per_run, "root_bytes": runs * per_run["bytes"], "repeat": repeat,
                "expected": expected, "reference": REFERENCE, "speedup": speedup,
                "best": {name: asdict(a) for name, a in best.items()},
                "all": {name: [asdict(a) for a in t] for name, t in attempts.items()}}
    finally:
        common.remove_tree(tmp)


def format_report(summary: dict) -> str:
    exp = summary["expected"]
    rows = [["(in the log)", None, None, None, f"{exp['runs']}", f"{exp['rows']:,}", f"{exp['scalars']:,}",
             exp["histograms"], exp["images"], None, None]]
    for name, a in summary["best"].items():
        rows.append([name + ("" if a["ok"] else " FAILED"), "default" if a["jobs"] is None else a["jobs"],
                     f"{a['wall_s']:.2f}" if a["ok"] else "-", common.fmt_ratio(summary["speedup"].get(name)),
                     f"{a['runs_finished']}/{a['runs_found']}", f"{a['rows']:,}", f"{a['scalars']:,}",
                     a["histograms"], a["images"], f"{a['cpu_s']:.1f}", common.fmt_mib(a["tree_peak_kib"])])
    head = (f"parallel replay: {summary['runs']} runs x {summary['per_run']['bytes'] / 1e3:.0f} KB"
            f" ({summary['root_bytes'] / 1e6:.1f} MB in all), `tracelet upload` under taskset; best of"
            f" {summary['repeat']}; speed-up = '{summary['reference']}' wall time / this wall time (>1 is faster)")
    table = common.format_table(["scenario", "--jobs", "wall s", "speed-up", "runs finished/found", "rows",
                                 "scalars", "histograms", "images", "CPU s", "RSS tree MiB"], rows)
    notes = [("  wall s: spawn to exit; --jobs default = one worker per CPU the process may use (1 core: the"
              " replay stays in-process); CPU s: user + system time of the subprocess and the descendants it"
              " reaped (workers, wandb-core); RSS tree: peak of the summed RSS of every process")]
    for name, a in summary["best"].items():
        if a["error"]:
            notes.append(f"  {name}: {a['error']}")
    for name, tries in summary["all"].items():
        notes.append(f"  {name}: every attempt's wall s: " + ", ".join(f"{t['wall_s']:.2f}" for t in tries))
    return "\n".join([head, table, *notes])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 runs, one repetition")
    ap.add_argument("--runs", type=int, default=None, help="run directories (default 50)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per worker count, best kept (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the W&B/state directories")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    runs = args.runs or (20 if args.quick else 50)
    repeat = args.repeat or (1 if args.quick else 2)
    summary = run_bench(runs, repeat, args.keep)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_report(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
