"""The W&B API key from a file (Docker/Kubernetes secret, systemd credential): read into the
process environment only, never printed, logged or stored."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from tracelet_daemon.errors import UsageError
from tracelet_daemon.logsetup import setup_logging
from tracelet_daemon.secrets import load_api_key

KEY = "tl0secret" + "0123456789abcdef0123456789abcdef01234567"  # fake, only for leak checks
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "runs")


def key_file(tmp_path, content: str = KEY + "\n", name: str = "wandb_api_key") -> str:
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def test_key_file_is_read_into_the_environment(tmp_path):
    env = {"WANDB_API_KEY_FILE": key_file(tmp_path, f"  {KEY}\n\n")}
    assert load_api_key(env) == env["WANDB_API_KEY_FILE"]
    assert env["WANDB_API_KEY"] == KEY


def test_an_explicit_key_wins_over_a_file(tmp_path, caplog):
    env = {"WANDB_API_KEY": "from-env-key-1234", "WANDB_API_KEY_FILE": key_file(tmp_path)}
    with caplog.at_level(logging.WARNING):
        assert load_api_key(env) == "WANDB_API_KEY"
    assert env["WANDB_API_KEY"] == "from-env-key-1234"
    assert "both WANDB_API_KEY and WANDB_API_KEY_FILE" in caplog.text


def test_systemd_credential_and_its_empty_default(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert load_api_key(env) == "" and "WANDB_API_KEY" not in env  # no credential: no key
    (creds / "wandb_api_key").write_text("\n")  # the units' SetCredential= fallback
    assert load_api_key(env) == "" and "WANDB_API_KEY" not in env
    (creds / "wandb_api_key").write_text(KEY)
    assert load_api_key(env) == str(creds / "wandb_api_key")
    assert env["WANDB_API_KEY"] == KEY


def test_bad_key_files_are_usage_errors_that_never_quote_the_content(tmp_path):
    with pytest.raises(UsageError, match="cannot read it"):
        load_api_key({"WANDB_API_KEY_FILE": str(tmp_path / "missing")})
    with pytest.raises(UsageError, match="more than one word") as exc:
        load_api_key({"WANDB_API_KEY_FILE": key_file(tmp_path, f"WANDB_API_KEY={KEY} extra")})
    assert KEY not in str(exc.value)
    with pytest.raises(UsageError, match="larger than"):
        load_api_key({"WANDB_API_KEY_FILE": key_file(tmp_path, KEY * 200)})
    env = {"WANDB_API_KEY_FILE": key_file(tmp_path, "")}
    assert load_api_key(env) == "" and "WANDB_API_KEY" not in env  # empty: no key, with a warning


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_redact_the_key(fmt, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    stream = io.StringIO()
    setup_logging("info", fmt, stream=stream)
    try:
        logging.getLogger("tracelet.test").error("W&B said: invalid key %s", KEY)
        try:
            raise RuntimeError(f"api_key={KEY}")
        except RuntimeError:
            logging.getLogger("tracelet.test").exception("failed")
    finally:
        logging.getLogger().handlers.clear()
    out = stream.getvalue()
    assert KEY not in out
    assert "invalid key ***" in out and "api_key=***" in out
    if fmt == "json":
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert lines[0]["level"] == "error" and lines[0]["msg"] == "W&B said: invalid key ***"
        assert "api_key=***" in lines[1]["exc"]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracelet_daemon", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_a_missing_key_file_is_one_line_and_exit_2(tmp_path, state_dir):
    env = dict(os.environ, WANDB_API_KEY_FILE=str(tmp_path / "nope"))
    res = run_cli("upload", EXAMPLES, "--state-dir", state_dir, "--no-progress", env=env)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert "WANDB_API_KEY_FILE" in res.stderr and "cannot read it" in res.stderr


@pytest.mark.slow
def test_the_key_never_reaches_output_state_or_wandb_files(tmp_path, state_dir):
    """A real upload (offline W&B) with the key in a file: not in logs, status, state DB, W&B files."""
    env = dict(os.environ, WANDB_API_KEY_FILE=key_file(tmp_path))
    res = run_cli("upload", EXAMPLES, "--state-dir", state_dir, "--no-progress", "--log-level", "debug",
                  "--log-format", "json", env=env)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stderr.splitlines() if line.strip()]  # all JSON, summary too
    assert any(rec["msg"].startswith("400 row(s) from 2 run(s)") for rec in lines)
    status = run_cli("status", "--json", "--state-dir", state_dir, env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["totals"]["rows"] > 0
    for text in (res.stdout, res.stderr, status.stdout, status.stderr):
        assert KEY not in text
    checked = 0
    for dirpath, _dirs, names in os.walk(tmp_path):  # state.sqlite3 (+ WAL), status.json, wandb dirs
        for name in names:
            path = os.path.join(dirpath, name)
            if name == "wandb_api_key" or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                assert KEY.encode() not in f.read(), path
            checked += 1
    assert checked > 5
    assert os.path.exists(os.path.join(state_dir, "status.json"))
