"""The issue's snippet and the complete MLP example, run unchanged in their own processes with
offline W&B (in-process uploader), read back from the .wandb log."""

from __future__ import annotations

import os

import pytest

from helpers import HAVE_TORCH, NEEDS_TORCH
from shim_helpers import (EXAMPLES, check, check_mlp_run, check_snippet_run, run_python, shim_env, snippet,
                          the_run, values_of)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _plotting_and_tables():
    pytest.importorskip("pandas", reason="pandas is not installed (test extra)")
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (test extra)")


@pytest.mark.parametrize("writer", ["tensorboardX", "torch"])
def test_the_issue_snippet_runs_unchanged(tmp_path, runs_root, state_dir, wandb_env, writer):
    if writer == "torch" and not HAVE_TORCH:
        pytest.skip(NEEDS_TORCH)
    module = "torch.utils.tensorboard" if writer == "torch" else "tensorboardX"
    env = shim_env(runs_root, state_dir)
    proc = check(run_python(snippet(module, True), env, tmp_path))
    assert "uploader: in-process" in proc.stdout
    run = the_run(wandb_env["WANDB_DIR"], runs_root, "wandb_experiment")
    stem = [n for n in os.listdir(tmp_path) if n.startswith("script_")][0][:-3]
    check_snippet_run(run, with_wandb_artifact=True, script_stem=stem)
    # the artifact copies kept in the run directory are what the objects were
    art_root = runs_root / "wandb_experiment" / ".tracelet" / "artifacts"
    (csv,) = art_root.glob("*-predictions/files/predictions.csv")
    assert csv.read_text().splitlines() == ["id,pred", "1,0.1", "2,0.7", "3,0.2"]
    (png,) = art_root.glob("*-training_loss/files/plots/training_loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (labels,) = art_root.glob("*-labels/files/labels.txt")
    assert labels.read_text() == "cat\ndog\n"


@pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)
def test_the_mlp_example_in_process(tmp_path, runs_root, state_dir, wandb_env):
    env = shim_env(runs_root, state_dir)
    code = f"""
    import runpy, sys
    sys.argv = ["mlp_example.py", "--epochs", "3"]
    runpy.run_path({os.path.join(EXAMPLES, "mlp_example.py")!r}, run_name="__main__")
    """
    proc = check(run_python(code, env, tmp_path))
    assert "sent by in-process" in proc.stdout
    check_mlp_run(runs_root, wandb_env["WANDB_DIR"], epochs=3)


def test_stopped_at_exit_after_an_uncaught_exception(tmp_path, runs_root, state_dir, wandb_env):
    """No stop_logging() and a crash: the exit hook still drains and finishes the run."""
    code = """
    import tracelet
    from tensorboardX import SummaryWriter
    exp = tracelet.start_logging(exp_name="crashy", config={"lr": 0.3})
    w = SummaryWriter()
    for step in range(50):
        w.add_scalar("loss", 1.0 / (step + 1), step)
    exp.log_params({"late": True})
    raise RuntimeError("training diverged")
    """
    proc = run_python(code, shim_env(runs_root, state_dir), tmp_path)
    assert proc.returncode == 1 and "training diverged" in proc.stderr
    run = the_run(wandb_env["WANDB_DIR"], runs_root, "crashy")
    assert values_of(run, "loss") == {s: pytest.approx(1.0 / (s + 1)) for s in range(50)}
    assert run.config["lr"] == 0.3 and run.config["late"] is True
