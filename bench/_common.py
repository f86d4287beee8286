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
        rusage, tree_peak = _wait4(proc, timeout)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = {}
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    return ChildRun(proc.returncode, wall, result, rusage.ru_maxrss if rusage else 0, tree_peak,
                    stdout, stderr)


def _wait4(proc: subprocess.Popen, timeout: float, interval: float = 0.05):
    """Reap the child, sampling its process tree's RSS meanwhile; returns (rusage, tree peak).

    ``ru_maxrss`` only covers descendants the child itself waited for; wandb-core may outlive
    its parent by a moment and escape it, so the tree (Python + wandb-core) is also sampled.
    """
    deadline = time.monotonic() + timeout
    peak = 0
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return rusage, peak
        peak = max(peak, tree_rss_kib(proc.pid))
        if time.monotonic() > deadline:
            proc.kill()
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return rusage, peak
        time.sleep(interval)


def tree_rss_kib(pid: int) -> int:
    """Sum of VmRSS of `pid` and every descendant (via /proc/<pid>/task/*/children); 0 if gone."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


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
    return info


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


def fmt_mib(kib: float | None) -> str:
    return "-" if not kib else f"{mib(kib):.0f}"
