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
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .engine import Engine, Options, Report
from .logsetup import forward_logging, handle_forwarded
from .progress import Tick, upload_pass

log = logging.getLogger("tracelet.parallel")

# Below this backlog starting workers (each imports wandb and starts a wandb-core, ~1 s) costs
# about what it saves (measured on 2 cores: even at 6.5 MB, 1.35x faster at 13 MB), unless
# --jobs asks for workers explicitly.
PARALLEL_MIN_BYTES = 8 << 20
# a share whose process ended normally has sent everything; this only bounds a broken channel
_LAST_WORDS_TIMEOUT = 60.0


_channel = None  # set in each worker process by _init_worker: ticks and log records for the parent


@dataclasses.dataclass(frozen=True)
class _Done:
    """A worker's last message for one share: nothing of it follows on the channel."""

    source: int


def _init_worker(parent_pid: int, channel) -> None:
    """Runs first in each worker: die with the parent, and keep the channel to it.

    A worker must not outlive its parent: an orphan would race the restarted upload. A queue can
    only reach a worker when the process starts, hence this initializer.
    """
    global _channel  # noqa: PLW0603 - per worker process, set once
    _channel = channel
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
            log_level: int, parent_pid: int, source: int) -> Report:
    try:
        return _replay_share(root, backend, backend_options, state_dir, options, log_level, parent_pid,
                             source)
    finally:
        _channel.put(_Done(source))  # after everything it logged, even while closing


def _replay_share(root: str, backend: str, backend_options: dict, state_dir: str, options: Options,
                  log_level: int, parent_pid: int, source: int) -> Report:
    # records go to the parent, which writes them in its format, redacted, above its progress bar
    forward_logging(_channel, log_level)
    os.environ.pop("WANDB_SERVICE", None)  # each worker owns its wandb-core (see mode.prepare_environment)
    from . import backends, gcpolicy
    from .state import StateStore

    store = StateStore(state_dir, lock=False, backend=backend)  # the parent holds the lock
    be = backends.create(backend, **backend_options)
    gcpolicy.apply()
    def on_progress(_n: int) -> None:
        if os.getppid() != parent_pid:
            os._exit(1)  # the parent is gone (no PR_SET_PDEATHSIG here)

    engine = Engine(root, be, store, options, project=backend_options.get("project"),
                    entity=backend_options.get("entity"), on_progress=on_progress)
    try:
        return upload_pass(engine, source, _channel.put)
    finally:
        be.close()
        store.close()


def upload_parallel(engine: Engine, jobs: int, backend: str, backend_options: dict,
                    on_tick: Callable[[Tick], None] | None = None, *, force: bool = True) -> Report:
    """Upload what `engine` found under its root with up to `jobs` worker processes.

    Without `force`, a backlog under PARALLEL_MIN_BYTES is replayed in this process. `on_tick`
    gets every engine's progress (`progress.Tick`, source 0 here, 1.. for the workers' shares).
    """
    engine.rescan()
    sizes = engine.pending_runs()
    shares = plan(sizes, min(jobs, len(sizes)))
    if len(shares) <= 1 or (not force and sum(sizes.values()) < PARALLEL_MIN_BYTES):
        return upload_pass(engine, 0, on_tick)
    log.info("replaying %d run(s) in %d worker processes", len(sizes), len(shares))
    ctx = multiprocessing.get_context("spawn")
    channel = ctx.Queue()
    with ProcessPoolExecutor(max_workers=len(shares), mp_context=ctx, initializer=_init_worker,
                             initargs=(os.getpid(), channel)) as pool:
        futures = {
            source: pool.submit(_worker, engine.root, backend, backend_options, engine.store.state_dir,
                                dataclasses.replace(engine.options, only_runs=share),
                                logging.getLogger().level, os.getpid(), source)
            for source, share in enumerate(shares, start=1)
        }
        _relay(channel, futures, on_tick)
        reports = [f.result() for f in futures.values()]
    channel.close()
    report = merge(reports)
    engine.report = report
    engine.write_status()
    return report


def _relay(channel, futures: dict[int, Future], on_tick: Callable[[Tick], None] | None) -> None:
    """Hand the workers' ticks and log records on until every share is over and has said so.

    A share's result comes back through the pool's pipe, its messages through `channel`: a finished
    future does not mean its last ticks and lines have arrived, its `_Done` does (sent even when
    the share failed). A worker process that died never sends one; its future says so.
    """
    done: set[int] = set()
    deadline = None
    while True:
        waiting = [s for s, f in futures.items() if s not in done and not (f.done() and _died(f))]
        if not waiting:
            return
        if all(futures[s].done() for s in waiting):
            deadline = deadline or time.monotonic() + _LAST_WORDS_TIMEOUT
            if time.monotonic() > deadline:
                log.warning("worker share(s) %s ended without their last messages", waiting)
                return
        try:
            item = channel.get(timeout=0.5)
        except queue_mod.Empty:
            continue
        except (EOFError, OSError):  # the channel broke: the results still tell what happened
            return
        if isinstance(item, _Done):
            done.add(item.source)
        elif isinstance(item, Tick):
            if on_tick is not None:
                on_tick(item)
        else:
            handle_forwarded(item)


def _died(future: Future) -> bool:
    return future.cancelled() or isinstance(future.exception(), BrokenProcessPool)


def default_jobs() -> int:
    """One worker per CPU this process may use (its affinity, so `taskset` and container CPU sets
    count), at most 4. Each worker is a Python process feeding its own wandb-core; the Python side
    is the busier one, so a worker per CPU keeps every core fed (docs/benchmarks.md)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus))
