"""Live figures: `tracelet watch` following tensorboardX writers while they write.

Two scenarios, each with a fresh daemon (``python -m tracelet_daemon watch ROOT --state-dir S
--rescan-interval 5``, offline W&B, temp directories) and a writer subprocess:

* ``lag``:  one run, a steady 20 steps/s x 5 scalars, ``writer.flush()`` after every step, ~25 s.
            The figure is tracelet's own: ``lag_seconds`` p50/p99 from the daemon's status.json,
            measured inside tracelet from the file's mtime (the writer's flush) to the rows being
            handed to the W&B SDK (``run.log`` returned). The peer is wandb's own TensorBoard
            tailer (wandb-core), which looks at a file again 5 s after it last found nothing new
            (``waiting.NewDelay(5 * time.Second)`` in wandb-core's tensorboard handler): a value
            waits 0-5 s for the next look, so p50 >= 2.5 s and p99 >= 4.95 s. That peer figure is
            derived from the polling period, not measured.
* ``load``: 10 runs written at 100 steps/s each (2 scalars per step, a flush every 10 steps,
            one thread per run in one writer process) for ~30 s: lag p50/p99 as above, plus the
            CPU (% of one core, from /proc/<pid>/stat) and RSS of tracelet and of its wandb-core
            child over the writing window.

Every writer uses ``SummaryWriter(dir, flush_secs=1, max_queue=1)``: tensorboardX's ``flush()``
only flushes what its background thread already wrote, so a one-slot queue keeps the file
within one event of the writer. After writing, the bench waits until status.json shows every
byte read, stops the daemon (SIGTERM: it finishes its runs) and counts the values in the runs'
``.wandb`` files, so a low lag that dropped data would show.

Why no external lag figure: wandb-core writes an offline run's ``.wandb`` transaction log in
bursts (about every 15 s here), so "the value is in W&B" cannot be timed from outside with
better than ~15 s resolution; the status figure is the one tracelet itself exposes.

Run standalone: ``python bench/bench_live.py [--quick] [--only lag|load]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

import _common as common

common.ensure_repo_on_path()

WANDB_POLL_S = 5.0  # wandb-core's tensorboard file-read delay (see the module docstring)
WANDB_P50_S = WANDB_POLL_S * 0.5
WANDB_P99_S = WANDB_POLL_S * 0.99
SAMPLE_EVERY = 1.0  # seconds between CPU/RSS samples while writing


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    runs: int
    rate: float  # steps per second per run
    seconds: float
    tags: int  # scalars per step
    flush_every: int  # writer.flush() every N steps (0: only tensorboardX's own 1 s flush)

    @property
    def steps(self) -> int:
        return max(1, round(self.rate * self.seconds))


def scenarios(quick: bool) -> dict[str, Scenario]:
    lag_s, load_s = (8.0, 10.0) if quick else (25.0, 30.0)
    return {
        "lag": Scenario("lag", "1 run, 20 steps/s", 1, 20.0, lag_s, 5, 1),
        "load": Scenario("load", "10 runs x 100 steps/s", 10, 100.0, load_s, 2, 10),
    }


# -- the writer (its own subprocess) -----------------------------------------------------------


def writer_main(spec: dict) -> dict:
    """Write `runs` runs at `rate` steps/s; step 0 first, then wait for the go file.

    Step 0 of every run is written (and flushed) before the clock starts, so the daemon can open
    the W&B runs (wandb-core start-up, ``wandb.init``) outside the measured window.
    """
    from tensorboardX import SummaryWriter

    root, runs, rate, tags = spec["root"], spec["runs"], spec["rate"], spec["tags"]
    steps, flush_every, go_file = spec["steps"], spec["flush_every"], spec["go_file"]
    names = [f"live-{i:02d}" for i in range(runs)]
    tag_names = [f"train/metric_{k}" for k in range(tags)]
    writers = [SummaryWriter(os.path.join(root, n), flush_secs=1, max_queue=1) for n in names]
    for w in writers:
        for t in tag_names:
            w.add_scalar(t, 0.0, 0)
        w.flush()
    deadline = time.monotonic() + spec.get("go_timeout", 180.0)
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.01)

    results: list[dict] = [{} for _ in writers]
    t0 = time.monotonic()
    wall0 = time.time()

    def run(i: int, w) -> None:
        late = 0.0
        for step in range(1, steps + 1):
            due = t0 + (step - 1) / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late = max(late, -delay)
            for k, t in enumerate(tag_names):
                w.add_scalar(t, 1.0 / (step + k + 1), step)
            if flush_every and step % flush_every == 0:
                w.flush()
        done = time.monotonic()
        w.close()
        results[i] = {"steps": steps, "write_s": done - t0, "max_late_s": late,
                      "rate": steps / max(1e-9, done - t0)}

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"runs": results, "wall_start": wall0, "wall_end": time.time(),
            "scalars": runs * (steps + 1) * tags, "steps": steps + 1, "names": names}


# -- the parent ---------------------------------------------------------------------------------


@dataclass
class LiveResult:
    scenario: dict
    ok: bool
    error: str = ""
    lag: dict = field(default_factory=dict)  # status.json lag_seconds at the end
    writer: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)  # daemon over the writing window (cpu_between)
    writer_cpu_pct: float | None = None
    rss_main_kib: list[int] = field(default_factory=list)  # samples every SAMPLE_EVERY s
    rss_children_kib: list[int] = field(default_factory=list)
    children_names: list[str] = field(default_factory=list)
    open_runs: int = 0
    caught_up_s: float | None = None  # writer's last write -> first status.json showing every byte read
    startup_s: float | None = None  # daemon spawn -> first status.json
    delivered_scalars: int = 0
    delivered_rows: int = 0
    delivered_runs: int = 0
    finished_runs: int = 0
    daemon_exit: int | None = None


def _all_read(snap: dict) -> bool:
    from tracelet_daemon.metrics import bytes_behind

    return bytes_behind(snap) == 0 and snap.get("totals", {}).get("rows", 0) > 0


def count_run_values(wandb_dir: str, run_ids: list[str]) -> tuple[int, int, int, int]:
    """(runs with a .wandb file, finished runs, history rows with values, scalar values)."""
    from tracelet_daemon.backends.wandb.txlog import find_run_files, load_offline_run

    found = finished = rows = scalars = 0
    for rid in run_ids:
        paths = find_run_files(wandb_dir, rid)
        found += bool(paths)
        done = bool(paths)
        for p in paths:
            run = load_offline_run(p)
            done = done and run.finished
            for row in run.history:
                vals = [v for k, v in row.items() if not k.startswith("_") and k != "global_step"]
                rows += bool(vals)
                scalars += sum(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        finished += done
    return found, finished, rows, scalars


def run_scenario(sc: Scenario, keep: bool = False, progress: bool = True) -> LiveResult:
    tmp = tempfile.mkdtemp(prefix=f"tracelet-bench-live-{sc.name}-")
    res = LiveResult(asdict(sc), False)
    daemon = None
    writer = None
    wout = None
    try:
        root = os.path.join(tmp, "root")
        os.makedirs(root)
        daemon = common.WatchDaemon(root, tmp)
        if daemon.wait_status(timeout=120) is None:
            res.error = "the daemon wrote no status.json: " + daemon.log_tail(8)
            return res
        res.startup_s = time.monotonic() - daemon.started
        go = os.path.join(tmp, "go")
        spec = {"root": root, "runs": sc.runs, "rate": sc.rate, "tags": sc.tags, "steps": sc.steps,
                "flush_every": sc.flush_every, "go_file": go}
        wout = open(os.path.join(tmp, "writer.out"), "w+")  # noqa: SIM115 - closed below, after the writer exits
        writer = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--writer", json.dumps(spec)],
                                  stdout=wout, stderr=subprocess.STDOUT, env=common.python_env(),
                                  cwd=common.REPO_ROOT, stdin=subprocess.DEVNULL)
        # warm-up: every run's step 0 read and its W&B run open before the clock starts
        if daemon.wait_status(lambda s: s["totals"]["open_runs"] >= sc.runs and _all_read(s),
                              timeout=180) is None:
            res.error = "the daemon did not open every run: " + daemon.log_tail(8)
            return res
        if progress:
            print(f"  live: {sc.label} for {sc.seconds:g} s ...", file=sys.stderr, flush=True)
        before = common.sample_tree(daemon.pid)
        wbefore = common.sample_tree(writer.pid)
        res.rss_main_kib.append(before.main_rss_kib)
        res.rss_children_kib.append(before.children_rss_kib)
        open(go, "w").close()
        last = before
        wlast = wbefore
        next_sample = time.monotonic() + SAMPLE_EVERY
        while writer.poll() is None:
            time.sleep(0.05)
            if time.monotonic() >= next_sample:
                cur = common.sample_tree(daemon.pid)
                wcur = common.sample_tree(writer.pid)
                if wcur.main_cpu:  # still there
                    wlast = wcur
                last = cur
                res.rss_main_kib.append(cur.main_rss_kib)
                res.rss_children_kib.append(cur.children_rss_kib)
                next_sample += SAMPLE_EVERY
        end = common.sample_tree(daemon.pid)
        if end.main_cpu:
            last = end
        res.rss_main_kib.append(last.main_rss_kib)
        res.rss_children_kib.append(last.children_rss_kib)
        res.cpu = common.cpu_between(before, last)
        res.children_names = last.children_names
        wcpu = common.cpu_between(wbefore, wlast)
        res.writer_cpu_pct = wcpu["total_pct"]
        wout.seek(0)
        text = wout.read()
        wout.close()
        for line in text.splitlines():
            if line.startswith(common.RESULT_PREFIX):
                res.writer = json.loads(line[len(common.RESULT_PREFIX):])
        if writer.returncode != 0 or not res.writer:
            res.error = f"writer exit {writer.returncode}: " + "\n".join(text.strip().splitlines()[-8:])
            return res
        snap = daemon.wait_status(_all_read, timeout=120, newer_than=res.writer["wall_end"])
        if snap is None:
            res.error = "the daemon did not catch up within 120 s: " + daemon.log_tail(8)
            return res
        res.caught_up_s = snap["heartbeat"] - res.writer["wall_end"]
        res.lag = snap.get("lag_seconds") or {}
        res.open_runs = snap["totals"]["open_runs"]
        run_ids = [r["run_id"] for r in snap.get("runs", [])]
        res.daemon_exit = daemon.stop()
        daemon = None
        wandb_dir = common.wandb_env(tmp)["WANDB_DIR"]
        res.delivered_runs, res.finished_runs, res.delivered_rows, res.delivered_scalars = \
            count_run_values(wandb_dir, run_ids)
        res.ok = True
        return res
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        if wout is not None and not wout.closed:
            wout.close()
        if daemon is not None:
            res.daemon_exit = daemon.stop()
        if not keep:
            common.remove_tree(tmp)
        elif progress:
            print(f"  live: kept {tmp}", file=sys.stderr)


def run_bench(quick: bool = False, only: list[str] | None = None, keep: bool = False,
              progress: bool = True) -> dict:
    results = []
    for name, sc in scenarios(quick).items():
        if only and name not in only:
            continue
        results.append(asdict(run_scenario(sc, keep, progress)))
    return {"quick": quick, "peer": {"name": "wandb TB sync (wandb-core)", "poll_s": WANDB_POLL_S,
                                     "p50_s": WANDB_P50_S, "p99_s": WANDB_P99_S},
            "results": results}


def _status_interval() -> float:
    from tracelet_daemon.engine import Options

    return Options().status_interval


def _mib_span(samples: list[int]) -> str:
    if not samples:
        return "-"
    return f"{common.mib(samples[0]):.0f} / {common.mib(max(samples)):.0f} / {common.mib(samples[-1]):.0f}"


def format_report(summary: dict) -> str:
    peer = summary["peer"]
    lag_rows = []
    res_rows = []
    for r in summary["results"]:
        sc = r["scenario"]
        label = sc["label"]
        if not r["ok"]:
            lag_rows.append([label + " FAILED"] + [None] * 10)
            continue
        lag = r["lag"]
        p50, p99 = lag.get("p50"), lag.get("p99")
        rates = [w["rate"] for w in r["writer"]["runs"]]
        written = r["writer"]["scalars"]
        lag_rows.append([
            label, f"{sc['runs'] * sc['rate'] * sc['tags']:,.0f}", f"{min(rates):.1f}",
            common.secs_cell(p50), common.secs_cell(p99), f"{lag.get('samples', 0):,}",
            common.fmt_ratio_sig(p50 / peer["p50_s"] if p50 is not None else None),
            common.fmt_ratio_sig(p99 / peer["p99_s"] if p99 is not None else None),
            f"{r['delivered_scalars']:,} / {written:,}",
            f"{r['delivered_rows']:,} / {sc['runs'] * r['writer']['steps']:,}",
            f"{r['finished_runs']}/{sc['runs']}",
        ])
        cpu = r["cpu"]
        res_rows.append([
            label, f"{cpu['wall_s']:.1f}", common.pct_cell(cpu["main_pct"]),
            common.pct_cell(cpu["children_pct"]), common.pct_cell(cpu["total_pct"]),
            common.pct_cell(r["writer_cpu_pct"]), _mib_span(r["rss_main_kib"]),
            _mib_span(r["rss_children_kib"]), r["open_runs"],
            "<= " + common.secs_cell(r["caught_up_s"]),
        ])
    lag_rows.append([f"{peer['name']}: polls every {peer['poll_s']:g} s", None, None,
                     f">= {peer['p50_s']:.2f} s", f">= {peer['p99_s']:.2f} s", "derived", "1x", "1x",
                     None, None, None])
    text = [
        ("live lag: tracelet's status.json lag_seconds (inside tracelet: event file mtime, i.e. the"
        " writer's flush, -> rows handed to the W&B SDK); vs wandb = tracelet / wandb-core's polling"
        " (derived from its 5 s period, not measured; <1 is faster)"),
        common.format_table(["scenario", "values/s", "min steps/s/run", "lag p50", "lag p99", "samples",
                             "p50 vs wandb", "p99 vs wandb", "scalars delivered / written",
                             "W&B rows / TB steps", "runs finished"], lag_rows),
        ("  W&B rows > TB steps: a step whose values were read in two batches became two W&B rows"
        " (same global_step)"),
        "",
        ("live resources over the writing window: CPU in % of one core from /proc/<pid>/stat;"
        " RSS in MiB as start / max / end (sampled every 1 s); wandb-core = the daemon's children"),
        common.format_table(["scenario", "window s", "tracelet CPU", "wandb-core CPU", "together",
                             "writer CPU", "RSS tracelet", "RSS wandb-core", "open runs", "caught up"],
                            res_rows),
        (f"  caught up: from the writer's last write to the first status.json (written every"
         f" {_status_interval():g} s) that shows every byte read; an upper bound with that grain"),
    ]
    for r in summary["results"]:
        if not r["ok"]:
            text.append(f"  {r['scenario']['label']}: {r['error']}")
        else:
            late = max(w["max_late_s"] for w in r["writer"]["runs"])
            if late > 0.5:
                text.append(f"  {r['scenario']['label']}: the writer fell up to {late:.1f} s behind its"
                            " schedule (CPU contention on this machine)")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short scenarios (8-10 s of writing)")
    ap.add_argument("--only", action="append", choices=["lag", "load"], help="run only this scenario")
    ap.add_argument("--keep", action="store_true", help="keep the temp directories")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--writer", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.writer:
        common.emit_result(writer_main(json.loads(args.writer)))
        return 0
    summary = run_bench(args.quick, args.only, args.keep)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_report(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
