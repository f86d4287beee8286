"""Decide online/offline before ``wandb.init`` ever runs.

An online init with no reachable server blocks ~90 s and then raises, so the mode is settled
up front: an explicit mode wins; otherwise online only when an API key is present (the
environment or wandb's netrc entry); otherwise offline, with no network touched at all.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from ...errors import UsageError
from .owners import OWNER_ENV

_ALIASES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
            "disabled": "disabled"}


def _has_netrc_key() -> bool:
    try:  # wandb's own netrc lookup, for the host wandb would use; private, so guarded
        from wandb.sdk.lib import urls
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth

        host = os.environ.get("WANDB_BASE_URL") or urls.DEFAULT_BASE_URL
        return bool(read_netrc_auth(host=host))
    except Exception:  # noqa: BLE001 - absent, unreadable or changed API: no key
        return False


def has_api_key(env: MutableMapping[str, str] = os.environ) -> bool:
    return bool(env.get("WANDB_API_KEY", "").strip()) or _has_netrc_key()


def resolve_mode(explicit: str | None, env: MutableMapping[str, str] = os.environ) -> str:
    raw = (explicit or env.get("WANDB_MODE") or "").strip().lower()
    if raw:
        if raw not in _ALIASES:
            raise UsageError(f"unknown W&B mode {raw!r} (expected online, offline or disabled)")
        return _ALIASES[raw]
    return "online" if has_api_key(env) else "offline"


def prepare_environment(state_dir: str, env: MutableMapping[str, str] = os.environ) -> str:
    """Point wandb's run, cache and staging folders into tracelet's own directory unless set.

    Returns the directory that will hold ``wandb/offline-run-*`` folders.
    """
    # An inherited WANDB_SERVICE would connect us to another process's wandb-core: our runs and
    # buffered rows would outlive us there, so a crash of tracelet would not be a crash of its
    # W&B writer and the replica could change after we recomputed our position from it.
    env.pop("WANDB_SERVICE", None)
    env[OWNER_ENV] = os.path.abspath(state_dir)
    env.setdefault("WANDB_DIR", state_dir)
    env.setdefault("WANDB_CACHE_DIR", os.path.join(state_dir, "wandb-cache"))
    env.setdefault("WANDB_DATA_DIR", os.path.join(state_dir, "wandb-data"))
    env.setdefault("WANDB_SILENT", "true")
    wandb_dir = env["WANDB_DIR"]
    os.makedirs(wandb_dir, exist_ok=True)
    return wandb_dir
