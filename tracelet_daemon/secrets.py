"""The W&B API key from a file: Docker/Kubernetes secrets and systemd credentials.

A key in a file never shows up in ``ps``, ``docker inspect`` or a unit file. It is read once at
start-up into this process's ``WANDB_API_KEY`` (wandb reads it from there, and so does the
online/offline decision) and is never printed, logged or written anywhere by tracelet.

Where the key comes from, first match wins:

1. ``WANDB_API_KEY`` already set: used as is (a ``WANDB_API_KEY_FILE`` beside it is ignored,
   with a warning);
2. ``WANDB_API_KEY_FILE``: a path; a missing or unreadable file is a usage error (a typo must
   not silently mean "offline"); an empty file means "no key", with a warning;
3. ``$CREDENTIALS_DIRECTORY/wandb_api_key``: systemd's ``LoadCredential=``; an empty or missing
   credential means "no key" (the shipped units default it to empty so they start without one).

With no key and no explicit mode, W&B runs offline (see ``backends/wandb/mode.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

from .errors import UsageError

log = logging.getLogger("tracelet.secrets")

KEY_VAR = "WANDB_API_KEY"
FILE_VAR = "WANDB_API_KEY_FILE"
CREDENTIAL_NAME = "wandb_api_key"
_MAX_BYTES = 4096  # W&B keys are 40-86 characters; anything far larger is the wrong file


def _read_key(path: str) -> str:
    """The key in `path`, stripped; raises OSError or UsageError (never quoting the content)."""
    with open(path, "rb") as f:
        data = f.read(_MAX_BYTES + 1)
    if len(data) > _MAX_BYTES:
        raise UsageError(f"{path} is larger than {_MAX_BYTES} bytes; it does not look like a W&B API key")
    try:
        key = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not text; it does not look like a W&B API key") from None
    if any(ch.isspace() for ch in key):
        raise UsageError(f"{path} holds more than one word; put only the W&B API key in it")
    return key


def load_api_key(env: MutableMapping[str, str] | None = None) -> str:
    """Put the key from a file into ``env[WANDB_API_KEY]``; returns where it came from, or "".

    The returned text names a variable or a path, never the key.
    """
    env = os.environ if env is None else env
    file_path = env.get(FILE_VAR, "").strip()
    if env.get(KEY_VAR, "").strip():
        if file_path:
            log.warning("both %s and %s are set; using %s", KEY_VAR, FILE_VAR, KEY_VAR)
        return KEY_VAR
    if file_path:
        try:
            key = _read_key(file_path)
        except OSError as exc:
            raise UsageError(f"{FILE_VAR}={file_path}: cannot read it ({exc.strerror or exc})") from None
        if not key:
            log.warning("%s=%s is empty: no W&B API key", FILE_VAR, file_path)
            return ""
        env[KEY_VAR] = key
        return file_path
    cred_dir = env.get("CREDENTIALS_DIRECTORY", "").strip()
    if cred_dir:
        path = os.path.join(cred_dir, CREDENTIAL_NAME)
        try:
            key = _read_key(path)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise UsageError(f"systemd credential {path}: cannot read it ({exc.strerror or exc})") from None
        if key:
            env[KEY_VAR] = key
            return path
    return ""


def known_secrets(env: MutableMapping[str, str] | None = None) -> list[str]:
    """Values that must never appear in output (for the log redaction filter)."""
    env = os.environ if env is None else env
    key = env.get(KEY_VAR, "").strip()
    return [key] if len(key) >= 8 else []  # a very short "key" would redact ordinary words
