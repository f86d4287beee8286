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
import sys
import urllib.error
import urllib.parse
import urllib.request

from server_process import ServerProcess

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


class GcsEmulator(ServerProcess):
    """`python -m gcp_storage_emulator start --in-memory` on 127.0.0.1:`port`, in its own group."""

    NAME = "gcp-storage-emulator"
    LOG = "gcs-emulator.log"
    SCRUB = _SCRUB
    READY_TIMEOUT = READY_TIMEOUT

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "GOOGLE_CLOUD_PROJECT": PROJECT}

    @staticmethod
    def storage_options() -> list[str]:
        """`tracelet ... -o` arguments: anonymous, a project (gcsfs wants one to list buckets)."""
        return ["-o", "token=anon", "-o", f"project={PROJECT}"]

    # -- process control -----------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                "--port", str(self.port), "--in-memory"]

    def process_env(self) -> dict[str, str]:
        return {**super().process_env(), "STORAGE_BASE": self.directory}  # only used on disk; in-memory anyway

    def healthy(self, timeout: float = 2) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b?project={PROJECT}", timeout=timeout) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

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
