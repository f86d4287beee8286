"""The documentation site builds with `mkdocs build --strict`, and says what the code does."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
REQUIRED_PAGES = ("index.md", "getting-started.md", "cli.md", "python-api.md", "wandb.md", "deployment.md",
                  "monitoring.md", "data-types.md", "reliability.md", "architecture.md", "benchmarks.md")


def read(name: str) -> str:
    with open(os.path.join(DOCS, name)) as f:
        return f.read()


def nav_pages() -> list[str]:
    with open(os.path.join(REPO, "mkdocs.yml")) as f:
        return re.findall(r"^\s+- [^:]+: (\S+\.md)$", f.read(), re.MULTILINE)


def test_every_required_page_exists_and_is_in_the_nav():
    nav = nav_pages()
    for page in REQUIRED_PAGES:
        assert os.path.isfile(os.path.join(DOCS, page)), page
        assert page in nav, f"{page} is not in mkdocs.yml's nav"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install mkdocs-material)")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install mkdocs-material)")
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert res.returncode == 0, res.stdout + res.stderr
    for page in REQUIRED_PAGES:
        html = site / ("index.html" if page == "index.md" else page[:-3] + "/index.html")
        assert html.is_file(), html
    deployment = (site / "deployment" / "index.html").read_text()
    assert "HEALTHCHECK" in deployment and "LoadCredential" in deployment and "readOnly" in deployment
    assert "--8&lt;--" not in deployment, "a snippet was not included"


def test_cli_reference_names_every_command_and_option():
    import typer

    from tracelet_daemon.cli import app

    text = read("cli.md")
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"## `tracelet {name}" in text, f"cli.md has no section for {name}"
        for param in command.params:
            for opt in [*param.opts, *getattr(param, "secondary_opts", [])]:
                if opt.startswith("-"):
                    assert f"`{opt}`" in text, f"cli.md does not mention {name} {opt}"
            envvar = getattr(param, "envvar", None)
            if envvar:
                assert envvar in text, f"cli.md does not mention {envvar}"


def test_getting_started_repeats_the_readme_commands():
    text = read("getting-started.md")
    assert "pip install . && tracelet upload examples/runs --mode offline --state-dir .tracelet-demo" in text
    assert 'pip install -e ".[test]" && python -m pytest -q' in text


def test_wandb_page_covers_what_users_ask():
    text = read("wandb.md").lower()
    for topic in ("## install", "## authentication and environment variables", "wandb sync", "## config keys",
                  "## groups, job types", "## artifacts and the model registry", "## sweeps",
                  "## troubleshooting", "## performance tuning", "wandb_api_key_file"):
        assert topic in text, topic


def test_deployment_page_covers_every_target():
    text = read("deployment.md")
    for heading in ("## Docker", "## Docker Compose", "## Kubernetes", "## systemd"):
        assert heading in text
    for path in ("Dockerfile", "examples/deploy/compose.yaml", "examples/deploy/kubernetes.yaml",
                 "examples/deploy/statefulset.yaml",
                 "systemd/tracelet.service", "systemd/tracelet@.service"):
        assert f'--8<-- "{path}"' in text, f"{path} is not included"
        assert os.path.isfile(os.path.join(REPO, path))


def test_monitoring_page_lists_every_metric():
    pytest.importorskip("prometheus_client", reason="prometheus-client is not installed")
    import urllib.request

    from tracelet_daemon.metrics import MetricsServer

    server = MetricsServer("127.0.0.1", 0)
    try:
        server.update({"pid": 1, "root": "/r", "backend": "wandb", "started": 1.0, "heartbeat": 2.0,
                       "totals": {"runs": 1, "open_runs": 1, "rows": 3, "events": 4, "bytes_read": 5,
                                  "corrupt_records": 0, "errors": {"backend": 1}},
                       "lag_seconds": {"samples": 1, "p50": 0.5, "p99": 0.5, "last": 0.5}, "runs": []},
                      {"last_progress": 2.0})
        with urllib.request.urlopen(server.url, timeout=10) as resp:
            exposition = resp.read().decode()
    finally:
        server.close()
    names = set(re.findall(r"^(tracelet_\w+)", exposition, re.MULTILINE))  # as scraped: counters end in _total
    assert len(names) > 10
    text = read("monitoring.md")
    for name in names:
        assert f"`{name}`" in text or f"`{name}{{" in text, f"monitoring.md does not document {name}"
