"""Deployment files: the Dockerfile, the compose and Kubernetes examples, the systemd units and
sd_notify, checked as far as this machine allows (no Docker engine, no systemd as PID 1).

The image's and the units' commands are run for real from the installed package, with the
environment the image or the unit would give them, against a real notify socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tracelet_daemon.notify import Notifier
from tracelet_daemon.records import iter_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples", "runs")
DEPLOY = os.path.join(REPO, "examples", "deploy")
UNITS = ("tracelet.service", "tracelet@.service")
SECRET_NAME = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD)", re.I)
DOCKER_STOP_GRACE = 10  # seconds: `docker stop`'s default


# -- helpers -----------------------------------------------------------------------------------
def parse_dockerfile(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if pending and line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            full = (pending + line).strip()
            pending = ""
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    assert not pending, "dangling continuation"
    return out


def dockerfile_env(instructions) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in instructions:
        if word == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def installed_tracelet() -> str:
    """The `tracelet` console script of the interpreter running the tests."""
    beside = os.path.join(os.path.dirname(sys.executable), "tracelet")
    path = beside if os.access(beside, os.X_OK) else shutil.which("tracelet")
    if not path:
        pytest.skip("the tracelet command is not installed (pip install -e .)")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """No W&B, tracelet or systemd variables from the parent (conftest's offline W&B included)."""
    drop = ("WANDB_", "TRACELET_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in
           {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY", "NETRC", "HOME"}}
    env.update(extra)
    return env


def copy_examples(dest) -> str:
    shutil.copytree(EXAMPLES, str(dest))
    return str(dest)


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def wait_until(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class NotifySocket:
    """A real AF_UNIX datagram socket read continuously, as systemd reads its notify socket."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def fields(self) -> list[list[str]]:
        return [m.split("\n") for m in list(self.messages)]

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self.sock.close()


@contextlib.contextmanager
def daemon_process(argv: list[str], log_path, **popen):
    """A process writing its log to `log_path`; killed on the way out if a check failed before
    it stopped, so no test leaves a daemon behind."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **popen)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def stop_like_docker(proc, timeout: float) -> int:
    """SIGTERM, as `docker stop` sends it; the exit code, which must come within `timeout`."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def yaml_or_skip():
    return pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")


# -- Docker --------------------------------------------------------------------------------------
def test_dockerfile_is_a_non_root_exec_form_sidecar_without_secrets():
    ins = parse_dockerfile(os.path.join(REPO, "Dockerfile"))
    words = [w for w, _ in ins]
    base = next(a for w, a in ins if w == "FROM")
    assert re.match(r"python:3\.\d+-slim", base), base
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    entrypoint = json.loads(next(a for w, a in ins if w == "ENTRYPOINT"))  # exec form is JSON
    assert entrypoint == ["tracelet"]
    assert json.loads(next(a for w, a in ins if w == "CMD")) == ["watch", "/runs"]
    assert words.index("USER") < words.index("ENTRYPOINT")
    health = next(a for w, a in ins if w == "HEALTHCHECK")
    options, _, cmd = health.partition("CMD ")
    assert json.loads(cmd)[:2] == ["tracelet", "health"]
    assert "--start-period" in options
    if "STOPSIGNAL" in words:
        assert next(a for w, a in ins if w == "STOPSIGNAL") == "SIGTERM"
    env = dockerfile_env(ins)
    volumes = [json.loads(a) if a.startswith("[") else a.split() for w, a in ins if w == "VOLUME"]
    assert env["TRACELET_STATE_DIR"] in [v for vs in volumes for v in vs], "state must be on a volume"
    assert 0 < float(env["TRACELET_DRAIN_TIMEOUT"]) < DOCKER_STOP_GRACE
    for word, args in ins:  # no secret baked into the image, not even an empty default
        if word in ("ENV", "ARG", "LABEL"):
            for token in shlex.split(args):
                assert not SECRET_NAME.search(token.partition("=")[0]), f"{word} {token}"
        assert "WANDB_API_KEY" not in args, f"{word} {args}"
    copied = [shlex.split(a)[:-1] for w, a in ins if w in ("COPY", "ADD")]
    assert all(src in {"pyproject.toml", "README.md", "tracelet_daemon", "tracelet"}
               for srcs in copied for src in srcs), copied
    with open(os.path.join(REPO, ".dockerignore")) as f:
        ignored = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    assert {".git", "**/.env", "**/.netrc", "**/wandb_api_key*"} <= ignored


@pytest.mark.slow
def test_the_image_command_runs_drains_on_sigterm_and_passes_its_healthcheck(tmp_path):
    """ENTRYPOINT + CMD with the image's ENV (paths mapped into tmp), as PID 1 would run them."""
    ins = parse_dockerfile(os.path.join(REPO, "Dockerfile"))
    image_env = dockerfile_env(ins)
    state = str(tmp_path / "var-lib-tracelet")
    mapped = {k: v.replace("/var/lib/tracelet", state) for k, v in image_env.items()}
    env = clean_env(**mapped)
    root = copy_examples(tmp_path / "runs")
    exe = installed_tracelet()
    entry = json.loads(next(a for w, a in ins if w == "ENTRYPOINT"))
    cmd = [root if a == "/runs" else a for a in json.loads(next(a for w, a in ins if w == "CMD"))]
    health = json.loads(next(a for w, a in ins if w == "HEALTHCHECK").partition("CMD ")[2])
    argv = [exe, *entry[1:], *cmd]
    health_argv = [exe, *health[1:]]
    os.makedirs(state)
    log_path = tmp_path / "container.log"
    with daemon_process(argv, log_path, env=env, cwd=state) as proc:
        def healthy() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return subprocess.run(health_argv, env=env, capture_output=True, timeout=30).returncode == 0

        wait_until(healthy, what="the HEALTHCHECK to pass")
        wait_until(lambda: read_json(os.path.join(state, "status.json"))["totals"]["rows"] == 400,
                   what="the example runs to be replayed")
        rc = stop_like_docker(proc, DOCKER_STOP_GRACE)  # ... before its SIGKILL
    out = log_path.read_text()
    assert rc == 0, out
    assert "SIGTERM received: draining" in out and "Traceback" not in out
    offline = [d for d in os.listdir(os.path.join(state, "wandb")) if d.startswith("offline-run-")]
    assert len(offline) == 2, "W&B ran offline into the state volume"
    after = subprocess.run(health_argv, env=env, capture_output=True, text=True, timeout=30)
    assert after.returncode == 1 and "not running" in after.stdout


@pytest.mark.slow
def test_the_drain_timeout_bounds_a_stop(tmp_path):
    """A drain longer than --drain-timeout ends with exit 1 and a clear line, never a hang: the
    supervisor's grace period (docker stop, TimeoutStopSec, terminationGracePeriodSeconds) holds."""
    state = str(tmp_path / "state")
    env = clean_env(WANDB_MODE="offline", HOME=str(tmp_path))
    root = copy_examples(tmp_path / "runs")
    proc = subprocess.Popen([sys.executable, "-m", "tracelet_daemon", "watch", root, "--state-dir", state,
                             "--drain-timeout", "0.01"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        wait_until(lambda: os.path.exists(os.path.join(state, "status.json"))
                   and read_json(os.path.join(state, "status.json"))["totals"]["open_runs"] == 2,
                   what="two open runs")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out
    assert "drain did not finish within 0.01s; exiting now" in out and "Traceback" not in out


@pytest.fixture(scope="module")
def docker_image():
    """The image built from the repository; only with TRACELET_TEST_DOCKER=1 and an engine."""
    if os.environ.get("TRACELET_TEST_DOCKER") != "1":
        pytest.skip("set TRACELET_TEST_DOCKER=1 to build the image (needs a Docker engine and network)")
    if not shutil.which("docker") or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.skip("no Docker engine reachable")
    tag = f"tracelet-test:{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "build", "-t", tag, REPO], check=True, timeout=1800)
    try:
        yield tag
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_docker_build_when_an_engine_is_available(docker_image):
    user = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", docker_image, "-u"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert user != "0"
    version = subprocess.run(["docker", "run", "--rm", docker_image, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("tracelet ")


def test_hadolint_when_installed():
    if not shutil.which("hadolint"):
        pytest.skip("hadolint is not installed")
    res = subprocess.run(["hadolint", "--failure-threshold", "warning", os.path.join(REPO, "Dockerfile")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# -- compose and Kubernetes ------------------------------------------------------------------
def test_compose_example_shares_runs_read_only_with_the_sidecar():
    yaml = yaml_or_skip()
    with open(os.path.join(DEPLOY, "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    side, train = services["tracelet"], services["train"]
    assert os.path.exists(os.path.join(DEPLOY, side["build"], "Dockerfile"))
    train_runs = next(v for v in train["volumes"] if v.split(":")[1] == "/runs")
    runs_volume = train_runs.split(":")[0]
    assert not train_runs.endswith(":ro"), "training writes the runs"
    assert f"{runs_volume}:/runs:ro" in side["volumes"], "the sidecar must mount the runs read-only"
    assert any(v.split(":")[1] == "/var/lib/tracelet" for v in side["volumes"]), "state on a volume"
    assert runs_volume in compose["volumes"]
    env = side["environment"]
    assert "WANDB_API_KEY" not in env
    secret = side["secrets"][0]
    assert env["WANDB_API_KEY_FILE"] == f"/run/secrets/{secret}"
    assert "file" in compose["secrets"][secret]
    grace = float(side["stop_grace_period"].rstrip("s"))
    assert float(env["TRACELET_DRAIN_TIMEOUT"]) < grace
    assert side["command"][:2] == ["watch", "/runs"]
    with open(os.path.join(DEPLOY, ".gitignore")) as f:
        assert "wandb_api_key" in f.read().split()


def test_kubernetes_example_is_a_pod_with_a_read_only_sidecar_and_a_secret_file():
    yaml = yaml_or_skip()
    with open(os.path.join(DEPLOY, "kubernetes.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    (pod,) = [d for d in docs if d["kind"] == "Pod"]
    spec = pod["spec"]
    containers = {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}
    side, train = containers["tracelet"], containers["train"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    runs = next(m for m in side["volumeMounts"] if m["mountPath"] == "/runs")
    assert runs["readOnly"] is True and "emptyDir" in volumes[runs["name"]]
    assert any(m["name"] == runs["name"] and not m.get("readOnly") for m in train["volumeMounts"])
    env = {e["name"]: e.get("value") for e in side["env"]}
    assert "WANDB_API_KEY" not in env
    key_mount = next(m for m in side["volumeMounts"] if "secret" in volumes[m["name"]])
    assert env["WANDB_API_KEY_FILE"].startswith(key_mount["mountPath"] + "/") and key_mount["readOnly"]
    assert volumes[key_mount["name"]]["secret"]["secretName"]
    assert float(env["TRACELET_DRAIN_TIMEOUT"]) < spec["terminationGracePeriodSeconds"]
    for probe in ("startupProbe", "livenessProbe"):
        assert side[probe]["exec"]["command"][:2] == ["tracelet", "health"]
    sc = side["securityContext"]
    ins = parse_dockerfile(os.path.join(REPO, "Dockerfile"))
    image_user = [a for w, a in ins if w == "USER"][-1].split(":")[0]
    assert sc["runAsNonRoot"] and str(sc["runAsUser"]) == image_user
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert side["args"][:2] == ["watch", "/runs"]
    assert any(m["mountPath"] == "/var/lib/tracelet" for m in side["volumeMounts"])


def test_statefulset_example_shards_one_bucket_by_pod_ordinal():
    """N replicas (N = `replicas`), K from the pod-index label, one state volume per replica."""
    yaml = yaml_or_skip()
    from tracelet_daemon.cli._common import parse_shard
    from tracelet_daemon.sources import is_url

    with open(os.path.join(DEPLOY, "statefulset.yaml")) as f:
        (sts,) = [d for d in yaml.safe_load_all(f) if d and d["kind"] == "StatefulSet"]
    n = sts["spec"]["replicas"]
    pod = sts["spec"]["template"]["spec"]
    (side,) = pod["containers"]
    args = side["args"]
    assert args[0] == "watch" and is_url(args[1])
    shard = args[args.index("--shard") + 1]
    env = {e["name"]: e for e in side["env"]}
    var = re.fullmatch(r"\$\((\w+)\)/(\d+)", shard)
    assert var and int(var.group(2)) == n, "--shard N must equal replicas"
    assert env[var.group(1)]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    for k in range(n):
        assert parse_shard(shard.replace(f"$({var.group(1)})", str(k))) == (k, n)
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    state = next(m for m in side["volumeMounts"] if m["mountPath"] == "/var/lib/tracelet")
    assert state["name"] in claims, "each replica needs its own state volume"
    assert "WANDB_API_KEY" not in env and float(env["TRACELET_DRAIN_TIMEOUT"]["value"]) < pod["terminationGracePeriodSeconds"]
    for probe in ("startupProbe", "livenessProbe"):
        assert side[probe]["exec"]["command"][:2] == ["tracelet", "health"]
    sc = side["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False


def test_example_training_script_writes_a_tensorboard_log(tmp_path):
    pytest.importorskip("tensorboardX")
    logdir = tmp_path / "runs" / "demo"
    subprocess.run([sys.executable, os.path.join(DEPLOY, "train.py"), "--logdir", str(logdir),
                    "--steps", "60", "--interval", "0"], check=True, timeout=60)
    (path,) = logdir.glob("*tfevents*")
    assert len(list(iter_records(str(path)))) > 60
    assert path.stat().st_mode & 0o004, "world-readable, so a sidecar user can read it"


# -- systemd -------------------------------------------------------------------------------------
def parse_unit(path: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in order; keys may repeat, as systemd allows."""
    out, section, pending = [], "", ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not pending and (not line.strip() or line.lstrip()[0] in "#;"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = pending + line, ""
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            out.append((section, key.strip(), value.strip()))
    return out


def unit_values(path: str, key: str) -> list[str]:
    return [v for _s, k, v in parse_unit(path) if k == key]


def unit_value(path: str, key: str) -> str:
    values = unit_values(path, key)
    assert values, f"{os.path.basename(path)} has no {key}="
    return values[-1]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m)?", value)
    assert m, value
    return float(m.group(1)) * {"ms": 0.001, None: 1, "s": 1, "min": 60, "m": 60}[m.group(2)]


def unit_env(path: str) -> dict[str, str]:
    env = {}
    for value in unit_values(path, "Environment"):
        for token in shlex.split(value):
            k, _, v = token.partition("=")
            env[k] = v
    return env


@pytest.mark.parametrize("unit", UNITS)
def test_unit_is_notify_type_sandboxed_and_gets_the_key_as_a_credential(unit):
    path = os.path.join(REPO, "systemd", unit)
    assert unit_value(path, "Type") == "notify"
    assert unit_value(path, "Restart") == "on-failure"
    assert unit_value(path, "DynamicUser") == "yes" or unit_value(path, "User") not in ("", "root")
    assert unit_value(path, "StateDirectory").startswith("tracelet")
    assert unit_value(path, "LoadCredential").startswith("wandb_api_key:")
    for key, want in (("ProtectSystem", "strict"), ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                      ("SystemCallFilter", "@system-service"), ("KillMode", "mixed")):
        assert unit_values(path, key)[0] == want, key
    assert unit_value(path, "ProtectHome") in ("yes", "read-only", "tmpfs")
    assert set(unit_value(path, "RestrictAddressFamilies").split()) <= {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert unit_value(path, "CapabilityBoundingSet") == ""
    env = unit_env(path)
    assert seconds(unit_value(path, "TimeoutStopSec")) > float(env["TRACELET_DRAIN_TIMEOUT"])
    assert seconds(unit_value(path, "WatchdogSec")) >= 10
    exec_start = shlex.split(unit_value(path, "ExecStart"))
    assert exec_start[1] == "watch"
    root = exec_start[2]
    read_only = unit_values(path, "BindReadOnlyPaths") + unit_values(path, "ReadOnlyPaths")
    expanded_root = env.get("TRACELET_ROOT", root) if root.startswith("${") else root
    assert any(p.lstrip("-") == expanded_root for p in read_only), "the runs root must be read-only"
    for _s, key, value in parse_unit(path):
        assert "WANDB_API_KEY=" not in value, f"{key}={value}: the key belongs in a credential"


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.skip("systemd-analyze is not installed (Debian package 'systemd')")
    return exe


def units_for_analysis(tmp_path) -> dict[str, str]:
    """The units with ExecStart= pointing at this machine's tracelet, plus a template instance."""
    exe = installed_tracelet()
    out = {}
    for unit in UNITS:
        with open(os.path.join(REPO, "systemd", unit)) as f:
            text = f.read().replace("/usr/local/bin/tracelet", exe)
        names = [unit] + (["tracelet@srv-runs.service"] if unit.endswith("@.service") else [])
        for name in names:
            (tmp_path / name).write_text(text)
            out[name] = str(tmp_path / name)
    return out


def assert_verified(exe: str, paths) -> None:
    res = subprocess.run([exe, "verify", *paths], capture_output=True, text=True, timeout=120)
    ours = [line for line in (res.stdout + res.stderr).splitlines() if "tracelet" in line]
    assert res.returncode == 0 and not ours, res.stdout + res.stderr


def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    exe = systemd_analyze()
    assert_verified(exe, units_for_analysis(tmp_path).values())


def exposure(exe: str, unit_path: str) -> float:
    """`systemd-analyze security`'s overall exposure of a unit file (0 safest, 10 worst)."""
    res = subprocess.run([exe, "security", "--offline=true", "--no-pager", unit_path],
                         capture_output=True, text=True, timeout=120)
    if res.returncode and "offline" in res.stderr and "unrecognized" in res.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    return float(m.group(1))


def test_systemd_analyze_security_exposure_is_at_most_2_5(tmp_path):
    exe = systemd_analyze()
    units = units_for_analysis(tmp_path)
    for name in ("tracelet.service", "tracelet@srv-runs.service"):
        score = exposure(exe, units[name])
        assert score <= 2.5, f"{name}: exposure {score}"


def escape_path(path: str) -> str:
    """`systemd-escape --path`."""
    def esc(i: int, ch: str) -> str:
        if ch.isalnum() or ch in ":_" or (ch == "." and i):
            return ch
        return "".join(f"\\x{b:02x}" for b in ch.encode())

    return "-".join("".join(esc(i, c) for i, c in enumerate(part)) for part in path.strip("/").split("/"))


@pytest.mark.slow
@pytest.mark.parametrize("unit", UNITS)
def test_unit_command_notifies_ready_watchdog_and_stopping_over_a_real_socket(unit, tmp_path):
    """ExecStart= with the unit's Environment=, specifiers, credential directory and notify
    socket, as systemd would start it; SIGTERM as `systemctl stop` sends it."""
    path = os.path.join(REPO, "systemd", unit)
    root = copy_examples(tmp_path / "srv-runs")
    instance = escape_path(root)
    state_base = tmp_path / "var-lib"
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "wandb_api_key").write_text("\n")  # the SetCredential= default: no key, offline

    def specifiers(text: str) -> str:
        return text.replace("%S", str(state_base)).replace("%i", instance).replace("%f", root)

    env = {k: specifiers(v) for k, v in unit_env(path).items()}
    if "TRACELET_ROOT" in env:
        env["TRACELET_ROOT"] = root
    os.makedirs(env["TRACELET_STATE_DIR"])  # StateDirectory=
    notify = NotifySocket(str(tmp_path / "notify"))
    env = clean_env(**env, NOTIFY_SOCKET=str(tmp_path / "notify"), CREDENTIALS_DIRECTORY=str(creds),
                    WATCHDOG_USEC=str(int(seconds(unit_value(path, "WatchdogSec")) * 1e6)))
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], specifiers(a))
            for a in shlex.split(unit_value(path, "ExecStart"))]
    argv[0] = installed_tracelet()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_until(lambda: any("WATCHDOG=1" in f for f in notify.fields()), what="a watchdog ping")
        first = notify.fields()[0]
        assert first[0] == "READY=1" and f"MAINPID={proc.pid}" in first
        assert any(f[-1].startswith("STATUS=") and "run(s)" in f[-1] for f in notify.fields())
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=seconds(unit_value(path, "TimeoutStopSec")))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        notify.close()
    assert proc.returncode == 0, out
    assert any(f[0] == "STOPPING=1" for f in notify.fields())
    assert "W&B API key not set" in out and "(offline)" in out  # the empty credential means offline
    assert os.path.isfile(os.path.join(env["TRACELET_STATE_DIR"], "status.json"))


# -- hardening: memory, tasks, read-only root, capabilities, metrics exposure (issue 11) --------
HARD_MEMORY = 2 << 30  # the one memory cap of every deployment: MemoryMax=, --memory, mem_limit, limits
IMAGE_WRITES = ("HOME", "TRACELET_STATE_DIR", "WANDB_CONFIG_DIR")  # + /tmp: what the daemon writes
DOCKER_RUN_SOURCES = ("README.md", "docs/deployment.md", "Dockerfile")
DOCKER_BOOLEAN_FLAGS = {"-d", "--detach", "--rm", "--read-only", "-it", "-i", "-t"}


def size_bytes(value) -> int:
    """'2g' (docker), '2G' (systemd), '2Gi' (Kubernetes), '512m', a plain number -> bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b?)", str(value).strip(), re.I)
    assert m, f"not a size: {value!r}"
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def documented_docker_run(path: str) -> list[str]:
    """The one `docker run` command shown in `path` (a page, the README or the Dockerfile's
    header comment), continuation lines joined and split as a shell would."""
    with open(path) as f:
        lines = [line.strip().lstrip("#").strip() for line in f]
    starts = [i for i, line in enumerate(lines) if line.startswith("docker run ")]
    assert len(starts) == 1, f"{path}: {len(starts)} docker run commands"
    command = ""
    for line in lines[starts[0]:]:
        command += line.rstrip("\\") + " "
        if not line.endswith("\\"):
            break
    return shlex.split(command)


def docker_flags(argv: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """`docker run` options as {flag: [values]}, and what follows them (image and command)."""
    flags: dict[str, list[str]] = {}
    args = argv[2:]
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if "=" in flag:
            flag, value = flag.split("=", 1)
        elif flag in DOCKER_BOOLEAN_FLAGS:
            value = ""
        else:
            value = args.pop(0)
        flags.setdefault(flag, []).append(value)
    return flags, args


def assert_writes_are_mounted(writable: list[str], where: str) -> None:
    """Every place the image's daemon writes (its state, HOME, W&B config, /tmp) is a writable
    mount in `where`, so a read-only root filesystem is enough."""
    env = dockerfile_env(parse_dockerfile(os.path.join(REPO, "Dockerfile")))
    for path in [env[var] for var in IMAGE_WRITES] + ["/tmp"]:
        assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), \
            f"{where}: {path} is not on a writable mount ({writable})"


def test_documented_docker_run_is_hardened_and_the_same_everywhere():
    runs = {src: documented_docker_run(os.path.join(REPO, src)) for src in DOCKER_RUN_SOURCES}
    assert len({tuple(argv) for argv in runs.values()}) == 1, f"the docker run commands differ: {runs}"
    flags, rest = docker_flags(runs["docs/deployment.md"])
    assert rest[:2] == ["tracelet", "watch"]
    assert "--read-only" in flags
    assert flags["--cap-drop"] == ["ALL"]
    assert any(o in ("no-new-privileges", "no-new-privileges:true") for o in flags["--security-opt"])
    assert size_bytes(flags["--memory"][0]) == HARD_MEMORY
    assert flags["--memory-swap"] == flags["--memory"], "no swap on top of the memory cap"
    assert 64 <= int(flags["--pids-limit"][0]) <= 4096
    tmpfs = [t.split(":")[0] for t in flags["--tmpfs"]]
    volumes = {v.split(":")[1]: v for v in flags["-v"]}
    assert volumes["/runs"].endswith(":ro")
    assert_writes_are_mounted([p for p, v in volumes.items() if not v.endswith(":ro")] + tmpfs, "docker run")


def test_compose_sidecar_is_hardened_like_the_docker_run():
    yaml = yaml_or_skip()
    with open(os.path.join(DEPLOY, "compose.yaml")) as f:
        side = yaml.safe_load(f)["services"]["tracelet"]
    assert side["read_only"] is True
    assert side["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in side["security_opt"]
    assert size_bytes(side["mem_limit"]) == HARD_MEMORY
    assert side["memswap_limit"] == side["mem_limit"], "no swap on top of the memory cap"
    assert 64 <= int(side["pids_limit"]) <= 4096
    tmpfs = [t.split(":")[0] for t in side["tmpfs"]]
    writable = [v.split(":")[1] for v in side["volumes"] if not v.endswith(":ro")]
    assert_writes_are_mounted(writable + tmpfs, "compose.yaml")
    assert all(str(p).startswith("127.0.0.1:") for p in side.get("ports", [])), \
        "the image serves metrics on 0.0.0.0: publish them on the host's loopback only"


def test_kubernetes_sidecar_is_hardened_like_the_docker_run():
    yaml = yaml_or_skip()
    with open(os.path.join(DEPLOY, "kubernetes.yaml")) as f:
        (pod,) = [d for d in yaml.safe_load_all(f) if d and d["kind"] == "Pod"]
    spec = pod["spec"]
    side = next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "tracelet")
    sc = side["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert size_bytes(side["resources"]["limits"]["memory"]) == HARD_MEMORY
    volumes = {v["name"]: v for v in spec["volumes"]}
    tmp = next(m for m in side["volumeMounts"] if m["mountPath"] == "/tmp")
    tmp_volume = volumes[tmp["name"]]["emptyDir"]
    if tmp_volume.get("medium") == "Memory":  # counts against the memory limit: bound it
        assert size_bytes(tmp_volume["sizeLimit"]) < HARD_MEMORY
    assert_writes_are_mounted([m["mountPath"] for m in side["volumeMounts"] if not m.get("readOnly")],
                              "kubernetes.yaml")


@pytest.mark.parametrize("unit", UNITS)
def test_unit_caps_memory_and_tasks_and_shows_only_processes_in_proc(unit):
    path = os.path.join(REPO, "systemd", unit)
    high, cap = size_bytes(unit_value(path, "MemoryHigh")), size_bytes(unit_value(path, "MemoryMax"))
    assert high < cap == HARD_MEMORY, "MemoryHigh= throttles and reclaims before MemoryMax= kills"
    assert 64 <= int(unit_value(path, "TasksMax")) <= 4096
    assert unit_value(path, "ProcSubset") == "pid" and unit_value(path, "ProtectProc") == "invisible"
    # the offline block is there for offline deployments, commented out: online needs W&B's servers
    with open(path) as f:
        text = f.read()
    for line in ("#IPAddressDeny=any", "#IPAddressAllow=localhost"):
        assert re.search(f"^{line}$", text, re.MULTILINE), f"{unit}: no commented {line[1:]}"
    assert not unit_values(path, "IPAddressDeny")


def test_the_offline_block_verifies_and_lowers_the_exposure(tmp_path):
    """Uncommented, as the docs tell offline deployments to do, the units still verify and score
    better in `systemd-analyze security`."""
    exe = systemd_analyze()
    units = units_for_analysis(tmp_path)
    (tmp_path / "offline").mkdir()
    for name in ("tracelet.service", "tracelet@srv-runs.service"):
        with open(units[name]) as f:
            text = f.read()
        enabled = re.sub(r"^#(IPAddress(?:Deny|Allow)=)", r"\1", text, flags=re.MULTILINE)
        assert enabled.count("\nIPAddress") == 2, name
        path = tmp_path / "offline" / name
        path.write_text(enabled)
        assert unit_value(str(path), "IPAddressDeny") == "any"
        assert_verified(exe, [str(path)])
        assert exposure(exe, str(path)) < exposure(exe, units[name]), name


def test_docs_say_how_deployments_are_hardened_and_how_to_restrict_metrics():
    def read(rel: str) -> str:
        with open(os.path.join(REPO, rel)) as f:
            return f.read()

    deployment, monitoring = read("docs/deployment.md"), read("docs/monitoring.md")
    unit = os.path.join(REPO, "systemd", "tracelet.service")
    for key in ("MemoryHigh", "MemoryMax", "TasksMax", "ProcSubset"):
        assert f"{key}={unit_value(unit, key)}" in deployment, key
    for text in ("IPAddressDeny=any", "IPAddressAllow=localhost", "--read-only", "--cap-drop=ALL",
                 "no-new-privileges", "readOnlyRootFilesystem", "allowPrivilegeEscalation", "drop: [ALL]",
                 "0.0.0.0", "TRACELET_METRICS_HOST=127.0.0.1", "127.0.0.1:9464:9464", "NetworkPolicy"):
        assert text in deployment, text
    for text in ("0.0.0.0", "TRACELET_METRICS_HOST=127.0.0.1", "127.0.0.1:9464:9464"):
        assert text in monitoring, text
    # the variable the docs name is the option's, and the image really sets 0.0.0.0
    import typer

    from tracelet_daemon.cli import app

    watch = typer.main.get_command(app).commands["watch"]
    (host,) = [p for p in watch.params if p.name == "metrics_host"]
    assert host.envvar == "TRACELET_METRICS_HOST" and host.default == "127.0.0.1"
    assert dockerfile_env(parse_dockerfile(os.path.join(REPO, "Dockerfile")))[host.envvar] == "0.0.0.0"


# A container's view for the image's command, without a Docker engine: a private mount namespace
# with the root filesystem read-only, a fresh tmpfs on /tmp, the state directory writable and the
# runs read-only (under a scratch tmpfs at $anchor, since the test's files live under /tmp). The
# package's source is bound read-only at $anchor/src: a checkout under /tmp (CI's clone may be
# one) would vanish under the fresh /tmp, where the image has its package in site-packages.
READ_ONLY_CONTAINER = r"""
set -e
anchor=$1 state=$2 runs=$3 src=$4
shift 4
mount -t tmpfs -o size=1m tmpfs "$anchor"
mkdir "$anchor/state" "$anchor/runs" "$anchor/src"
mount --bind "$state" "$anchor/state"
mount --bind "$runs" "$anchor/runs"
mount -o remount,bind,ro "$anchor/runs"
mount --bind "$src" "$anchor/src"
mount -o remount,bind,ro "$anchor/src"
mount -o remount,bind,ro "$anchor"
mount -t tmpfs -o rw,nosuid,nodev,noexec,size=512m tmpfs /tmp
mount -o remount,bind,ro /
exec "$@"
"""


def mount_namespace() -> list[str]:
    unshare = shutil.which("unshare")
    if not unshare or not shutil.which("setpriv"):
        pytest.skip("needs unshare and setpriv (util-linux)")
    cmd = [unshare, "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        cmd[1:1] = ["--user", "--map-root-user"]
    probe = subprocess.run([*cmd, "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr.strip()}")
    return cmd


def mount_options(pid: int, target: str) -> set[str]:
    """Options of the topmost mount on `target` as process `pid` sees it."""
    options: set[str] = set()
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == target:
                options = set(fields[5].split(","))
    return options


@pytest.mark.slow
def test_the_image_command_needs_only_its_state_volume_and_tmp_writable(tmp_path):
    """`docker run --read-only --tmpfs /tmp --cap-drop=ALL --security-opt no-new-privileges`,
    emulated: the image's command replays the examples, passes its health check and stops with
    exit 0, with nothing writable but the state directory and /tmp, no capabilities and
    no_new_privs. (A real `docker run` needs TRACELET_TEST_DOCKER=1 and an engine; see below.)"""
    prefix = mount_namespace()
    anchor = next((d for d in ("/srv", "/media", "/mnt") if os.path.isdir(d)
                   and not sys.prefix.startswith(d) and not str(tmp_path).startswith(d)), None)
    if anchor is None:
        pytest.skip("no directory to hold the container's mounts")
    state, runs = tmp_path / "state", copy_examples(tmp_path / "runs")
    state.mkdir(mode=0o700)
    ins = parse_dockerfile(os.path.join(REPO, "Dockerfile"))
    mapped = {k: v.replace("/var/lib/tracelet", f"{anchor}/state") for k, v in dockerfile_env(ins).items()}
    env = clean_env(**mapped, PYTHONPATH=f"{anchor}/src")
    env.pop("TMPDIR", None)
    cmd = [f"{anchor}/runs" if a == "/runs" else a for a in json.loads(next(a for w, a in ins if w == "CMD"))]
    drop = ["setpriv", "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all"]
    argv = [*prefix, "bash", "-c", READ_ONLY_CONTAINER, "container", anchor, str(state), runs, REPO,
            *drop, installed_tracelet(), *cmd, "--metrics-port", "0"]
    log_path = tmp_path / "container.log"
    with daemon_process(argv, log_path, env=env) as proc:  # unshare, bash and setpriv exec into tracelet
        def healthy() -> bool:
            assert proc.poll() is None, log_path.read_text()
            res = subprocess.run([installed_tracelet(), "health", "--state-dir", str(state)],
                                 env=clean_env(), capture_output=True, timeout=60)
            return res.returncode == 0

        wait_until(healthy, timeout=180, what="the health check to pass")
        wait_until(lambda: read_json(str(state / "status.json"))["totals"]["rows"] == 400, timeout=180,
                   what="the example runs to be replayed")
        with open(f"/proc/{proc.pid}/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"].strip() == "1"
        assert "ro" in mount_options(proc.pid, "/") and "rw" in mount_options(proc.pid, "/tmp")
        rc = stop_like_docker(proc, 120)
    out = log_path.read_text()
    assert rc == 0, out
    for problem in ("Read-only file system", "Permission denied", "Traceback"):
        assert problem not in out, out
    offline = [d for d in os.listdir(state / "wandb") if d.startswith("offline-run-")]
    assert len(offline) == 2, "W&B ran offline into the state volume"


def test_the_documented_docker_run_works_when_an_engine_is_available(docker_image, tmp_path):
    """The hardened command from the docs, with the examples as /runs and no key (offline)."""
    flags, _rest = docker_flags(documented_docker_run(os.path.join(REPO, "docs", "deployment.md")))
    name, volume = f"tracelet-test-{uuid.uuid4().hex[:8]}", f"tracelet-test-state-{uuid.uuid4().hex[:8]}"
    runs = copy_examples(tmp_path / "runs")
    os.chmod(runs, 0o755)
    hardening = []
    for flag in ("--read-only", "--tmpfs", "--cap-drop", "--security-opt", "--memory", "--memory-swap",
                 "--pids-limit"):
        hardening += [flag] if flags[flag] == [""] else [f"{flag}={v}" for v in flags[flag]]
    run = ["docker", "run", "-d", "--name", name, *hardening, "-v", f"{runs}:/runs:ro",
           "-v", f"{volume}:/var/lib/tracelet", docker_image, "watch", "/runs"]
    subprocess.run(run, check=True, capture_output=True, timeout=120)
    try:
        wait_until(lambda: subprocess.run(["docker", "exec", name, "tracelet", "health"],
                                          capture_output=True).returncode == 0, timeout=180, what="healthy")
        subprocess.run(["docker", "stop", name], check=True, capture_output=True, timeout=60)
        code = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name],
                              capture_output=True, text=True, check=True).stdout.strip()
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        assert code == "0", logs.stdout + logs.stderr
        assert "Read-only file system" not in logs.stdout + logs.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True)


# -- sd_notify on its own --------------------------------------------------------------------
def test_notifier_is_a_noop_outside_systemd():
    n = Notifier(env={})
    assert not n.enabled and not n.ready() and not n.watchdog() and not n.stopping()


def test_notifier_speaks_the_datagram_protocol_on_path_and_abstract_sockets(tmp_path):
    for address, env_value in ((str(tmp_path / "n.sock"), str(tmp_path / "n.sock")),
                               (b"\0tracelet-test-" + uuid.uuid4().hex.encode(), None)):
        if env_value is None:
            env_value = "@" + address[1:].decode()
        sock = NotifySocket(address)
        try:
            n = Notifier(env={"NOTIFY_SOCKET": env_value})
            assert n.ready("watching\n/srv/runs") and n.status("2 runs") and n.stopping()
            wait_until(lambda s=sock: len(s.messages) == 3, timeout=10, what="three datagrams")
            ready, status, stopping = sock.fields()
            assert ready == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=watching /srv/runs"]
            assert status == ["STATUS=2 runs"] and stopping == ["STOPPING=1"]
        finally:
            sock.close()


def test_watchdog_is_armed_only_for_this_pid_and_paced(tmp_path):
    sock = NotifySocket(str(tmp_path / "w.sock"))
    try:
        env = {"NOTIFY_SOCKET": str(tmp_path / "w.sock"), "WATCHDOG_USEC": "4000000"}
        assert Notifier(env=dict(env, WATCHDOG_PID="1"), pid=2).watchdog_interval is None
        n = Notifier(env=dict(env, WATCHDOG_PID="2"), pid=2)
        assert n.watchdog_interval == 4.0
        assert n.watchdog(now=100.0)
        assert not n.watchdog(now=100.5)  # within a quarter interval: no second ping
        assert n.heartbeat("x", now=100.8)  # STATUS only ...
        assert n.heartbeat("y", now=101.1)  # ... and, a quarter interval on, WATCHDOG=1 again
        wait_until(lambda: len(sock.messages) == 3, timeout=10, what="three datagrams")
        assert sock.fields() == [["WATCHDOG=1"], ["STATUS=x"], ["WATCHDOG=1", "STATUS=y"]]
    finally:
        sock.close()
