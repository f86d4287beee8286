"""The watched root is only read; names from disk cannot escape the state or W&B directories."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from tensorboardX import SummaryWriter

from helpers import history_of, run_id_for
from tracelet_daemon.backends.wandb import txlog
from tracelet_daemon.cli import main

pytestmark = pytest.mark.slow


def _snapshot(root) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[path] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def test_root_is_never_written_and_hostile_names_stay_contained(tmp_path, runs_root, state_dir, wandb_env):
    hostile = ["exp 1 ünïcode", "--flag;rm -rf", "a" * 200, "semi;colon|pipe", "$(whoami)"]
    for name in hostile:
        w = SummaryWriter(str(runs_root / name))
        w.add_scalar("x", 1.0, 0)
        w.close()
    meta = runs_root / hostile[0] / ".tracelet"
    meta.mkdir()
    (meta / "run.json").write_text(json.dumps({"format": "tracelet.run/1", "name": "../../../../etc/passwd",
                                               "run_id": "../../escape"}))
    before_root = _snapshot(runs_root)
    outside = set(os.listdir(tmp_path))
    assert main(["upload", str(runs_root), "--state-dir", state_dir, "--no-progress"]) == 0
    assert _snapshot(runs_root) == before_root  # not a byte, mode or timestamp changed
    # nothing written beside the state dir and the W&B folders the environment names
    assert set(os.listdir(tmp_path)) - outside <= {"state", "wandb-cache", "wandb-data", "wandb-config"}
    wandb_dir = wandb_env["WANDB_DIR"]
    for name in hostile:
        rid = run_id_for(runs_root, name)
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", rid)
        assert [r["x"] for r in history_of(wandb_dir, rid)] == [1]
    for folder in os.listdir(os.path.join(wandb_dir, "wandb")):
        assert os.path.realpath(os.path.join(wandb_dir, "wandb", folder)).startswith(os.path.realpath(wandb_dir))
    (path,) = txlog.find_run_files(wandb_dir, run_id_for(runs_root, hostile[0]))
    assert txlog.load_offline_run(path).display_name == "../../../../etc/passwd"  # a label, not a path


def test_watch_opens_the_root_read_only(tmp_path, runs_root, state_dir):
    """Under a read-only bind of the root the daemon works (root ignores permissions: use strace-free
    evidence instead: every open of a file under the root is O_RDONLY, checked via /proc fdinfo)."""
    w = SummaryWriter(str(runs_root / "exp"))
    w.add_scalar("x", 1.0, 0)
    w.close()
    code = (
        "import os, sys\n"
        "real_open = os.open\n"
        "root = sys.argv[1]\n"
        "def guarded(path, flags, *a, **k):\n"
        "    p = os.fspath(path)\n"
        "    if os.path.abspath(p).startswith(root) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):\n"
        "        raise SystemExit(f'write open of {p}')\n"
        "    return real_open(path, flags, *a, **k)\n"
        "os.open = guarded\n"
        "import builtins\n"
        "real_bopen = builtins.open\n"
        "def bopen(file, mode='r', *a, **k):\n"
        "    if isinstance(file, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(file)).startswith(root)"
        " and any(c in mode for c in 'wax+'):\n"
        "        raise SystemExit(f'write open of {file}')\n"
        "    return real_bopen(file, mode, *a, **k)\n"
        "builtins.open = bopen\n"
        "from tracelet_daemon.cli import main\n"
        "sys.exit(main(['upload', root, '--state-dir', sys.argv[2], '--no-progress']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(runs_root), state_dir], capture_output=True,
                          text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "write open" not in proc.stderr
