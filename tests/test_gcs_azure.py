"""`tracelet upload gs://...` and `az://...` against real protocol servers on 127.0.0.1:
gcp-storage-emulator (GCS JSON API, through gcsfs) and Azurite (Azure Blob, through adlfs), each
started and stopped here by pid (tests/gcs_server.py, tests/azurite_server.py).

No writer here can write to gs:// or az:// without TensorFlow, so the logs are written with
tensorboardX into a local directory and their bytes uploaded as objects, grown in steps (a prefix
cut inside a record, then the longer object under the same name: a new GCS generation, a new
Azure ETag) the way writers "append" in an object store. The local copy is what W&B is compared
with (tbparse, tests/helpers.py), value by value.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys

import pytest
from azurite_server import ACCOUNT_KEY, Azurite, azurite_available
from gcs_server import GcsEmulator, gcs_emulator_available
from helpers import assert_exactly_once, history_of, run_id_for, scalar_points, tb_scalar_points, write_run
from watch_helpers import acked_offsets, wait_until

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT_DIR = os.path.dirname(HERE)
TIMEOUT = 120.0  # one `tracelet upload`: a few seconds; a hang still fails


# -- the two stores, behind one small interface ------------------------------------------------------
class Store:
    scheme = ""

    def __init__(self, server, env: dict) -> None:
        self.server, self.env = server, env

    def make_bucket(self, name: str) -> str:
        raise NotImplementedError

    def options(self) -> list[str]:
        raise NotImplementedError

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.server.put_object(bucket, key, body)

    def sizes(self, bucket: str, prefix: str) -> dict[str, int]:
        """{url: size} of every event object under `prefix`."""
        return {f"{self.scheme}://{bucket}/{o['Key']}": o["Size"]
                for o in self.server.list_objects(bucket, prefix) if "tfevents" in o["Key"]}


class Gcs(Store):
    scheme = "gs"

    def make_bucket(self, name: str) -> str:
        return self.server.make_bucket(name)

    def options(self) -> list[str]:
        # the endpoint comes from STORAGE_EMULATOR_HOST in self.env
        return self.server.storage_options()


class Azure(Store):
    scheme = "az"

    def make_bucket(self, name: str) -> str:
        return self.server.make_container(name)

    def options(self) -> list[str]:
        return ["-o", f"connection_string={self.server.connection_string}"]


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory):
    why = gcs_emulator_available()
    if why:
        pytest.skip(why)
    server = GcsEmulator(str(tmp_path_factory.mktemp("gcs"))).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    why = azurite_available()
    if why:
        pytest.skip(why)
    server = Azurite(str(tmp_path_factory.mktemp("azurite"))).start()
    yield server
    server.close()


@pytest.fixture(params=["gcs", "azure"])
def store(request, wandb_env) -> Store:
    if request.param == "gcs":
        server = request.getfixturevalue("gcs_server")
        return Gcs(server, server.subprocess_env(dict(os.environ)))
    server = request.getfixturevalue("azurite")
    return Azure(server, server.subprocess_env(dict(os.environ)))


@pytest.fixture
def bucket(store, request) -> str:
    # GCS bucket and Azure container names: 3-63 lowercase letters, digits and dashes
    name = "t" + re.sub(r"[^a-z0-9]", "", request.node.name.lower())[-40:] + str(os.getpid())
    return store.make_bucket(name)


# -- helpers --------------------------------------------------------------------------------------------
def run_upload(store: Store, root: str, state_dir, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tracelet_daemon", "upload", root, "--state-dir", str(state_dir), "--no-progress",
           *store.options(), *extra]
    return subprocess.run(cmd, env=store.env, cwd=ROOT_DIR, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)


def summary(done: subprocess.CompletedProcess) -> tuple[int, int]:
    """(rows, bytes read) from upload's closing line."""
    m = re.search(r"(\d+) row\(s\) from \d+ run\(s\), (\d+) bytes read", done.stderr)
    assert m, done.stderr[-3000:]
    return int(m.group(1)), int(m.group(2))


class Watch:
    """`tracelet watch` in its own session, stopped with SIGTERM (by pid)."""

    def __init__(self, store: Store, root: str, state_dir) -> None:
        self.state_dir = str(state_dir)
        cmd = [sys.executable, "-m", "tracelet_daemon", "watch", root, "--state-dir", self.state_dir,
               "--rescan-interval", "0.5", *store.options()]
        self.proc = subprocess.Popen(cmd, env=store.env, cwd=ROOT_DIR, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)

    def status(self) -> dict:
        try:
            with open(os.path.join(self.state_dir, "status.json")) as f:
                snap = json.load(f)
        except (OSError, ValueError):
            return {}
        return snap if snap.get("pid") == self.proc.pid else {}

    def stop(self) -> str:
        """SIGTERM, wait (SIGKILL the group if it hangs); its stderr. The caller checks the code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            _out, err = self.proc.communicate(timeout=30)
        return err


def write_local(local_root, runs: dict[str, int]) -> dict[str, bytes]:
    """tensorboardX logs (scalars, histograms, images, an eval/ subdirectory) for each run in
    `runs` ({name: steps}); returns {key relative to the root: bytes}."""
    from tensorboardX import SummaryWriter

    for i, (run, steps) in enumerate(runs.items()):
        write_run(SummaryWriter, local_root / run, steps=steps, hist_every=40, image_every=60, eval_every=10, seed=i)
    out = {}
    for dirpath, _dirs, files in os.walk(local_root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, local_root).replace(os.sep, "/")] = f.read()
    assert out and all("tfevents" in k for k in out)
    return out


def record_end_before(body: bytes, n: int) -> int:
    """Where the last complete TFRecord (u64 length, u32 crc, data, u32 crc) within body[:n] ends."""
    pos = 0
    while pos + 12 <= n:
        end = pos + 12 + int.from_bytes(body[pos:pos + 8], "little") + 4
        if end > n:
            break
        pos = end
    return pos


def upload_objects(store: Store, bucket: str, prefix: str, files: dict[str, bytes], cut: float = 1.0) -> None:
    """Put each file under `prefix`, only its first `cut` fraction (+3 bytes: inside a record)."""
    for rel, body in files.items():
        n = len(body) if cut >= 1.0 else int(len(body) * cut) + 3
        store.put(bucket, f"{prefix}/{rel}", body[:n])


def files_holding(needle: str, *dirs) -> list[str]:
    found = []
    for top in dirs:
        for dirpath, _dirs, files in os.walk(str(top)):
            for name in files:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    if needle.encode() in f.read():
                        found.append(os.path.relpath(path, str(top)))
    return found


def no_key_anywhere(dirs: list, *texts: str) -> None:
    """The Azure account key given with -o (public for Azurite, a secret elsewhere) is never
    printed, nor written into the state directory or W&B's local files (which `wandb sync` uploads);
    tracelet.lock is checked on its own (test_storage_option_values_stay_out_of_the_lock_file)."""
    for text in texts:
        assert ACCOUNT_KEY not in text
    assert [f for f in files_holding(ACCOUNT_KEY, *dirs) if os.path.basename(f) != "tracelet.lock"] == []


# -- tests ----------------------------------------------------------------------------------------------
def test_upload_lands_every_value_once(store, bucket, tmp_path, wandb_env):
    """Two runs, each with an eval/ subdirectory, under a two-level prefix: every scalar,
    histogram and image once; a rerun reads and sends nothing."""
    local = tmp_path / "local"
    files = write_local(local, {"a": 120, "b": 80})
    upload_objects(store, bucket, "logs/runs", files)
    root = f"{store.scheme}://{bucket}/logs/runs"
    state = tmp_path / "state"
    done = run_upload(store, root, state)
    assert done.returncode == 0, done.stderr[-3000:]
    for run in ("a", "b"):
        assert assert_exactly_once(local, wandb_env["WANDB_DIR"], run, run_id=run_id_for(root, run)), run
    rows = history_of(wandb_env["WANDB_DIR"], run_id_for(root, "a"))
    assert any("eval/loss" in r for r in rows)
    sizes = store.sizes(bucket, "logs/runs/")
    assert acked_offsets(state) == sizes and len(sizes) == 4
    assert summary(done)[1] == sum(sizes.values())
    before = {r: history_of(wandb_env["WANDB_DIR"], run_id_for(root, r)) for r in ("a", "b")}
    again = run_upload(store, root, state)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary(again) == (0, 0)
    assert {r: history_of(wandb_env["WANDB_DIR"], run_id_for(root, r)) for r in ("a", "b")} == before
    if store.scheme == "az":
        no_key_anywhere([state, wandb_env["WANDB_DIR"], wandb_env["WANDB_DATA_DIR"]], done.stderr, again.stderr,
                        done.stdout)


def test_grown_object_is_read_on_from_the_acked_offset(store, bucket, tmp_path, wandb_env):
    """Each object is uploaded cut inside a record, then re-uploaded longer twice (new generation /
    ETag, same leading bytes): each rerun reads only what lies past the acked offset, and W&B ends
    with every value exactly once."""
    local = tmp_path / "local"
    files = write_local(local, {"grow": 200})
    root = f"{store.scheme}://{bucket}/runs"
    state = tmp_path / "state"
    total = sum(len(b) for b in files.values())
    done_bytes = 0
    previous: dict[str, int] = {}
    for cut in (0.35, 0.7, 1.0):
        upload_objects(store, bucket, "runs", files, cut)
        done = run_upload(store, root, state)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "from the start" not in done.stderr and "shorter" not in done.stderr, done.stderr[-3000:]
        sizes = store.sizes(bucket, "runs/")
        now = acked_offsets(state)
        assert set(now) == set(sizes)
        for rel, body in files.items():
            url = f"{root}/{rel}"
            # a cut object: acked to the end of its last complete record (the cut one is pending)
            want = len(body) if cut >= 1.0 else record_end_before(body, sizes[url])
            assert sizes[url] == (len(body) if cut >= 1.0 else int(len(body) * cut) + 3)
            assert previous.get(url, 0) <= now[url] == want, (url, now[url], want, sizes[url])
        _rows, read = summary(done)
        # bytes read = what lies past the acked offsets: nothing is read twice
        assert read == sum(now.values()) - sum(previous.values()), (read, now, previous)
        done_bytes += read
        previous = now
        # W&B so far holds no value twice (checked in full below, against the whole local log)
        got = scalar_points(history_of(wandb_env["WANDB_DIR"], run_id_for(root, "grow")))
        assert max(got.values()) == 1
        assert not got - tb_scalar_points(local / "grow")
    assert done_bytes == total
    assert assert_exactly_once(local, wandb_env["WANDB_DIR"], "grow", run_id=run_id_for(root, "grow"))


def test_watch_reads_on_as_objects_grow(store, bucket, tmp_path, wandb_env):
    """watch follows objects that are re-uploaded longer while it runs: it reads the complete
    records of each cut object (the cut one stays pending), then on from there once the object
    is whole again; W&B ends with every value once."""
    local = tmp_path / "local"
    files = write_local(local, {"live": 150, "other": 60})
    root = f"{store.scheme}://{bucket}/runs"
    upload_objects(store, bucket, "runs", files, 0.5)  # before watch starts: see test_an_empty_root_...
    want = {f"{root}/{rel}": record_end_before(body, int(len(body) * 0.5) + 3) for rel, body in files.items()}
    state = tmp_path / "state"
    watch = Watch(store, root, state)
    try:
        def read_to_the_cut() -> bool:
            seen = {f["path"]: f for r in watch.status().get("runs", []) for f in r["files"]}
            return set(seen) == set(want) and all(seen[u]["read"] == n and seen[u]["pending_tail"]
                                                  for u, n in want.items())
        wait_until(read_to_the_cut, timeout=60, what="the complete records of the cut objects", proc=watch.proc)
        upload_objects(store, bucket, "runs", files)  # the same objects, whole: new generation / ETag
        sizes = store.sizes(bucket, "runs/")
        wait_until(lambda: acked_offsets(state) == sizes, timeout=60, what="acked to the end", proc=watch.proc)
        snap = watch.status()
    finally:
        err = watch.stop()
    assert watch.proc.returncode == 0, err[-3000:]
    assert "from the start" not in err and "shorter" not in err, err[-3000:]
    assert snap["source"]["requests_list"] > 0 and snap["source"]["requests_read"] > 0
    assert snap["totals"]["bytes_read"] == sum(sizes.values())  # nothing read twice
    for run in ("live", "other"):
        assert assert_exactly_once(local, wandb_env["WANDB_DIR"], run, run_id=run_id_for(root, run)), run


def test_an_empty_root_is_not_an_outage(store, bucket, caplog):
    from tracelet_daemon.sources.objectstore import ObjectStoreSource

    if store.scheme == "gs":
        from gcsfs.core import GCSFileSystem  # the plain class: no gRPC lookup (tests/gcs_server.py)

        fs = GCSFileSystem(endpoint_url=store.server.endpoint, token="anon", project="p",
                           skip_instance_cache=True, use_listings_cache=False)
    else:
        from adlfs import AzureBlobFileSystem

        fs = AzureBlobFileSystem(connection_string=store.server.connection_string, skip_instance_cache=True,
                                 use_listings_cache=False)
    source = ObjectStoreSource(f"{store.scheme}://{bucket}/runs", fs)
    try:
        with caplog.at_level(logging.WARNING, logger="tracelet.source"):
            assert source.scan() == []
        assert source.counters()["unreachable_seconds"] == 0.0
        assert "cannot list" not in caplog.text
    finally:
        source.close()


def test_missing_bucket_is_a_one_line_error(store, tmp_path):
    done = run_upload(store, f"{store.scheme}://no-such-bucket-here/runs", tmp_path / "state")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "does not exist" in lines[0], done.stderr
    assert ACCOUNT_KEY not in done.stderr


def test_azure_abfs_url_and_connection_string_from_the_environment(azurite, tmp_path, wandb_env):
    """abfs:// (adlfs's other protocol name) works as a root, with the account from
    AZURE_STORAGE_CONNECTION_STRING (read by adlfs) instead of -o."""
    store = Azure(azurite, azurite.subprocess_env(dict(os.environ),
                                                 AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string))
    store.options = list  # type: ignore[method-assign]
    container = azurite.make_container(f"abfs{os.getpid()}")
    local = tmp_path / "local"
    files = write_local(local, {"r": 60})
    upload_objects(store, container, "runs", files)
    root = f"abfs://{container}/runs"
    state = tmp_path / "state"
    done = run_upload(store, root, state)
    assert done.returncode == 0, done.stderr[-3000:]
    assert assert_exactly_once(local, wandb_env["WANDB_DIR"], "r", run_id=run_id_for(root, "r"))
    assert set(acked_offsets(state)) == {u.replace("az://", "abfs://", 1) for u in store.sizes(container, "runs/")}


def test_storage_option_values_stay_out_of_the_lock_file(azurite, tmp_path):
    store = Azure(azurite, azurite.subprocess_env(dict(os.environ)))
    container = azurite.make_container(f"lock{os.getpid()}")
    state = tmp_path / "state"
    done = run_upload(store, f"az://{container}/empty", state)  # nothing under it yet: exits at once
    assert done.returncode == 0, done.stderr[-3000:]
    assert ACCOUNT_KEY not in done.stderr
    assert files_holding(ACCOUNT_KEY, state) == []


def test_gcs_emulator_endpoint_gets_the_plain_http_file_system():
    pytest.importorskip("gcsfs", reason="gcsfs is not installed (pip install 'tracelet[gcs]')")
    code = ("from tracelet_daemon.sources.objectstore import open_filesystem\n"
            "fs, _ = open_filesystem('gs://b/runs', {'token': 'anon', 'project': 'p'})\n"
            "print(type(fs).__name__)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GCSFS_", "STORAGE_EMULATOR"))}
    env["STORAGE_EMULATOR_HOST"] = "http://127.0.0.1:9"  # never contacted: only the class is looked at
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT_DIR, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "GCSFileSystem", out.stdout
