"""A real GCS JSON-API endpoint for the tests: `gcp-storage-emulator` (PyPI, pure Python) in a
subprocess, like tests/s3_server.py: 127.0.0.1, a free port, its own process group, started and
stopped by pid, waited for until it answers, logging to a file, in-memory storage (`--in-memory`,
cwd and STORAGE_BASE in a scratch directory so nothing lands elsewhere).

The test side talks to it with plain HTTP (urllib, the JSON API), never through gcsfs: what the
store holds is read back independently of the library under test.

What a gcsfs client (tracelet) needs (`GcsEmulator.env()` and `storage_options()`), checked
against gcsfs 2026.10.1's sources:
- the endpoint: `STORAGE_EMULATOR_HOST` (gcsfs/core.py `_location()`; "host:port" gets http://),
  or the `endpoint_url` storage option;
- `token="anon"`: otherwise gcsfs's credential chain tries google.auth's default, then the GCE
  metadata server (a network call off this machine);
- gcsfs >= 2026.3.0 resolves "gs" to `ExtendedGcsFileSystem`, which asks the gRPC Storage
  Control API for the bucket's layout before every ls, find and cat_file; an emulator speaks only
  HTTP/JSON and every call waited 40-150 s. tracelet picks the plain `GCSFileSystem` itself for an
  emulator endpoint (objectstore.open_filesystem), so the tracelet process needs no workaround;
  `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT` is scrubbed from its environment so the tests prove that.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from s3_server import free_port

READY_TIMEOUT = float(os.environ.get("TRACELET_GCS_READY_TIMEOUT", "60"))
PROJECT = "tracelet-test"

# variables from the machine that would change which credentials/endpoint a client uses
_SCRUB = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CONFIG",
          "STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "GCSFS_DEFAULT_PROJECT",
          "GCE_METADATA_HOST", "GCE_METADATA_IP", "FSSPEC_GS", "FSSPEC_GCS",
          "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def gcs_emulator_available() -> str:
    """"" when the emulator and gcsfs can run here, else why not (a skip reason)."""
    for module, pip_name in (("gcp_storage_emulator", "gcp-storage-emulator"), ("gcsfs", "gcsfs")):
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001 - absent or broken
            return f"{pip_name} is not importable ({type(exc).__name__}); pip install {pip_name}"
    return ""


def _q(key: str) -> str:
    return urllib.parse.quote(key, safe="")


class GcsEmulator:
    """`python -m gcp_storage_emulator start --in-memory` on 127.0.0.1:`port`, in its own group."""

    def __init__(self, directory: str | None = None) -> None:
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="gcs-emu-")
        os.makedirs(self.directory, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.directory, "gcs-emulator.log")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "GOOGLE_CLOUD_PROJECT": PROJECT}

    def subprocess_env(self, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _SCRUB}
        env.update(self.env())
        env.update(extra)
        return env

    @staticmethod
    def storage_options() -> list[str]:
        """`tracelet ... -o` arguments: anonymous, a project (gcsfs wants one to list buckets)."""
        return ["-o", "token=anon", "-o", f"project={PROJECT}"]

    # -- process control -----------------------------------------------------------------------------
    def start(self) -> GcsEmulator:
        for attempt in range(3):
            cmd = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                   "--port", str(self.port), "--in-memory"]
            env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
            env["STORAGE_BASE"] = self.directory  # only used on disk; in-memory anyway
            with open(self.log_path, "ab") as log:
                log.write(f"--- start {' '.join(cmd)}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             cwd=self.directory, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
            deadline = time.monotonic() + READY_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self.healthy():
                    return self
                time.sleep(0.1)
            else:
                self.stop()
                raise RuntimeError(f"gcp-storage-emulator not ready after {READY_TIMEOUT:.0f}s: {self.tail()}")
            self.proc = None
            if "Address already in use" in self.tail() and attempt < 2:
                self.port = free_port()
                continue
            raise RuntimeError(f"gcp-storage-emulator exited: {self.tail()}")
        raise AssertionError("unreachable")

    def healthy(self, timeout: float = 2) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b?project={PROJECT}", timeout=timeout) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _signal(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process group by pid, SIGKILL it if it lingers, reap it."""
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._signal(signal.SIGKILL)
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    # -- store helpers (JSON API over urllib) ---------------------------------------------------------
    def _call(self, method: str, path: str, data: bytes | None = None, ctype: str = "application/json") -> bytes:
        req = urllib.request.Request(self.endpoint + path, data=data, method=method,
                                     headers={"Content-Type": ctype} if data is not None else {})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def make_bucket(self, name: str) -> str:
        self._call("POST", f"/storage/v1/b?project={PROJECT}", json.dumps({"name": name}).encode())
        return name

    def put_object(self, bucket: str, key: str, body: bytes) -> dict:
        """A whole new object (a new generation) under `key`: how object stores 'append'."""
        out = self._call("POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={_q(key)}", body,
                         "application/octet-stream")
        return json.loads(out)

    def get_object(self, bucket: str, key: str) -> bytes:
        return self._call("GET", f"/download/storage/v1/b/{bucket}/o/{_q(key)}?alt=media")

    def list_objects(self, bucket: str, prefix: str = "") -> list[dict]:
        """Every object under `prefix`: dicts with Key, Size, generation."""
        out, token = [], ""
        while True:
            query = f"prefix={_q(prefix)}" + (f"&pageToken={_q(token)}" if token else "")
            page = json.loads(self._call("GET", f"/storage/v1/b/{bucket}/o?{query}"))
            for o in page.get("items", []):
                out.append({"Key": o["name"], "Size": int(o["size"]), "generation": o.get("generation")})
            token = page.get("nextPageToken", "")
            if not token:
                return out

    def delete_object(self, bucket: str, key: str) -> None:
        self._call("DELETE", f"/storage/v1/b/{bucket}/o/{_q(key)}")
