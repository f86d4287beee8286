"""Memory bombs (issue 11, item 6): peak RSS of `tracelet upload` under one hostile record.

Each case is a runs root holding a healthy run (tensorboardX: 300 steps of two scalars, a
histogram every 30 steps) and a run whose event file holds one hostile record between two
scalars. ``tracelet upload`` replays it in a child process (offline W&B, ``--jobs 1``) whose
address space is capped with ``RLIMIT_AS`` (``--cap-gb``, 6 by default) so that old code cannot
take the machine down; the child reports its own peak RSS (``VmHWM`` of the Python process, not
wandb-core) and its exit. The table shows it next to the healthy-only root (the baseline), the
difference, and whether every row of the healthy run landed. Limits stay at their defaults
(``TRACELET_MAX_*`` is removed from the child's environment).

Run: ``python bench/bench_bombs.py [--only NAME ...] [--code DIR] [--cap-gb 6] [--json out.json]``.
``--code DIR`` runs another checkout's code (e.g. ``git archive HEAD | tar -x -C /tmp/before``
for the figures before a change); the bombs are built with this checkout's test helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from collections.abc import Callable

import _common as common

common.ensure_repo_on_path()
sys.path.insert(0, os.path.join(common.REPO_ROOT, "tests"))

import hostile_payloads as hp  # noqa: E402

HEALTHY_STEPS = 300

# name -> (what it is, builder writing the hostile run's event file at a path)
CASES: dict[str, tuple[str, Callable[[str], None]]] = {}


def case(name: str, what: str):
    def register(fn: Callable[[str], None]) -> Callable[[str], None]:
        CASES[name] = (what, fn)
        return fn
    return register


def _around(path: str, payloads: list[bytes]) -> None:
    hp.write_events(path, [hp.scalar("before", 0, 1.0), *payloads, hp.scalar("after", 2, 2.0)])


@case("healthy only", "the baseline: no hostile run")
def _none(path: str) -> None:
    return None


@case("histogram 1e7", "histogram tensor, 1e7 elements broadcast from one double")
def _hist7(path: str) -> None:
    _around(path, [hp.broadcast_histogram(10**7)])


@case("histogram 1e8", "the same, 1e8 elements")
def _hist8(path: str) -> None:
    _around(path, [hp.broadcast_histogram(10**8)])


@case("text 1e6", "text tensor, 1e6 entries broadcast from one 1-byte string")
def _text(path: str) -> None:
    _around(path, [hp.broadcast_text(10**6)])


@case("5 PNGs 12000x12000", "one record, five 12000x12000 RGB PNGs (~2 MB)")
def _pngs(path: str) -> None:
    _around(path, [hp.image_batch([hp.png(12000, 12000)] * 5, 12000, 12000)])


@case("sparse 1 GB record", "a record whose checksummed length says 1 GiB, stored sparse")
def _sparse(path: str) -> None:
    hp.write_sparse_record(path, 1 << 30)


@case("nesting 100k deep", "hparams metadata holding a list nested 100,000 deep (~800 KB)")
def _nested(path: str) -> None:
    _around(path, [hp.nested_hparams(100_000)])


@case("60 MB of empty values", "one record of 30M empty summary values (2 bytes each on the wire)")
def _wide(path: str) -> None:
    _around(path, [hp.empty_values(30_000_000)])


@case("200 broadcasts x 4e6", "200 records of ~70 bytes, each a histogram of 4e6 broadcast elements")
def _many(path: str) -> None:
    _around(path, [hp.broadcast_histogram(4_000_000, step=1, tag=f"h{i}") for i in range(200)])


CHILD = r"""
import json, resource, sys
cap = int(sys.argv[1])
if cap:
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
rc, error = None, ""
try:
    from tracelet_daemon.cli import main
    rc = main(sys.argv[2:])
except SystemExit as exc:
    rc = exc.code if isinstance(exc.code, int) else 1
except BaseException as exc:
    rc, error = "crash", " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
hwm = 0
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
print(PREFIX + json.dumps({"rc": rc, "error": error, "hwm_kib": hwm}), flush=True)
"""


def _write_healthy(run_dir: str) -> None:
    import numpy as np
    from tensorboardX import SummaryWriter

    rng = np.random.default_rng(0)
    w = SummaryWriter(run_dir)
    for step in range(HEALTHY_STEPS):
        w.add_scalar("loss", float(rng.normal()), step)
        w.add_scalar("acc", float(rng.random()), step)
        if step % 30 == 0:
            w.add_histogram("weights", rng.normal(size=10_000), step)
    w.close()


def _healthy_rows(wandb_dir: str, root: str) -> int:
    from tracelet_daemon.backends.wandb import txlog
    from tracelet_daemon.runs import run_ref

    rid = run_ref(root, "healthy").run_id
    return sum(len(txlog.load_offline_run(p).history) for p in txlog.find_run_files(wandb_dir, rid))


def run_case(name: str, code_dir: str, cap_bytes: int, keep: bool) -> dict:
    what, build = CASES[name]
    base = tempfile.mkdtemp(prefix="tracelet-bomb-")
    try:
        root = os.path.join(base, "runs")
        _write_healthy(os.path.join(root, "healthy"))
        hostile = os.path.join(root, "hostile")
        os.makedirs(hostile)
        path = os.path.join(hostile, "events.out.tfevents.1700000000.bomb")
        build(path)
        if not os.path.exists(path):
            os.rmdir(hostile)
        size = os.path.getsize(path) if os.path.exists(path) else 0
        env = common.wandb_env(base)
        env["PYTHONPATH"] = code_dir
        for var in [v for v in env if v.startswith("TRACELET_")]:
            del env[var]
        argv = [sys.executable, "-c", CHILD.replace("PREFIX", repr(common.RESULT_PREFIX)), str(cap_bytes),
                "upload", root, "--state-dir", os.path.join(base, "state"), "--no-progress", "--jobs", "1",
                "--mode", "offline", "--log-level", "warning"]
        child = common.run_child(argv, env=env, cwd=base, timeout=3600)
        res = child.result
        rows = _healthy_rows(env["WANDB_DIR"], root)
        said = [line for line in child.stderr.splitlines() if "bomb" in line and "tfevents" in line]
        return {"case": name, "what": what, "file_bytes": size, "rc": res.get("rc", child.returncode),
                "error": res.get("error", "" if child.ok else child.tail(3)),
                "peak_mib": common.mib(res.get("hwm_kib", 0)), "seconds": child.wall,
                "healthy_rows": rows, "report": said[0][:240] if said else ""}
    finally:
        if not keep:
            common.remove_tree(base)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=list(CASES), help="cases to run (the baseline always runs)")
    ap.add_argument("--code", default=common.REPO_ROOT, help="checkout whose tracelet_daemon runs the upload")
    ap.add_argument("--cap-gb", type=float, default=6.0, help="RLIMIT_AS of the upload process (0: none)")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--keep", action="store_true", help="keep the temp directories")
    args = ap.parse_args(argv)
    names = ["healthy only"] + [n for n in (args.only or CASES) if n != "healthy only"]
    cap = int(args.cap_gb * (1 << 30))
    results = []
    for name in names:
        print(f"... {name}", file=sys.stderr, flush=True)
        results.append(run_case(name, os.path.abspath(args.code), cap, args.keep))
    baseline = results[0]["peak_mib"]
    want_rows = results[0]["healthy_rows"]
    table = [(r["case"], r["file_bytes"], r["rc"], round(r["peak_mib"]), round(r["peak_mib"] - baseline),
              round(r["seconds"], 1), f"{r['healthy_rows']}/{want_rows}") for r in results]
    code = os.path.abspath(args.code)
    which = common.machine_info()["tracelet commit"] if code == common.REPO_ROOT else code
    print(f"tracelet code: {which}; address space capped at {args.cap_gb} GiB; limits at their defaults")
    print(common.format_table(["case", "file bytes", "exit", "peak RSS MiB", "over baseline", "s", "healthy rows"],
                              table))
    for r in results:
        note = r["error"] or r["report"]
        if note:
            print(f"  {r['case']}: {note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"code": args.code, "cap_gb": args.cap_gb, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
