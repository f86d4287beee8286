"""Replay many runs at once: worker processes, each with its own share of the runs.

The W&B SDK spends ~150-230 µs of Python per ``run.log`` call, which threads cannot overlap (the
GIL); processes can, and each brings its own wandb-core streaming in parallel. Workers share the
state store: SQLite serialises their short transactions, and a run belongs to exactly one worker,
so no two processes ever write the same run.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue as queue_mod
import signal
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from .engine import Engine, Options, Report

log = logging.getLogger("tracelet.parallel")

# Below this backlog starting workers (each imports wandb and starts a wandb-core, ~1 s) costs
# about what it saves (measured on 2 cores: even at 6.5 MB, 1.35x faster at 13 MB), unless
# --jobs asks for workers explicitly.
PARALLEL_MIN_BYTES = 8 << 20


_progress_queue = None  # set in each worker process by _init_worker (a multiprocessing queue)


def _init_worker(parent_pid: int, progress) -> None:
    """Runs first in each worker: die with the parent, and keep the progress queue.

    A worker must not outlive its parent: an orphan would race the restarted upload. A queue can
    only reach a worker when the process starts, hence this initializer.
    """
    global _progress_queue  # noqa: PLW0603 - per worker process, set once
    _progress_queue = progress
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG (Linux)
    except Exception:  # noqa: BLE001 - elsewhere the progress callback checks the parent instead
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def plan(sizes: dict[str, int], jobs: int) -> list[frozenset[str]]:
    """Split runs into at most `jobs` shares of similar backlog (largest first, least-loaded bin)."""
    bins: list[tuple[int, list[str]]] = [(0, []) for _ in range(max(1, jobs))]
    for key in sorted(sizes, key=lambda k: (-sizes[k], k)):
        load, keys = min(bins, key=lambda b: b[0])
        bins.remove((load, keys))
        keys.append(key)
        bins.append((load + sizes[key], keys))
    return [frozenset(keys) for _load, keys in bins if keys]


def merge(reports: list[Report]) -> Report:
    out = Report()
    for rep in reports:
        for f in dataclasses.fields(Report):
            mine, theirs = getattr(out, f.name), getattr(rep, f.name)
            if isinstance(mine, list):
                mine.extend(theirs)
            elif isinstance(mine, dict):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v
            else:
                setattr(out, f.name, mine + theirs)
    return out


def _worker(root: str, backend: str, backend_options: dict, state_dir: str, options: Options,
            log_level: int, parent_pid: int) -> Report:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)-7s %(message)s", force=True)
    os.environ.pop("WANDB_SERVICE", None)  # each worker owns its wandb-core (see mode.prepare_environment)
    from . import backends, gcpolicy
    from .state import StateStore

    store = StateStore(state_dir)
    be = backends.create(backend, **backend_options)
    gcpolicy.apply()
    def on_progress(n: int) -> None:
        if os.getppid() != parent_pid:
            os._exit(1)  # the parent is gone (no PR_SET_PDEATHSIG here)
        if _progress_queue is not None:
            _progress_queue.put(n)

    engine = Engine(root, be, store, options, project=backend_options.get("project"),
                    entity=backend_options.get("entity"), on_progress=on_progress)
    try:
        return engine.upload()
    finally:
        be.close()
        store.close()


def upload_parallel(engine: Engine, jobs: int, backend: str, backend_options: dict,
                    on_progress: Callable[[int], None] | None = None, *, force: bool = True) -> Report:
    """Upload what `engine` found under its root with up to `jobs` worker processes.

    Without `force`, a backlog under PARALLEL_MIN_BYTES is replayed in this process.
    """
    engine.rescan()
    sizes = engine.pending_runs()
    shares = plan(sizes, min(jobs, len(sizes)))
    if len(shares) <= 1 or (not force and sum(sizes.values()) < PARALLEL_MIN_BYTES):
        return engine.upload()
    log.info("replaying %d run(s) in %d worker processes", len(sizes), len(shares))
    ctx = multiprocessing.get_context("spawn")
    progress = ctx.Queue() if on_progress else None
    with ProcessPoolExecutor(max_workers=len(shares), mp_context=ctx, initializer=_init_worker,
                             initargs=(os.getpid(), progress)) as pool:
        futures = [
            pool.submit(_worker, engine.root, backend, backend_options, engine.store.state_dir,
                        dataclasses.replace(engine.options, only_runs=share),
                        logging.getLogger().level, os.getpid())
            for share in shares
        ]
        while not all(f.done() for f in futures):
            if progress is None:  # nothing to relay: sleep until a worker ends
                wait(futures, return_when=FIRST_COMPLETED)
            else:
                _pump(progress, on_progress, timeout=0.2)
        _pump(progress, on_progress, timeout=0)
        reports = [f.result() for f in futures]
    report = merge(reports)
    engine.report = report
    engine.write_status()
    return report


def _pump(progress, on_progress, timeout: float) -> None:
    if progress is None:
        return
    try:
        while True:
            on_progress(progress.get(timeout=timeout))
            timeout = 0
    except queue_mod.Empty:
        pass
    except (EOFError, OSError):  # the manager went away at shutdown
        pass


def default_jobs() -> int:
    """One worker per CPU this process may use (its affinity, so `taskset` and container CPU sets
    count), at most 4. Each worker is a Python process feeding its own wandb-core; the Python side
    is the busier one, so a worker per CPU keeps every core fed (docs/benchmarks.md)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus))
