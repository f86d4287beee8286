"""The one benchmark command: generate the log, run the reader and upload benches, print a table.

    python bench/run_all.py                 # scale 1 (12.6 MB log), a few minutes on 2 cores
    python bench/run_all.py --quick         # 1/10 log, one repetition: a smoke run in seconds
    python bench/run_all.py --scale 10      # the x10 log (~126 MB)
    python bench/run_all.py --with-wandb-tb # also time wandb's own TensorBoard ingestion
    python bench/run_all.py --live          # + live lag and 10 runs at 100 steps/s (bench_live)
    python bench/run_all.py --scale-runs    # + 1,000 idle runs and RSS vs log size (bench_scale)
    python bench/run_all.py --parallel      # + 50 runs uploaded on 1 vs 2 cores (bench_parallel)
    python bench/run_all.py --all           # all of the above (~10 minutes on 2 cores)
    python bench/run_all.py --mlflow        # + the MLflow floor vs `tracelet upload --backend mlflow`
    python bench/run_all.py --objectstore   # + S3 (moto) roots: lag, idle listings, upload (~6 min)

Prints machine information first (figures mean little without it), then one table with every
reader peer and every upload contender side by side, then each bench's detailed table, and
(whenever something beyond the default ran) the issue's targets next to the measured figures.
No figure is asserted: this measures and prints; the exit status does not depend on a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import _common as common
import bench_live
import bench_mlflow
import bench_objectstore
import bench_parallel
import bench_reader
import bench_scale
import bench_upload
import make_log

QUICK_SCALE = 0.1


def combined_table(reader: dict, upload: dict) -> str:
    """Reader peers and upload contenders in one table, each against its own reference."""
    headers = ["bench", "contender", "time s", "rate", "MB/s", "vs ref", "counted", "peak RSS MiB"]
    # reader: the worker's own VmHWM; upload: Python + wandb-core together (sampled tree peak)
    rows = []
    for p in reader["peers"]:
        if not p["ok"]:
            rows.append(["reader", p["peer"], "FAILED", None, None, None, None, None])
            continue
        n = (p["counts"] or {}).get(p["rate_of"], 0)
        rows.append(["reader", p["peer"], f"{p['best_s']:.3f}",
                     f"{common.fmt_num(p.get('rate'))} {p['rate_of']}/s", common.fmt_num(p.get("mb_s")),
                     common.fmt_ratio(p.get("time_vs_tracelet")), f"{n:,} {p['rate_of']}",
                     common.fmt_mib(p["rss_peak_kib"])])
    size_mb = reader["size_bytes"] / 1e6
    for c in upload["contenders"]:
        d = c["delivered"]
        timed = c["timed_s"]
        rows.append(["upload", c["name"] + ("" if c["ok"] else " FAILED"),
                     None if timed is None else f"{timed:.2f}",
                     None if not timed else f"{common.fmt_num(d['rows'] / timed)} rows/s",
                     None if not timed else common.fmt_num(size_mb / timed),
                     common.fmt_ratio(c.get("vs_floor")),
                     f"{d['rows']:,} rows, {d['scalars']:,} scalars, {d['histograms']} hist, {d['images']} img",
                     common.fmt_mib(c["tree_peak_kib"])])
    notes = ("vs ref: reader = time / 'tracelet decode' time; upload = timed s / 'W&B SDK floor' timed s"
             " (>1 is slower). Upload 'timed s' is the whole process for `tracelet upload`, from the first"
             " call (wire / wandb.init) to the exit record for the others. Peak RSS: reader = the worker"
             " process; upload = Python process + wandb-core, summed.")
    return common.format_table(headers, rows) + "\n" + notes


def _verdict(ok: bool | None) -> str:
    return "not run" if ok is None else ("met" if ok else "NOT met")


def targets_table(reader: dict, upload: dict, extra: dict, scale: float) -> str:
    """The issue's targets beside what this session measured (the rule is in the row)."""
    rows = []
    peers = {p["peer"]: p for p in reader.get("peers", []) if p.get("ok")}
    dec, rec = peers.get("tracelet decode"), peers.get("tracelet records")
    rows.append(["reader >= 300k events/s with CRC (decode)",
                 f"{common.fmt_num(dec['rate'])} events/s" if dec else "-",
                 _verdict(None if not dec else dec["rate"] >= 300_000)])
    rows.append(["  same, framing + CRC only (no decode)",
                 f"{common.fmt_num(rec['rate'])} events/s" if rec else "-",
                 _verdict(None if not rec else rec["rate"] >= 300_000)])
    ups = {c["name"]: c for c in upload.get("contenders", []) if c.get("ok")}
    tr, tb = ups.get("tracelet upload"), ups.get("wandb TB ingestion")
    inproc = ups.get("tracelet (in-process)")

    def ratio_row(label: str, c: dict | None, key: str) -> list:
        r = c.get(key) if c else None
        return [label, common.fmt_ratio(r) if r else "-", _verdict(None if not r else r <= 1.3)]

    rows.append(ratio_row(f"upload <= 1.3x the SDK floor (scale {scale:g}): like for like, imports excluded",
                          inproc, "vs_floor"))
    rows.append(ratio_row("  same, `tracelet upload` whole process vs the floor's window", tr, "vs_floor"))
    rows.append(ratio_row("  same, process vs process (the floor's includes its untimed decoding)", tr,
                          "process_vs_floor"))
    speed = (tb["timed_s"] / tr["timed_s"]) if tr and tb else None
    rows.append(["upload >= 10x faster than wandb's TB ingestion",
                 f"{speed:.1f}x faster" if speed else "-", _verdict(None if speed is None else speed >= 10)])
    par = extra.get("parallel")
    if par:
        one, two = par["best"]["1 core"], par["best"]["2 cores"]
        sp = par["speedup"].get("2 cores")
        rows.append([f"{par['runs']} runs: faster with 2 cores than with 1",
                     f"{one['wall_s']:.1f} s vs {two['wall_s']:.1f} s ({sp:.2f}x)" if sp else "-",
                     _verdict(None if sp is None else sp > 1.0)])
    else:
        rows.append(["50 runs: faster with 2 cores than with 1", "-", _verdict(None)])
    live = {r["scenario"]["name"]: r for r in (extra.get("live") or {}).get("results", []) if r["ok"]}
    for name in ("lag", "load"):
        r = live.get(name)
        p50 = r["lag"].get("p50") if r else None
        p99 = r["lag"].get("p99") if r else None
        label = r["scenario"]["label"] if r else name
        rows.append([f"live lag p50 <= 0.5 s, p99 <= 2 s ({label})",
                     f"p50 {common.secs_cell(p50)}, p99 {common.secs_cell(p99)}" if r else "-",
                     _verdict(None if p50 is None or p99 is None else (p50 <= 0.5 and p99 <= 2.0))])
    scale_res = extra.get("scale") or {}
    idle = scale_res.get("idle")
    if idle and idle.get("ok"):
        cpu = idle["cpu"]["total_pct"]
        rss = [s["main_rss_kib"] + s["children_rss_kib"] for s in idle["samples"]]
        drift = common.mib(rss[-1] - rss[0])
        rows.append([f"idle, {idle['runs']:,} runs: < 1% of a core", common.pct_cell(cpu), _verdict(cpu < 1.0)])
        rows.append([f"idle, {idle['runs']:,} runs: RSS flat (end - start <= 1 MiB over {idle['cpu']['wall_s']:.0f} s)",
                     f"{common.mib(rss[0]):.1f} -> {common.mib(rss[-1]):.1f} MiB ({drift:+.1f})",
                     _verdict(abs(drift) <= 1.0)])
    else:
        rows.append(["idle, 1,000 runs: < 1% of a core, flat RSS", "-", _verdict(None)])
    mem = scale_res.get("memory")
    if mem and len(mem["scales"]) == 2 and all(e["upload"]["ok"] for e in mem["scales"]):
        a, b = mem["scales"]
        for key, what in (("tree_peak_kib", "Python + wandb-core"), ("main_peak_kib", "Python alone")):
            ratio = b["upload"][key] / a["upload"][key] if a["upload"][key] else None
            rows.append([f"upload RSS independent of log size ({what}, <= 1.10x)",
                         (f"{common.fmt_mib(a['upload'][key])} -> {common.fmt_mib(b['upload'][key])} MiB"
                         f" ({common.fmt_ratio(ratio)}, scale {a['scale']:g} -> {b['scale']:g})"),
                         _verdict(None if ratio is None else ratio <= 1.10)])
    else:
        rows.append(["upload RSS independent of log size", "-", _verdict(None)])
    return common.format_table(["target", "measured", "verdict"], rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=None, help="log scale (default 1: ~12.6 MB)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: scale {QUICK_SCALE:g} unless --scale is given, short reader budget")
    ap.add_argument("--out", default=None, help=f"log cache directory (default {make_log.default_out_dir()})")
    ap.add_argument("--repeat", type=int, default=None,
                    help="reader repetitions per peer (default 3); best is reported")
    ap.add_argument("--upload-repeat", type=int, default=None,
                    help="upload runs per contender, fastest kept (default 2, --quick 1)")
    ap.add_argument("--with-wandb-tb", action="store_true", help="also time wandb's own TB ingestion (slow)")
    ap.add_argument("--skip-reader", action="store_true")
    ap.add_argument("--skip-upload", action="store_true")
    ap.add_argument("--live", action="store_true",
                    help="live lag (1 run) and 10 runs at 100 steps/s under `tracelet watch` (~1.5 min)")
    ap.add_argument("--scale-runs", action="store_true",
                    help="1,000 idle runs under `tracelet watch`, and RSS on the x1 vs x10 log (~5 min)")
    ap.add_argument("--idle-seconds", type=float, default=None,
                    help="--scale-runs measurement window (default 60; 3600 for the issue's hour)")
    ap.add_argument("--parallel", action="store_true", help="50 runs uploaded on 1 vs 2 cores (~2 min)")
    ap.add_argument("--mlflow", action="store_true",
                    help="a local mlflow server: the sequential log_batch floor vs tracelet (needs .[mlflow])")
    ap.add_argument("--objectstore", action="store_true",
                    help="a local S3 server (moto): lag, idle listings and upload from a bucket vs a local"
                         " directory (~6 min; needs moto[server] and .[s3])")
    ap.add_argument("--all", action="store_true",
                    help="--with-wandb-tb (run once) --live --scale-runs --parallel (~10 min on 2 cores)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    args = ap.parse_args(argv)
    if args.all:
        args.with_wandb_tb = args.live = args.scale_runs = args.parallel = True
    if args.scale is None:
        args.scale = QUICK_SCALE if args.quick else 1.0
    if args.repeat is None:
        args.repeat = 3
    args.upload_repeat_given = args.upload_repeat is not None
    if args.upload_repeat is None:
        args.upload_repeat = 1 if args.quick else 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = common.machine_info()
    print("machine:\n" + common.format_machine(info), flush=True)

    log = make_log.ensure_log(args.scale, args.out)
    s = log.spec
    print(f"\nlog: {log.event_file}\n  {log.size_bytes / 1e6:.1f} MB, scale {s.scale:g}: {s.steps:,} steps x "
          f"{s.scalar_tags} tags = {s.scalars:,} scalars, {s.histograms} histograms, {s.images} images\n",
          flush=True)

    started = time.perf_counter()
    empty_reader = {"peers": [], "size_bytes": log.size_bytes}
    empty_upload = {"contenders": []}
    budget = 2.0 if args.quick else 60.0
    reader = empty_reader if args.skip_reader else bench_reader.run_bench(log.root, None, args.repeat, budget)
    upload = empty_upload if args.skip_upload else bench_upload.run_bench(
        log.root, args.with_wandb_tb, args.upload_repeat,
        wandb_tb_repeat=1 if args.all and not args.upload_repeat_given else None)
    extra: dict = {}
    if args.parallel:
        extra["parallel"] = bench_parallel.run_bench(20 if args.quick else 50, 1 if args.quick else 2)
    if args.live:
        extra["live"] = bench_live.run_bench(quick=args.quick)
    if args.scale_runs:
        extra["scale"] = bench_scale.run_bench(quick=args.quick, idle_seconds=args.idle_seconds, out=args.out)
    if args.mlflow:
        extra["mlflow"] = bench_mlflow.run_bench(log, [1, 2] if args.quick else [1, 2, 4])
    if args.objectstore:
        extra["objectstore"] = bench_objectstore.run_bench(quick=args.quick, scale=args.scale, out=args.out)
    elapsed = time.perf_counter() - started

    print("\n=== tracelet benchmark: side by side ===")
    print(combined_table(reader, upload))
    if not args.skip_reader:
        print("\n=== reader detail ===")
        print(bench_reader.format_report(reader))
    if not args.skip_upload:
        print("\n=== upload detail ===")
        print(bench_upload.format_report(upload))
    if "parallel" in extra:
        print("\n=== parallel replay ===")
        print(bench_parallel.format_report(extra["parallel"]))
    if "live" in extra:
        print("\n=== live ===")
        print(bench_live.format_report(extra["live"]))
    if "scale" in extra:
        print("\n=== scale ===")
        print(bench_scale.format_report(extra["scale"]))
    if "mlflow" in extra:
        print("\n=== MLflow ===")
        print(bench_mlflow.format_report(extra["mlflow"]))
    if "objectstore" in extra:
        print("\n=== object store (S3) ===")
        print(bench_objectstore.format_report(extra["objectstore"]))
    if extra:
        print("\n=== issue 7 targets (informational: nothing here fails the run) ===")
        print(targets_table(reader, upload, extra, log.spec.scale))
    print(f"\n(benchmarks took {elapsed:.0f} s)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "log": log.to_json(), "reader": reader, "upload": upload, **extra,
                       "elapsed_s": elapsed}, f, indent=2, default=str)
        print(f"figures written to {os.path.abspath(args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
