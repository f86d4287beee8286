"""Shared fixtures: an isolated offline W&B environment and real TensorBoard writers."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch):
    """Every test gets offline W&B with its own WANDB_DIR, data and cache dirs; no API key."""
    # WANDB_SERVICE: wandb puts it in the environment of a process that started wandb-core; child
    # processes of the test would otherwise attach to this process's wandb-core
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "TRACELET_STATE_DIR",
                "WANDB_SERVICE"):
        monkeypatch.delenv(var, raising=False)
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb-dir"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_SILENT": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    os.makedirs(env["WANDB_DIR"], exist_ok=True)
    return env


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    return root


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / "state")
