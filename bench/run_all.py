"""The one benchmark command: generate the log, run the reader and upload benches, print a table.

    python bench/run_all.py                 # scale 1 (12.6 MB log), a few minutes on 2 cores
    python bench/run_all.py --quick         # 1/10 log, one repetition: a smoke run in seconds
    python bench/run_all.py --scale 10      # the x10 log (~126 MB)
    python bench/run_all.py --with-wandb-tb # also time wandb's own TensorBoard ingestion

Prints machine information first (figures mean little without it), then one table with every
reader peer and every upload contender side by side, then each bench's detailed table.
No figure is asserted: this measures, it does not judge.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import _common as common
import bench_reader
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
             " (>1 is slower). Upload 'timed s' is the whole process for tracelet, wandb.init to the"
             " exit record for the SDK contenders. Peak RSS: reader = the worker process;"
             " upload = Python process + wandb-core, summed.")
    return common.format_table(headers, rows) + "\n" + notes


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
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    args = ap.parse_args(argv)
    if args.scale is None:
        args.scale = QUICK_SCALE if args.quick else 1.0
    if args.repeat is None:
        args.repeat = 3
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
        log.root, args.with_wandb_tb, args.upload_repeat)
    elapsed = time.perf_counter() - started

    print("\n=== tracelet benchmark: side by side ===")
    print(combined_table(reader, upload))
    if not args.skip_reader:
        print("\n=== reader detail ===")
        print(bench_reader.format_report(reader))
    if not args.skip_upload:
        print("\n=== upload detail ===")
        print(bench_upload.format_report(upload))
    print(f"\n(benchmarks took {elapsed:.0f} s)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "log": log.to_json(), "reader": reader, "upload": upload},
                      f, indent=2, default=str)
        print(f"figures written to {os.path.abspath(args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
