"""Reader throughput and memory: tracelet's reader vs the usual ways to read a tfevents file.

Peers (each runs in its own subprocess, on the same page-cached file):

* ``tracelet records``      iter_records: framing + masked CRC32C, payload bytes only.
* ``tracelet read_batch``   the daemon's bounded path: read_batch(8 MiB) in a loop.
* ``raw proto parse``       iter_records + ``event_pb2.Event.FromString``: the floor any
                            protobuf-based Python reader pays before it looks at a value.
* ``tracelet decode``       iter_records + decode_event: typed floats, histograms, images.
                            This is what tracelet does, and the reference for the ratios.
* ``TB EventFileLoader``    tensorboard's loader (``Load()``); without TensorFlow it uses the
                            pure-Python record reader (CRC32C in Python) plus data_compat
                            migration of every value into a tensor summary.
* ``TB LegacyEventFileLoader`` the same record reader + FromString, without the migration: the
                            difference to the line above is data_compat's cost.
* ``tbparse``               ``SummaryReader(dir)`` then ``.scalars`` and ``.histograms``:
                            EventAccumulator into pandas DataFrames. It parses every event but
                            keeps scalars, tensors, histograms, hparams and text; images are
                            dropped without TensorFlow. Its rate is what it reports (scalars).

Each worker reports its wall time per repetition (best is used), what it counted, its RSS after
imports and its peak RSS (VmHWM), so memory growth proportional to the log is visible.

Run standalone: ``python bench/bench_reader.py --log DIR_OR_FILE``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import _common as common

common.ensure_repo_on_path()

READ_BATCH_BYTES = 8 << 20
REFERENCE = "tracelet decode"


# -- peers (run inside the worker subprocess) ------------------------------------------------
# Each takes the event file and returns counts; it must consume everything it reads.


def peer_tracelet_records(path: str) -> dict:
    from tracelet_daemon.records import iter_records

    n = nbytes = 0
    for payload in iter_records(path):
        n += 1
        nbytes += len(payload)
    return {"events": n, "payload_bytes": nbytes}


def peer_tracelet_read_batch(path: str) -> dict:
    from tracelet_daemon.records import read_batch

    n = batches = 0
    offset = 0
    while True:
        batch = read_batch(path, offset, READ_BATCH_BYTES)
        n += len(batch.records)
        batches += 1
        if batch.fatal is not None or batch.end == offset:
            break
        offset = batch.end
    return {"events": n, "batches": batches}


def peer_raw_proto(path: str) -> dict:
    from tensorboard.compat.proto import event_pb2

    from tracelet_daemon.records import iter_records

    parse = event_pb2.Event.FromString
    n = 0
    for payload in iter_records(path):
        parse(payload)
        n += 1
    return {"events": n}


def peer_tracelet_decode(path: str) -> dict:
    from tracelet_daemon.events import decode_event
    from tracelet_daemon.records import iter_records
    from tracelet_daemon.values import Histogram, Image, ImageBatch

    plugins: dict[str, str] = {}
    events = scalars = histograms = images = skipped = 0
    for payload in iter_records(path):
        ev = decode_event(payload, plugins)
        events += 1
        if ev is None:
            continue
        skipped += len(ev.skipped)
        for _tag, value in ev.values:
            if isinstance(value, float):
                scalars += 1
            elif isinstance(value, Histogram):
                histograms += 1
            elif isinstance(value, Image):
                images += 1
            elif isinstance(value, ImageBatch):
                images += len(value.images)
    return {"events": events, "scalars": scalars, "histograms": histograms, "images": images,
            "skipped": skipped}


def peer_tb_loader(path: str) -> dict:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    n = 0
    for _event in EventFileLoader(path).Load():
        n += 1
    return {"events": n}


def peer_tb_legacy_loader(path: str) -> dict:
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    n = 0
    for _event in LegacyEventFileLoader(path).Load():
        n += 1
    return {"events": n}


def peer_tbparse(path: str) -> dict:
    from tbparse import SummaryReader

    reader = SummaryReader(os.path.dirname(path))
    scalars = reader.scalars
    histograms = reader.histograms
    return {"scalars": len(scalars), "histograms": len(histograms),
            "event_types": sorted(getattr(reader, "_event_types", ()))}


@dataclass(frozen=True)
class Peer:
    name: str
    fn: Callable[[str], dict]
    rate_of: str  # which count its per-second figure is about
    note: str


PEERS = [
    Peer("tracelet records", peer_tracelet_records, "events", "framing + CRC32C only"),
    Peer("tracelet read_batch", peer_tracelet_read_batch, "events", "daemon path, 8 MiB batches"),
    Peer("raw proto parse", peer_raw_proto, "events", "records + Event.FromString (floor)"),
    Peer("tracelet decode", peer_tracelet_decode, "events", "records + decode_event (typed values)"),
    Peer("TB EventFileLoader", peer_tb_loader, "events", "pure-Python CRC, data_compat"),
    Peer("TB LegacyEventFileLoader", peer_tb_legacy_loader, "events", "same reader, no data_compat"),
    Peer("tbparse", peer_tbparse, "scalars", "EventAccumulator -> DataFrames; no images"),
]
PEERS_BY_NAME = {p.name: p for p in PEERS}


def worker(peer_name: str, path: str, repeat: int, budget: float) -> dict:
    """Run one peer `repeat` times (fewer if over `budget` seconds); report times, counts, RSS."""
    peer = PEERS_BY_NAME[peer_name]
    _preimport(peer_name)
    rss_base = common.proc_status_kib("VmRSS")
    times: list[float] = []
    counts: dict = {}
    spent = 0.0
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        counts = peer.fn(path)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
        if spent + elapsed > budget:
            break
    return {"peer": peer_name, "times": times, "counts": counts, "rss_base_kib": rss_base,
            "rss_peak_kib": common.proc_status_kib("VmHWM")}


def _preimport(peer_name: str) -> None:
    """Import libraries before the clock starts: import time is not reading time."""
    import numpy  # noqa: F401
    from tensorboard.compat.proto import event_pb2  # noqa: F401

    import tracelet_daemon.events  # noqa: F401
    import tracelet_daemon.records  # noqa: F401

    if peer_name.startswith("TB "):
        from tensorboard.backend.event_processing import event_file_loader  # noqa: F401
        from tensorboard.compat import tf

        tf.__version__  # noqa: B018 - resolves the lazy TF-or-stub choice
    elif peer_name == "tbparse":
        import tbparse  # noqa: F401


# -- parent -----------------------------------------------------------------------------------


@dataclass
class PeerResult:
    peer: Peer
    ok: bool
    best: float = 0.0
    median: float = 0.0
    runs: int = 0
    counts: dict | None = None
    rss_base_kib: int = 0
    rss_peak_kib: int = 0
    error: str = ""

    @property
    def rate_count(self) -> int | None:
        return (self.counts or {}).get(self.peer.rate_of)

    @property
    def growth_kib(self) -> int:
        return max(0, self.rss_peak_kib - self.rss_base_kib)


def run_peer(peer: Peer, path: str, repeat: int, budget: float) -> PeerResult:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", peer.name, "--log", path,
            "--repeat", str(repeat), "--budget", str(budget)]
    child = common.run_child(argv, env=common.python_env())
    res = child.result
    if not child.ok or not res:
        return PeerResult(peer, False, error=f"exit {child.returncode}: {child.tail(5)}")
    times = res["times"]
    return PeerResult(peer, True, min(times), statistics.median(times), len(times), res["counts"],
                      res["rss_base_kib"], res["rss_peak_kib"])


def run_bench(log: str, peers: list[str] | None = None, repeat: int = 3, budget: float = 30.0,
              progress: bool = True) -> dict:
    """Run every peer on the log's single event file; returns a JSON-able summary."""
    path = common.single_event_file(log)
    common.warm_page_cache(path)
    results = []
    for peer in PEERS:
        if peers and peer.name not in peers:
            continue
        if progress:
            print(f"  reader: {peer.name} ...", file=sys.stderr, flush=True)
        results.append(run_peer(peer, path, repeat, budget))
    return summarize(path, results)


def summarize(path: str, results: list[PeerResult]) -> dict:
    size = os.path.getsize(path)
    ref = next((r for r in results if r.peer.name == REFERENCE and r.ok), None)
    rows = []
    for r in results:
        row = {"peer": r.peer.name, "note": r.peer.note, "ok": r.ok, "error": r.error,
               "rate_of": r.peer.rate_of, "counts": r.counts, "best_s": r.best, "median_s": r.median,
               "runs": r.runs, "rss_base_kib": r.rss_base_kib, "rss_peak_kib": r.rss_peak_kib,
               "rss_growth_kib": r.growth_kib}
        if r.ok and r.best > 0:
            row["rate"] = (r.rate_count or 0) / r.best
            row["mb_s"] = size / 1e6 / r.best
            if ref is not None:
                row["time_vs_tracelet"] = r.best / ref.best
                row["growth_vs_tracelet"] = (r.growth_kib / ref.growth_kib) if ref.growth_kib else None
        rows.append(row)
    return {"file": path, "size_bytes": size, "reference": REFERENCE, "peers": rows}


def format_report(summary: dict) -> str:
    headers = ["peer", "counted", "best s", "per s", "MB/s", "time vs tracelet",
               "RSS base MiB", "RSS peak MiB", "growth MiB", "notes"]
    rows = []
    for p in summary["peers"]:
        if not p["ok"]:
            rows.append([p["peer"], "FAILED", None, None, None, None, None, None, None, p["error"][:60]])
            continue
        counted = f"{(p['counts'] or {}).get(p['rate_of'], 0):,} {p['rate_of']}"
        rows.append([p["peer"], counted, f"{p['best_s']:.3f}", common.fmt_num(p.get("rate")),
                     common.fmt_num(p.get("mb_s")), common.fmt_ratio(p.get("time_vs_tracelet")),
                     common.fmt_mib(p["rss_base_kib"]), common.fmt_mib(p["rss_peak_kib"]),
                     f"{common.mib(p['rss_growth_kib']):.1f}", p["note"]])
    head = (f"reader: {summary['file']} ({summary['size_bytes'] / 1e6:.1f} MB), best of up to N runs;"
            f" 'time vs tracelet' = peer time / '{summary['reference']}' time (>1 is slower)")
    return head + "\n" + common.format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", help="log directory (one event file under it) or the event file itself")
    ap.add_argument("--scale", type=float, default=None,
                    help="use (and generate if needed) the cached reference log of this scale")
    ap.add_argument("--out", default=None, help="make_log cache directory")
    ap.add_argument("--peer", action="append", choices=[p.name for p in PEERS],
                    help="run only these peers (repeatable)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions per peer (best is reported)")
    ap.add_argument("--budget", type=float, default=30.0,
                    help="stop repeating a peer once it has used this many seconds")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        common.emit_result(worker(args.worker, args.log, args.repeat, args.budget))
        return 0
    log = args.log
    if log is None:
        import make_log

        log = make_log.ensure_log(args.scale or 1.0, args.out).root
    summary = run_bench(log, args.peer, args.repeat, args.budget)
    if args.json:
        import json

        print(json.dumps(summary, indent=2))
    else:
        print(format_report(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
