"""A real Azure Blob endpoint for the tests: Azurite's blob service (npm package `azurite`) in a
subprocess, like tests/s3_server.py: 127.0.0.1, a free port, its own process group, started and
stopped by pid, waited for until it answers, logging to a file, in-memory storage.

Azurite is not installed by the tests (an npm install is ~360 MB and a minute): they look for
`azurite-blob` in $TRACELET_AZURITE_DIR/node_modules/.bin (default ~/.cache/tracelet-azurite),
then on PATH, and skip with the install command when there is none:

    npm install --prefix ~/.cache/tracelet-azurite --no-audit --no-fund --omit=dev azurite@3.37.0

(3.37.0 declares node >= 22 and npm warns EBADENGINE on node 20, but the blob service runs.)
Flags: --disableTelemetry (Azurite otherwise sends usage data off the machine),
--skipApiVersionCheck (azure-storage-blob may be newer than the Azurite release),
--inMemoryPersistence with a small --extentMemoryLimit (the default is half the machine's memory).

The test side talks to it through azure-storage-blob (which adlfs depends on), never through adlfs:
what the store holds is read back independently of the file system under test. tracelet gets the
well-known development account through a connection string (`-o connection_string=...`, or the
AZURE_STORAGE_CONNECTION_STRING variable that adlfs reads): `account_name` + `account_key` alone
would make adlfs talk to https://devstoreaccount1.blob.core.windows.net.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request

from server_process import ServerProcess

READY_TIMEOUT = float(os.environ.get("TRACELET_AZURITE_READY_TIMEOUT", "60"))
AZURITE_DIR = os.environ.get("TRACELET_AZURITE_DIR", os.path.expanduser("~/.cache/tracelet-azurite"))
INSTALL_HINT = ("npm install --prefix ~/.cache/tracelet-azurite --no-audit --no-fund --omit=dev azurite@3.37.0"
                " (or set TRACELET_AZURITE_DIR)")
ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key (the Azure Storage emulator's): not a secret
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# variables from the machine that would change which account/credentials adlfs uses
_SCRUB = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
          "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_ACCOUNT_HOST", "AZURE_STORAGE_CLIENT_ID",
          "AZURE_STORAGE_CLIENT_SECRET", "AZURE_STORAGE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET",
          "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "FSSPEC_AZ", "FSSPEC_ABFS",
          "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def azurite_command() -> list[str] | None:
    local = os.path.join(AZURITE_DIR, "node_modules", ".bin", "azurite-blob")
    if os.access(local, os.X_OK):
        return [local]
    found = shutil.which("azurite-blob")
    return [found] if found else None


def azurite_available() -> str:
    """"" when Azurite, node, adlfs and azure-storage-blob are here, else why not (a skip reason)."""
    for module, pip_name in (("adlfs", "adlfs"), ("azure.storage.blob", "azure-storage-blob")):
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001 - absent or broken
            return f"{pip_name} is not importable ({type(exc).__name__}); pip install {pip_name}"
    if shutil.which("node") is None:
        return "node is not installed (Azurite needs it)"
    if azurite_command() is None:
        return f"Azurite is not installed: {INSTALL_HINT}"
    return ""


class Azurite(ServerProcess):
    """`azurite-blob --inMemoryPersistence` on 127.0.0.1:`port`, in its own process group."""

    NAME = "Azurite"
    LOG = "azurite.log"
    SCRUB = _SCRUB
    PORT_IN_USE = "EADDRINUSE"
    READY_TIMEOUT = READY_TIMEOUT

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={self.endpoint};")

    # -- process control -----------------------------------------------------------------------------
    def command(self) -> list[str]:
        command = azurite_command()
        if command is None:
            raise RuntimeError(f"Azurite is not installed: {INSTALL_HINT}")
        return [*command, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--inMemoryPersistence",
                "--extentMemoryLimit", "256", "--disableTelemetry", "--skipApiVersionCheck", "--loose"]

    def healthy(self, timeout: float = 2) -> bool:
        """Any HTTP answer (an unsigned listing gets 403) means the service is up."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}?comp=list", timeout=timeout):
                return True
        except urllib.error.HTTPError:
            return True
        except (OSError, urllib.error.URLError):
            return False

    # -- store helpers (azure-storage-blob against the endpoint) ----------------------------------------
    def client(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def make_container(self, name: str) -> str:
        self.client().create_container(name)
        return name

    def put_object(self, container: str, key: str, body: bytes) -> dict:
        """A whole new blob under `key` (a new ETag): how object stores 'append'."""
        return self.client().get_blob_client(container, key).upload_blob(body, overwrite=True)

    def get_object(self, container: str, key: str) -> bytes:
        return self.client().get_blob_client(container, key).download_blob().readall()

    def list_objects(self, container: str, prefix: str = "") -> list[dict]:
        """Every blob under `prefix`: dicts with Key, Size, ETag."""
        blobs = self.client().get_container_client(container).list_blobs(name_starts_with=prefix or None)
        return [{"Key": b.name, "Size": b.size, "ETag": b.etag} for b in blobs]

    def delete_object(self, container: str, key: str) -> None:
        self.client().get_blob_client(container, key).delete_blob()
