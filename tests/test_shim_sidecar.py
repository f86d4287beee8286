"""The shim with a real `tracelet watch` sidecar in another process: the training process only
writes files (it finds the sidecar by its heartbeat) and never imports wandb."""

from __future__ import annotations

import os

import pytest

from helpers import HAVE_TORCH, NEEDS_TORCH
from shim_helpers import (EXAMPLES, Sidecar, check, check_mlp_run, check_snippet_run, run_python, shim_env,
                          snippet, the_run)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _plotting_and_tables():
    pytest.importorskip("pandas", reason="pandas is not installed (test extra)")
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (test extra)")

NO_WANDB = """
assert "wandb" not in sys.modules, sorted(m for m in sys.modules if m.startswith("wandb"))
"""


def _trainer_env(runs_root, state_dir, sidecar_state=None):
    """No W&B settings at all in the training process: only the sidecar has them."""
    env = shim_env(runs_root, state_dir)
    if sidecar_state is not None:
        env["TRACELET_SIDECAR_STATE_DIR"] = str(sidecar_state)  # where to see the sidecar's status
    for key in [k for k in env if k.startswith("WANDB_")]:
        del env[key]
    return env


def test_snippet_through_a_sidecar(tmp_path, runs_root, state_dir, wandb_env):
    sidecar = Sidecar(runs_root, str(tmp_path / "sidecar-state"))
    try:
        sidecar.wait_advertised()
        code = snippet("tensorboardX", with_wandb_artifact=False) + NO_WANDB
        proc = check(run_python(code, _trainer_env(runs_root, state_dir, sidecar.state_dir), tmp_path))
        assert "uploader: sidecar" in proc.stdout and "wandb imported: False" in proc.stdout
        run = the_run(wandb_env["WANDB_DIR"], runs_root, "wandb_experiment")  # finished by the sidecar
    finally:
        rc, err = sidecar.stop()
    assert rc == 0, err
    assert "Traceback" not in err
    stem = [n for n in os.listdir(tmp_path) if n.startswith("script_")][0][:-3]
    check_snippet_run(run, with_wandb_artifact=False, script_stem=stem)
    assert not os.path.exists(state_dir)  # the training process kept no uploader state


@pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)
def test_the_mlp_example_through_a_sidecar(tmp_path, runs_root, state_dir, wandb_env):
    sidecar = Sidecar(runs_root, str(tmp_path / "sidecar-state"))
    try:
        sidecar.wait_advertised()
        code = f"""
        import runpy, sys
        sys.argv = ["mlp_example.py", "--epochs", "3"]
        runpy.run_path({os.path.join(EXAMPLES, "mlp_example.py")!r}, run_name="__main__")
        assert "wandb" not in sys.modules, sorted(m for m in sys.modules if m.startswith("wandb"))
        print("no wandb in the training process")
        """
        proc = check(run_python(code, _trainer_env(runs_root, state_dir, sidecar.state_dir), tmp_path))
        assert "sent by sidecar" in proc.stdout and "no wandb in the training process" in proc.stdout
        the_run(wandb_env["WANDB_DIR"], runs_root, "mlp_example")  # the sidecar finished the W&B run
    finally:
        rc, err = sidecar.stop()
    assert rc == 0, err
    check_mlp_run(runs_root, wandb_env["WANDB_DIR"], epochs=3)
    assert not any(n.startswith(".tracelet-sidecar") for n in os.listdir(runs_root))  # root untouched
