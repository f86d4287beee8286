"""Helpers shared by the benchmark scripts (not a benchmark itself).

Every measured thing runs in its own subprocess so that its peak RSS is its own and one peer's
imports or caches cannot help or hurt another. This module holds the plumbing for that: the
worker protocol (one JSON line on stdout), per-child resource usage, the W&B environment that
keeps everything offline and inside a temp dir, and plain-text tables.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULT_PREFIX = "BENCH-RESULT "


def ensure_repo_on_path() -> None:
    """`python bench/x.py` puts bench/ on sys.path, not the repo; tracelet_daemon lives there."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)


# -- memory -------------------------------------------------------------------------------


def proc_status_kib(field_name: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS now, VmHWM = peak so far); 0 if unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def mib(kib: float) -> float:
    return kib / 1024.0


# -- worker protocol ----------------------------------------------------------------------


def emit_result(result: Mapping[str, object]) -> None:
    """Workers print exactly one tagged JSON line; anything else on stdout is ignored."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


@dataclass
class ChildRun:
    """What one worker subprocess produced, plus what the kernel says it cost."""

    returncode: int
    wall: float
    result: dict = field(default_factory=dict)
    maxrss_kib: int = 0  # ru_maxrss of the child and its waited-for descendants (largest one)
    tree_peak_kib: int = 0  # largest sampled sum of VmRSS over the child and all its descendants
    stdout: str = ""
    stderr: str = ""
    main_peak_kib: int = 0  # largest sampled VmRSS of the child alone (e.g. the Python process)
    children_peak_kib: int = 0  # largest sampled sum of VmRSS over its descendants (e.g. wandb-core)
    cpu_s: float = 0.0  # user + system CPU of the child and the descendants it reaped (rusage)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 15) -> str:
        text = (self.stderr or self.stdout).strip().splitlines()
        return "\n".join(text[-lines:])


def run_child(argv: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: str | None = None, timeout: float = 3600.0) -> ChildRun:
    """Run a subprocess to completion and collect its own rusage with ``os.wait4``.

    ``subprocess.run`` would reap the child itself and lose the per-child rusage; output goes to
    temp files (not pipes) so a chatty child can never block on a full pipe while we wait.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=dict(env) if env else None,
                                cwd=cwd or REPO_ROOT, stdin=subprocess.DEVNULL)
        rusage, peaks = _wait4(proc, timeout)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = {}
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    return ChildRun(proc.returncode, wall, result, rusage.ru_maxrss if rusage else 0, peaks[0],
                    stdout, stderr, peaks[1], peaks[2],
                    (rusage.ru_utime + rusage.ru_stime) if rusage else 0.0)


def _wait4(proc: subprocess.Popen, timeout: float, interval: float = 0.05):
    """Reap the child, sampling its process tree's RSS meanwhile.

    Returns (rusage, (tree peak, child-alone peak, descendants peak)), all in KiB.

    ``ru_maxrss`` only covers descendants the child itself waited for; wandb-core may outlive
    its parent by a moment and escape it, so the tree (Python + wandb-core) is also sampled.
    """
    deadline = time.monotonic() + timeout
    peak = main_peak = kids_peak = 0
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return rusage, (peak, main_peak, kids_peak)
        main = proc_rss_kib(proc.pid)
        kids = sum(proc_rss_kib(c) for c in descendants(proc.pid))
        peak, main_peak, kids_peak = max(peak, main + kids), max(main_peak, main), max(kids_peak, kids)
        if time.monotonic() > deadline:
            proc.kill()
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return rusage, (peak, main_peak, kids_peak)
        time.sleep(interval)


def tree_rss_kib(pid: int) -> int:
    """Sum of VmRSS of `pid` and every descendant (via /proc/<pid>/task/*/children); 0 if gone."""
    return proc_rss_kib(pid) + sum(proc_rss_kib(c) for c in descendants(pid))


def proc_rss_kib(pid: int) -> int:
    """VmRSS of one process (not its children); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    except (OSError, ValueError):
        return 0


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children of all its threads, recursively)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (all its threads, not its children) in seconds; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after "pid (comm)": state is field 3, utime and stime are fields 14 and 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


@dataclass
class TreeSample:
    """CPU and memory of a process and its descendants at one moment (see `sample_tree`)."""

    t: float  # time.monotonic()
    main_cpu: float  # seconds of CPU used by the main process so far
    main_rss_kib: int
    children_cpu: dict[int, float]  # pid -> CPU seconds so far, for every live descendant
    children_rss_kib: int
    children_names: list[str] = field(default_factory=list)


def sample_tree(pid: int) -> TreeSample:
    kids = descendants(pid)
    cpu = {k: c for k in kids if (c := proc_cpu_seconds(k)) is not None}
    return TreeSample(time.monotonic(), proc_cpu_seconds(pid) or 0.0, proc_rss_kib(pid), cpu,
                      sum(proc_rss_kib(k) for k in kids), sorted({proc_name(k) for k in kids}))


def cpu_between(a: TreeSample, b: TreeSample) -> dict[str, float]:
    """CPU used between two samples, as % of one core: main process, descendants, both.

    A descendant born in between counts from zero; one that died in between is lost (its time
    goes to its parent's cutime only when reaped), which short windows make unlikely.
    """
    wall = max(1e-9, b.t - a.t)
    main = b.main_cpu - a.main_cpu
    kids = sum(c - a.children_cpu.get(p, 0.0) for p, c in b.children_cpu.items())
    return {"wall_s": wall, "main_cpu_s": main, "children_cpu_s": kids,
            "main_pct": 100.0 * main / wall, "children_pct": 100.0 * kids / wall,
            "total_pct": 100.0 * (main + kids) / wall}


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment with the repo importable (the package is not installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
    if extra:
        env.update(extra)
    return env


def wandb_env(base_dir: str) -> dict[str, str]:
    """Offline W&B confined to `base_dir`; no API key, so nothing can go online."""
    dirs = {name: os.path.join(base_dir, sub) for name, sub in (
        ("WANDB_DIR", "wandb"), ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_DATA_DIR", "wandb-data"),
        ("WANDB_CONFIG_DIR", "wandb-config"))}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    env = python_env({"WANDB_MODE": "offline", "WANDB_SILENT": "true", **dirs})
    for secret in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT"):
        env.pop(secret, None)
    return env


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- log files ------------------------------------------------------------------------------


def event_files(log_dir: str) -> list[str]:
    """Every tfevents file under `log_dir` (the reader bench wants exactly one)."""
    found = []
    for dirpath, _dirs, names in os.walk(log_dir):
        found += [os.path.join(dirpath, n) for n in names if "tfevents" in n and not n.startswith(".")]
    return sorted(found)


def single_event_file(log_dir: str) -> str:
    if os.path.isfile(log_dir):
        return log_dir
    files = event_files(log_dir)
    if len(files) != 1:
        raise SystemExit(f"expected exactly one tfevents file under {log_dir}, found {len(files)}")
    return files[0]


def warm_page_cache(path: str) -> None:
    """Read the file once so every peer starts with it in the page cache (no disk in the figures)."""
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


# -- machine --------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    """What a reader of the figures needs to judge them: cores, CPU, versions."""
    info = {
        "nproc": str(os.cpu_count() or "?"),
        "affinity": str(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else "?",
        "cpu": _cpu_model(),
        "memory": _mem_total(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    for mod in ("wandb", "tensorboard", "tensorboardX", "tbparse", "google.protobuf", "numpy"):
        info[mod] = _version_of(mod)
    info["protobuf backend"] = _protobuf_backend()
    info["tracelet commit"] = _git_commit()
    return info


def _git_commit() -> str:
    """The repository's HEAD, plus "(modified)" if tracked files differ from it: which code ran."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True, check=False,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, check=False,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (head or "?") + (" (modified)" if dirty else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "?"


def _version_of(module: str) -> str:
    try:
        from importlib.metadata import version

        dist = {"google.protobuf": "protobuf"}.get(module, module)
        return version(dist)
    except Exception:  # noqa: BLE001 - a missing package is just reported as such
        return "not installed"


def _protobuf_backend() -> str:
    """upb/cpp/python: decides how fast every protobuf-based peer can possibly be."""
    try:
        from google.protobuf.internal import api_implementation

        return api_implementation.Type()
    except Exception:  # noqa: BLE001
        return "?"


def format_machine(info: Mapping[str, str]) -> str:
    width = max(len(k) for k in info)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in info.items())


# -- tables ---------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned table: first column left-aligned, the rest right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return fmt_num(value)
    return str(value)


def fmt_num(x: float | None, digits: int = 3) -> str:
    """Human figures: 3 significant digits, thousands separators for big numbers."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def fmt_ratio_sig(x: float | None) -> str:
    """A ratio with 3 significant digits (for ratios far from 1, like 0.00283x)."""
    return "-" if x is None else f"{x:.3g}x"


def fmt_mib(kib: float | None) -> str:
    return "-" if not kib else f"{mib(kib):.0f}"


# -- a running `tracelet watch` ------------------------------------------------------------


class WatchDaemon:
    """`python -m tracelet_daemon watch ROOT` in a subprocess, offline, with its own temp dirs.

    Its log goes to ``<tmp>/watch.log``; its state (and status.json) to ``<tmp>/state`` unless
    `state_dir` is given. `stop()` sends SIGTERM (tracelet drains and finishes every open run)
    and waits; only if that does not end it, the daemon's own pid is killed.
    """

    def __init__(self, root: str, tmp: str, *, state_dir: str | None = None,
                 rescan_interval: float = 5.0, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, popen=subprocess.Popen) -> None:
        """`root`: a directory or an object-store URL; `popen`: how to start the process (a
        bench may track its children to stop them all)."""
        self.root = root if "://" in root else os.path.abspath(root)
        self.tmp = tmp
        self.state_dir = state_dir or os.path.join(tmp, "state")
        self.env = dict(env) if env is not None else wandb_env(tmp)
        self.log_path = os.path.join(tmp, "watch.log")
        self.argv = [sys.executable, "-m", "tracelet_daemon", "watch", self.root, "--backend", "wandb",
                     "--state-dir", self.state_dir, "--rescan-interval", f"{rescan_interval:g}",
                     *extra_args]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed by stop()
        self.started = time.monotonic()
        self.proc = popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                          cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.exit_code: int | None = None

    def status(self) -> dict | None:
        ensure_repo_on_path()
        from tracelet_daemon.status import read_status

        snap = read_status(self.state_dir)  # an earlier process on the same state may have left one
        return snap if snap and snap.get("pid") == self.pid else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_status(self, predicate=lambda s: True, timeout: float = 120.0,
                    newer_than: float | None = None, poll: float = 0.2) -> dict | None:
        """Poll status.json until `predicate(snapshot)` holds (and, with `newer_than`, its
        heartbeat is later than that wall time); None on timeout or if the daemon died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return None
            snap = self.status()
            if snap is not None and (
                    newer_than is None or snap.get("heartbeat", 0) > newer_than) and predicate(snap):
                return snap
            time.sleep(poll)
        return None

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM, wait for the drain; the exit code (or -9 if it had to be killed)."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.exit_code = self.proc.returncode
        self._log.close()
        return self.exit_code

    def kill(self) -> None:
        """The daemon did not drain in time: its own pid is killed."""
        self.proc.kill()
        self.proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path) as f:
                return "\n".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return ""

    def log_count(self, needle: str) -> int:
        try:
            with open(self.log_path) as f:
                return sum(needle in line for line in f)
        except OSError:
            return 0


def pct_cell(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}%"


def secs_cell(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"
