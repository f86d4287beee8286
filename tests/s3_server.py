"""A real S3 endpoint for the tests: moto's standalone server (`moto[server]`) in a subprocess.

Modelled on tests/mlflow_server.py: the server runs on 127.0.0.1 on a free port, in its own process
group (start_new_session), is started and stopped by pid, is waited for until it answers, and logs
to a file. Nothing is patched in-process (no `mock_aws`): every client - the writers under test,
tracelet, and the read-back helpers here - talks HTTP to the server.

Two ways to make the store go away for a while:
- `stop()` + `start()` (or `restart()`): the process dies, so the port refuses connections at once
  (ECONNREFUSED); moto keeps everything in memory, so a restart comes back EMPTY unless
  `restart(keep_data=True)`, which copies the objects out before and back in after (new
  LastModified, same bytes and so the same ETag for single-part objects).
- `freeze()` / `thaw()` (SIGSTOP / SIGCONT of the group): the store keeps its contents; the kernel
  still completes TCP handshakes into the listen backlog, so a client CONNECTS fine and then hangs
  until its read timeout (connect_timeout does not help); requests queued while frozen are served
  after `thaw()` - including requests whose client has already given up (a timed-out PUT may still
  land after the thaw, possibly after a newer PUT of the same key).

Environment a client needs (`MotoServer.env()`), checked against the sources in site-packages:
- tensorboardX (tensorboardX/record_writer.py, S3RecordWriter.flush) calls
  ``boto3.client('s3', endpoint_url=os.environ.get('S3_ENDPOINT'))`` at EVERY flush, and TensorBoard's
  stub gfile (tensorboard/compat/tensorflow_stub/io/gfile.py, S3FileSystem.__init__) reads
  ``os.environ.get("S3_ENDPOINT")`` ONCE, when the module is imported (the filesystem is registered
  at import), and passes it as ``boto3.client("s3", endpoint_url=...)``. Both hand it to boto3 as
  endpoint_url, so S3_ENDPOINT must be a full URL WITH scheme ("http://127.0.0.1:PORT"; a bare
  "127.0.0.1:PORT" is rejected by botocore: "Invalid endpoint"). When S3_ENDPOINT is unset they pass
  endpoint_url=None and botocore falls back to AWS_ENDPOINT_URL (botocore >= 1.31), which is also
  what boto3/s3fs/aiobotocore clients without an explicit endpoint use.
- S3_USE_HTTPS / S3_VERIFY_SSL / S3_REGION are read only by TensorFlow's C++ S3 filesystem (and
  tensorflow-io); neither writer installed here reads them. They are set anyway (harmless) so a
  real-TensorFlow writer would work with the same env.
- Credentials/region are the usual AWS_* variables (moto accepts any credentials). AWS_PROFILE,
  AWS_SESSION_TOKEN and the config/credentials files of the machine are kept out (`subprocess_env`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from server_process import ServerProcess

READY_TIMEOUT = float(os.environ.get("TRACELET_MOTO_READY_TIMEOUT", "60"))  # ~1 s idle, more on busy cores
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"

# variables from the machine that would change which credentials/config/endpoint a client uses
_SCRUB = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
          "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE", "AWS_USE_FIPS_ENDPOINT",
          "AWS_USE_DUALSTACK_ENDPOINT", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "S3_ENDPOINT",
          "FSSPEC_S3", "FSSPEC_S3_ENDPOINT_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def moto_available() -> bool:
    """moto with its server extra (Flask, flask-cors, werkzeug) and boto3 are importable."""
    try:
        import boto3  # noqa: F401
        import flask  # noqa: F401
        import flask_cors  # noqa: F401
        import moto.server  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken
        return False
    return True


def boto_config(timeout: float = 5, attempts: int = 2):
    """A botocore Config for test-side clients: give up on a dead or frozen server quickly.

    A frozen server accepts the TCP connection (kernel backlog), so it is read_timeout that fires;
    a killed one refuses at once (EndpointConnectionError, retried `attempts` - 1 times)."""
    from botocore.config import Config

    return Config(connect_timeout=timeout, read_timeout=timeout,
                  retries={"mode": "standard", "total_max_attempts": attempts},
                  s3={"addressing_style": "path"})


class MotoServer(ServerProcess):
    """`python -m moto.server` on 127.0.0.1:`port`, in its own process group."""

    NAME = "moto"
    LOG = "moto.log"
    SCRUB = _SCRUB
    READY_TIMEOUT = READY_TIMEOUT

    def __init__(self, directory: str | None = None, port: int | None = None) -> None:
        super().__init__(directory, port)
        self.frozen = False
        self._thaw_timer: threading.Timer | None = None

    # -- addresses and client settings ---------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def env(self) -> dict[str, str]:
        """What a client process needs to reach this server (see the module docstring)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            # botocore's own: boto3, s3fs/aiobotocore, and the writers when S3_ENDPOINT is unset
            "AWS_ENDPOINT_URL": self.endpoint,
            "S3_ENDPOINT": self.endpoint,  # tensorboardX and tensorboard's stub gfile; WITH scheme
            "S3_USE_HTTPS": "0",  # TensorFlow's C++ S3 filesystem only
            "S3_VERIFY_SSL": "0",  # TensorFlow's C++ S3 filesystem only
            "S3_REGION": REGION,  # TensorFlow's C++ S3 filesystem only
            "AWS_EC2_METADATA_DISABLED": "true",  # never wait on the instance-metadata endpoint
            "AWS_CONFIG_FILE": os.path.join(self.directory, "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(self.directory, "no-aws-credentials"),
        }

    def client(self, timeout: float = 5, attempts: int = 2):
        """A boto3 S3 client for this server with short timeouts (see boto_config)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=boto_config(timeout, attempts))

    # -- process control -----------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def start(self) -> MotoServer:
        self.frozen = False
        return super().start()

    def healthy(self, timeout: float = 2) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=timeout) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process group by pid, SIGKILL it if it lingers, reap it."""
        self._cancel_thaw_timer()
        if self.proc is None:
            return
        if self.frozen:  # a stopped process keeps SIGTERM pending until it runs again
            self._signal(signal.SIGCONT)
            self.frozen = False
        super().stop(timeout)
        deadline = time.monotonic() + 10
        while self.healthy(timeout=0.5) and time.monotonic() < deadline:  # nothing answers on the port
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the group at once (a crash, no shutdown)."""
        self._cancel_thaw_timer()
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None
        self.frozen = False

    def restart(self, keep_data: bool = False, down_for: float = 0.0) -> MotoServer:
        """Stop and start again on the SAME port. moto keeps its store in memory, so the new server
        is empty unless keep_data (objects copied out before and back after; LastModified changes)."""
        snapshot = self.snapshot() if keep_data else None
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()
        if snapshot is not None:
            self.restore(snapshot)
        return self

    def freeze(self, seconds: float | None = None) -> None:
        """SIGSTOP the group: the store keeps its contents but nothing answers (connections hang).
        With `seconds`, a timer thaws it again (for code that blocks on the server meanwhile)."""
        if self.proc is None:
            raise RuntimeError("moto server is not running")
        self._cancel_thaw_timer()
        self._signal(signal.SIGSTOP)
        self.frozen = True
        if seconds is not None:
            self._thaw_timer = threading.Timer(seconds, self.thaw)
            self._thaw_timer.daemon = True
            self._thaw_timer.start()

    def thaw(self) -> None:
        """SIGCONT the group."""
        if self._thaw_timer is not None and self._thaw_timer is not threading.current_thread():
            self._thaw_timer.cancel()
        self._thaw_timer = None
        self._signal(signal.SIGCONT)
        self.frozen = False

    @contextlib.contextmanager
    def frozen_for(self) -> Iterator[MotoServer]:
        """`with server.frozen_for(): ...` - frozen inside the block, thawed after (even on error)."""
        self.freeze()
        try:
            yield self
        finally:
            self.thaw()

    def _cancel_thaw_timer(self) -> None:
        if self._thaw_timer is not None:
            self._thaw_timer.cancel()
            self._thaw_timer = None

    def reset(self) -> None:
        """Empty the whole store (POST /moto-api/reset), keeping the process."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200, resp.status

    # -- store helpers (boto3 against the endpoint) --------------------------------------------------
    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)  # us-east-1: no LocationConstraint
        return name

    def list_objects(self, bucket: str, prefix: str = "") -> list[dict]:
        """Every object under `prefix`: dicts with Key, Size, ETag (quotes stripped), LastModified."""
        out = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out.append({"Key": o["Key"], "Size": o["Size"], "ETag": o["ETag"].strip('"'),
                            "LastModified": o["LastModified"]})
        return out

    def get_object(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def head_object(self, bucket: str, key: str) -> dict:
        return self.client().head_object(Bucket=bucket, Key=key)

    def put_object(self, bucket: str, key: str, body: bytes) -> dict:
        return self.client().put_object(Bucket=bucket, Key=key, Body=body)

    def download_tree(self, bucket: str, prefix: str, local_dir: str) -> list[str]:
        """Copy every object under the "directory" `prefix` (a trailing "/" is implied) to
        `local_dir`/<key relative to prefix>; returns the local paths of the files. Zero-byte
        "directory" markers (keys ending in "/", which tensorboard's gfile makedirs puts) become
        directories."""
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        client = self.client()
        paths = []
        for obj in self.list_objects(bucket, prefix):
            rel = obj["Key"][len(prefix):]
            dst = os.path.join(local_dir, *[p for p in rel.split("/") if p])
            if obj["Key"].endswith("/"):
                os.makedirs(dst, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            with open(dst, "wb") as f:
                f.write(body)
            paths.append(dst)
        return paths

    def snapshot(self) -> dict[tuple[str, str], bytes]:
        """Every object of every bucket: {(bucket, key): body}."""
        client = self.client()
        out: dict[tuple[str, str], bytes] = {}
        for b in client.list_buckets().get("Buckets", []):
            out[(b["Name"], "")] = b""  # the bucket itself, even when empty
            for obj in self.list_objects(b["Name"]):
                body = client.get_object(Bucket=b["Name"], Key=obj["Key"])["Body"].read()
                out[(b["Name"], obj["Key"])] = body
        return out

    def restore(self, snapshot: dict[tuple[str, str], bytes]) -> None:
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket, key in snapshot:
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)
                existing.add(bucket)
        for (bucket, key), body in snapshot.items():
            if key:
                client.put_object(Bucket=bucket, Key=key, Body=body)


@contextlib.contextmanager
def running_moto(directory: str | None = None, port: int | None = None) -> Iterator[MotoServer]:
    """A started MotoServer, stopped (by pid, whole group) on exit."""
    server = MotoServer(directory, port)
    server.start()
    try:
        yield server
    finally:
        server.close()
