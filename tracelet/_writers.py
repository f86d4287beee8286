"""SummaryWriters (torch.utils.tensorboard and tensorboardX) while an experiment is active.

* ``SummaryWriter()`` without a log_dir writes into the experiment's run directory (instead of
  ``runs/<date>_<host>``); tensorboardX writers also get a per-process file name suffix, since
  two of them started in one second would otherwise share (and truncate) one file name.
* A writer with an explicit log_dir outside the run directory is followed too: each event file
  it creates is hard-linked into the run directory (a symlink if the two are on different file
  systems), at the path it has relative to the writer's log_dir. Hard links need no path
  translation, so a sidecar in another container follows them as well. Event files are
  append-only, so the link always shows everything the writer wrote.
* Every writer created while the experiment is active is remembered (weakly) so that
  ``stop_logging()`` can flush it.

The classes are patched when their module is imported (an import hook), or at once if it
already was; torch is never imported by tracelet itself. Outside an experiment the patched
constructors behave exactly like the originals.
"""

from __future__ import annotations

import functools
import importlib.abc
import inspect
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("tracelet")

MODULES = {"torch.utils.tensorboard.writer": "torch", "tensorboardX.writer": "tensorboardX"}
_lock = threading.Lock()
_counter = itertools.count(1)
_installed = False
_active: Callable[[], object | None] = lambda: None  # noqa: E731 - set by install()


def install(active: Callable[[], object | None]) -> None:
    """Patch the writer classes now or when their modules are imported. Idempotent."""
    global _installed, _active
    with _lock:
        _active = active
        if _installed:
            return
        _installed = True
        sys.meta_path.insert(0, _Finder())
        for name, kind in MODULES.items():
            mod = sys.modules.get(name)
            if mod is not None:
                _patch(mod, kind)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of the writer modules to patch after import."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001
        if fullname not in MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _PatchingLoader(spec.loader, MODULES[fullname])
                return spec
            if spec is not None:
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader, kind: str) -> None:  # noqa: ANN001
        self._loader = loader
        self._kind = kind

    def create_module(self, spec):  # noqa: ANN001
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001
        self._loader.exec_module(module)
        _patch(module, self._kind)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


def _patch(mod, kind: str) -> None:  # noqa: ANN001
    sw, fw = getattr(mod, "SummaryWriter", None), getattr(mod, "FileWriter", None)
    if sw is None or getattr(sw, "_tracelet_patched", False):
        return
    sw_init = sw.__init__
    signature = inspect.signature(sw_init)

    @functools.wraps(sw_init)
    def summary_writer_init(self, *args, **kwargs):  # noqa: ANN001
        exp = _active()
        if exp is not None:
            args, kwargs = _route(exp, kind, signature, self, args, kwargs)
        sw_init(self, *args, **kwargs)
        if exp is not None:
            exp._writers.add(self)

    sw.__init__ = summary_writer_init
    sw._tracelet_patched = True
    if fw is not None and not getattr(fw, "_tracelet_patched", False):
        fw_init = fw.__init__

        @functools.wraps(fw_init)
        def file_writer_init(self, *args, **kwargs):  # noqa: ANN001
            fw_init(self, *args, **kwargs)
            exp = _active()
            if exp is not None:
                try:
                    exp._follow_file_writer(self)
                except Exception as err:  # noqa: BLE001 - never break the user's writer
                    log.warning("tracelet: cannot follow the event file of %s: %s", _logdir_of(self), err)

        fw.__init__ = file_writer_init
        fw._tracelet_patched = True


def _route(exp, kind: str, signature: inspect.Signature, writer, args: tuple, kwargs: dict):  # noqa: ANN001
    """The constructor arguments with the log_dir filled in (none given) or remembered (given)."""
    try:
        bound = signature.bind_partial(writer, *args, **kwargs)
    except TypeError:
        return args, kwargs  # let the original constructor raise its own error
    kinds = {p.kind for p in signature.parameters.values()}
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return args, kwargs
    params = dict(bound.arguments)
    names = [n for n in ("log_dir", "logdir") if n in signature.parameters]
    given = next((params[n] for n in names if params.get(n)), None)
    if given:
        exp._note_log_dir(os.fspath(given))
        return args, kwargs
    if params.get("write_to_disk") is False:
        return args, kwargs
    params.pop(next(iter(signature.parameters)))  # self
    extra: dict = {}
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = dict(params.pop(name, {}) or {})
    for n in names:
        params.pop(n, None)
    params[names[0] if names else "log_dir"] = exp.run_dir
    if kind == "tensorboardX" and not params.get("filename_suffix"):
        params["filename_suffix"] = f".{os.getpid()}.{next(_counter)}"
    return (), {**params, **extra}


def _logdir_of(file_writer) -> str:  # noqa: ANN001
    try:
        return os.fspath(file_writer.get_logdir())
    except Exception:  # noqa: BLE001
        return "?"


def event_file_of(file_writer) -> str | None:  # noqa: ANN001
    """The event file a FileWriter just created (torch and tensorboardX keep it privately)."""
    ev = getattr(file_writer, "event_writer", None)
    for holder in (ev, getattr(ev, "_ev_writer", None)):
        name = getattr(holder, "_file_name", None)
        if isinstance(name, str) and os.path.isfile(name):
            return name
    return None


def flush(writer, timeout: float = 2.0) -> None:  # noqa: ANN001
    """Flush a SummaryWriter so what it was given is in its files.

    tensorboardX queues events for a background thread and its flush() does not wait for that
    queue: wait until it is empty, then flush again.
    """
    try:
        writer.flush()
    except Exception as exc:  # noqa: BLE001 - a closed or broken writer
        log.debug("flush of %r failed: %s", writer, exc)
        return
    queues = []
    for fw in list((getattr(writer, "all_writers", None) or {}).values()):
        q = getattr(getattr(fw, "event_writer", None), "_event_queue", None)
        if q is not None:
            queues.append(q)
    if not queues:
        return
    deadline = time.monotonic() + timeout
    for q in queues:
        try:
            while not q.empty() and time.monotonic() < deadline:
                time.sleep(0.005)
        except (OSError, ValueError):
            pass
    time.sleep(0.02)  # the event taken off the queue last is being written
    try:
        writer.flush()
    except Exception:  # noqa: BLE001
        pass
