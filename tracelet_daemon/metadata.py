"""Run metadata and artifact requests that live next to the event files (the file protocol).

A training process (the ``tracelet`` shim, or anything else) describes its run in the run
directory, so a sidecar with no shared memory and no credentials in the trainer can apply it:

    <run dir>/.tracelet/run.json                    {"format": "tracelet.run/1", "name", "project",
                                                     "entity", "tags", "notes", "group", "job_type",
                                                     "config", "run_id", "finished", "uploader"}
    <run dir>/.tracelet/artifacts/<id>/manifest.json {"format": "tracelet.artifact/1", "name",
                                                     "type", "description", "metadata", "aliases",
                                                     "files": [{"path": "files/x", "name": "x"}]}
    <run dir>/hparams.yaml                          PyTorch Lightning's hyperparameters → config

Writers replace run.json atomically (temp file + rename) and publish an artifact by renaming its
finished directory into ``artifacts/``, so readers never see half a request. Everything read
here is untrusted: every file is opened through `confine` (no symlink below the run directory is
followed, what was opened is checked on its descriptor), sizes and nesting are bounded
(`limits.Limits`), YAML aliases are refused, names are checked, and artifact bytes are copied from
those descriptors into a private staging directory before any backend sees a path.

``uploader`` (optional) names who replays the run: ``"sidecar"`` (a ``tracelet watch``/``upload``),
``"in-process"`` (the ``tracelet`` shim's own engine inside the training process) or ``"none"``.
An engine skips a run whose run.json names another uploader than its own, so a run is never
sent twice by two engines with two state stores. The writer side is ``tracelet/_protocol.py``;
every field is documented in docs/python-api.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from . import confine
from .errors import ConfinementError
from .limits import DEFAULT, Limits
from .logsetup import CONTROL_CHARS

log = logging.getLogger("tracelet.metadata")

DIRNAME = ".tracelet"
RUN_FILE = "run.json"
ARTIFACTS = "artifacts"
RUN_FORMAT = "tracelet.run/1"
ARTIFACT_FORMAT = "tracelet.artifact/1"
LIGHTNING_HPARAMS = "hparams.yaml"
_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_STR_FIELDS = ("name", "project", "entity", "notes", "group", "job_type", "run_id", "uploader")


class MetadataError(ValueError):
    """A metadata file exists but cannot be used; the message names the file."""


@dataclass(frozen=True)
class RunMetadata:
    name: str | None = None
    project: str | None = None
    entity: str | None = None
    notes: str | None = None
    group: str | None = None
    job_type: str | None = None
    run_id: str | None = None
    tags: tuple[str, ...] = ()
    config: dict[str, object] = field(default_factory=dict)
    finished: bool = False
    uploader: str | None = None  # "sidecar", "in-process", "none"; None: any engine


@dataclass(frozen=True)
class ArtifactRequest:
    id: str  # directory name under artifacts/, unique per run
    name: str
    type: str
    description: str = ""
    metadata: dict[str, object] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()  # (absolute path, name inside the artifact)


def run_file(run_dir: str) -> str:
    return os.path.join(run_dir, DIRNAME, RUN_FILE)


def fingerprint(run_dir: str) -> tuple:
    """Cheap change detector: (mtime_ns, size) of each metadata source and the artifact list.

    lstat only: a symlink planted here changes the fingerprint but is never read through."""
    out = []
    if not os.path.isdir(os.path.join(run_dir, DIRNAME)):  # most runs: one stat instead of three calls
        try:
            st = os.lstat(os.path.join(run_dir, LIGHTNING_HPARAMS))
            return (None, (st.st_mtime_ns, st.st_size), ())
        except OSError:
            return (None, None, ())
    for path in (run_file(run_dir), os.path.join(run_dir, LIGHTNING_HPARAMS)):
        try:
            st = os.lstat(path)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    try:
        out.append(tuple(sorted(os.listdir(os.path.join(run_dir, DIRNAME, ARTIFACTS)))))
    except OSError:
        out.append(())
    return tuple(out)


def has_metadata(run_dir: str) -> bool:
    return confine.is_regular(run_file(run_dir)) or confine.is_regular(os.path.join(run_dir, LIGHTNING_HPARAMS))


def _depth_ok(data: object, max_depth: int) -> bool:
    """Iterative: a deep document must not be able to exhaust the stack of whoever walks it."""
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return False
        stack.extend((c, depth + 1) for c in children)
    return True


def _read_json(base: str, rel: str, limits: Limits = DEFAULT) -> dict:
    path = os.path.join(base, rel)
    try:
        raw = confine.read_file(base, rel, limits.max_metadata_bytes)
        data = json.loads(raw)
    except ConfinementError as exc:
        raise MetadataError(str(exc)) from None
    except RecursionError:
        raise MetadataError(f"{path}: nested deeper than {limits.max_metadata_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{path}: not valid JSON ({_position(exc)})") from None
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: not a JSON object")
    if not _depth_ok(data, limits.max_metadata_depth):
        raise MetadataError(f"{path}: nested deeper than {limits.max_metadata_depth} levels")
    return data


def _position(exc: Exception) -> str:
    """Where a parse failed, without quoting the (untrusted, possibly secret) content."""
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno} column {exc.colno}"
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"line {mark.line + 1} column {mark.column + 1}"
    return type(exc).__name__


def _check_format(path: str, data: dict, expected: str) -> None:
    fmt = data.get("format", "")
    kind, _, version = str(fmt).partition("/")
    want_kind, _, want_version = expected.partition("/")
    if kind != want_kind or not version.isdigit():
        raise MetadataError(f"{path}: format {fmt!r} is not {expected!r}")
    if int(version) > int(want_version):
        raise MetadataError(f"{path}: format {fmt!r} is newer than this tracelet understands ({expected})")


def _lightning_hparams(run_dir: str, limits: Limits = DEFAULT) -> dict[str, object]:
    path = os.path.join(run_dir, LIGHTNING_HPARAMS)
    if not os.path.lexists(path):
        return {}
    import yaml

    try:
        text = confine.read_file(run_dir, LIGHTNING_HPARAMS, limits.max_metadata_bytes)
        try:
            data = yaml.load(text, Loader=_loader(limits.max_metadata_depth, lenient=False))  # noqa: S506
        except yaml.constructor.ConstructorError:
            # Lightning may write python/* tags (e.g. for Namespace); read them as plain data
            data = yaml.load(text, Loader=_loader(limits.max_metadata_depth, lenient=True))  # noqa: S506
    except ConfinementError as exc:
        raise MetadataError(str(exc)) from None
    except RecursionError:
        raise MetadataError(f"{path}: nested deeper than {limits.max_metadata_depth} levels") from None
    except _Refused as exc:
        raise MetadataError(f"{path}: {exc}") from None
    except (yaml.YAMLError, ValueError) as exc:
        raise MetadataError(f"{path}: not valid YAML ({_position(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: not a mapping")
    return {str(k): v for k, v in data.items()}


def read_lightning_hparams(directory: str) -> dict[str, object]:
    """``<directory>/hparams.yaml`` as a mapping ({} if absent); raises MetadataError if unusable."""
    return _lightning_hparams(directory)


class _Refused(ValueError):
    """A YAML document uses what metadata never needs (aliases) or nests too deep."""


def _loader(max_depth: int, *, lenient: bool):
    """A SafeLoader with no aliases (a few hundred bytes of them expand to gigabytes) and bounded
    nesting; `lenient` also reads unknown tags as the plain scalar, list or mapping they wrap."""
    import yaml

    class Bounded(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):  # noqa: ANN001
            if self.check_event(yaml.AliasEvent):
                raise _Refused("YAML aliases are not accepted in metadata")
            self._depth += 1
            try:
                if self._depth > max_depth:
                    raise _Refused(f"nested deeper than {max_depth} levels")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    if lenient:
        def plain(loader, _suffix, node):  # noqa: ANN001
            if isinstance(node, yaml.ScalarNode):
                return loader.construct_scalar(node)
            if isinstance(node, yaml.SequenceNode):
                return loader.construct_sequence(node, deep=True)
            return loader.construct_mapping(node, deep=True)

        Bounded.add_multi_constructor("tag:yaml.org,2002:python/", plain)
        Bounded.add_multi_constructor("!", plain)
    return Bounded


_CONTROL = re.compile(CONTROL_CHARS + "+")


def display_text(value: str, limit: int = 128) -> str:
    """A name fit to show a person: control characters (newlines, escapes) become one space,
    invisible formatting characters go, surrounding space is trimmed, length is bounded."""
    text = "".join(ch for ch in _CONTROL.sub(" ", value) if unicodedata.category(ch) != "Cf")
    text = " ".join(text.split())
    return text[:limit].rstrip() or "run"


def load_run_metadata(run_dir: str, limits: Limits = DEFAULT) -> RunMetadata | None:
    """Merged metadata of a run directory (Lightning's hparams.yaml, then run.json); None if none.

    Raises MetadataError naming the file when a source exists but is unusable.
    """
    config: dict[str, object] = dict(_lightning_hparams(run_dir, limits))
    path = run_file(run_dir)
    if not os.path.lexists(path):
        return RunMetadata(config=config) if config else None
    data = _read_json(run_dir, f"{DIRNAME}/{RUN_FILE}", limits)
    _check_format(path, data, RUN_FORMAT)
    kwargs: dict[str, object] = {}
    for key in _STR_FIELDS:
        value = data.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise MetadataError(f"{path}: {key!r} must be a string")
            kwargs[key] = value
    if "name" in kwargs:
        kwargs["name"] = display_text(str(kwargs["name"]))
    tags = data.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise MetadataError(f"{path}: 'tags' must be a list of strings")
    extra = data.get("config") or {}
    if not isinstance(extra, dict):
        raise MetadataError(f"{path}: 'config' must be an object")
    config.update(extra)
    return RunMetadata(tags=tuple(display_text(t, 64) for t in tags), config=config,
                       finished=bool(data.get("finished")), **kwargs)


def load_artifact(run_dir: str, artifact_id: str, limits: Limits = DEFAULT) -> ArtifactRequest:
    """One published artifact request; raises MetadataError naming the file if unusable.

    Its files are paths relative to the artifact directory, not yet opened: `staged()` copies
    them (confined) before a backend may see them."""
    rel_dir = f"{DIRNAME}/{ARTIFACTS}/{artifact_id}"
    path = os.path.join(run_dir, rel_dir, "manifest.json")
    data = _read_json(run_dir, f"{rel_dir}/manifest.json", limits)
    _check_format(path, data, ARTIFACT_FORMAT)
    name, kind = data.get("name"), data.get("type") or "artifact"
    if not isinstance(name, str) or not _ARTIFACT_NAME.fullmatch(name):
        raise MetadataError(f"{path}: artifact name must match {_ARTIFACT_NAME.pattern}")
    if not isinstance(kind, str) or not _ARTIFACT_NAME.fullmatch(kind):
        raise MetadataError(f"{path}: artifact type must match {_ARTIFACT_NAME.pattern}")
    entries = data.get("files") or []
    if not isinstance(entries, list):
        raise MetadataError(f"{path}: 'files' must be a list")
    if len(entries) > limits.max_artifact_files:
        raise MetadataError(f"{path}: {len(entries)} files, over the limit of {limits.max_artifact_files}"
                            " (TRACELET_MAX_ARTIFACT_FILES)")
    files = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise MetadataError(f"{path}: each file needs a 'path'")
        src = entry["path"]
        parts = src.replace(os.sep, "/").split("/")
        if src.startswith("/") or ".." in parts or not any(p not in ("", ".") for p in parts):
            raise MetadataError(f"{path}: file {src!r} is outside the artifact")
        target = str(entry.get("name") or os.path.basename(src))
        if os.path.isabs(target) or ".." in target.split("/"):
            raise MetadataError(f"{path}: file name {target!r} must be relative")
        files.append((src, target))
    metadata = data.get("metadata") or {}
    aliases = data.get("aliases") or []
    if not isinstance(metadata, dict) or not isinstance(aliases, list):
        raise MetadataError(f"{path}: 'metadata' must be an object and 'aliases' a list")
    return ArtifactRequest(
        id=artifact_id, name=name, type=kind,
        description=str(data.get("description") or ""), metadata=metadata,
        aliases=tuple(str(a) for a in aliases), files=tuple(files),
    )


@contextmanager
def staged(run_dir: str, request: ArtifactRequest, staging_root: str,
           limits: Limits = DEFAULT) -> Iterator[ArtifactRequest]:
    """`request` with each file copied, through a confined descriptor, into a private directory
    under `staging_root` (removed afterwards): a backend only ever opens tracelet's own copies,
    so no swap of a file for a symlink between our check and its read can leak anything."""
    rel_dir = f"{DIRNAME}/{ARTIFACTS}/{request.id}"
    os.makedirs(staging_root, mode=0o700, exist_ok=True)
    stage = tempfile.mkdtemp(prefix="artifact-", dir=staging_root)
    try:
        files, total = [], 0
        for i, (src, target) in enumerate(request.files):
            what = os.path.join(run_dir, rel_dir, src)
            try:
                fd = confine.open_file(run_dir, f"{rel_dir}/{src}", single_link=True)
                try:
                    dest = os.path.join(stage, str(i))
                    total += confine.copy_fd(fd, dest, limits.max_artifact_bytes - total, what)
                finally:
                    os.close(fd)
            except ConfinementError as exc:
                raise MetadataError(f"artifact {request.name!r}: {exc}"
                                    + (" (TRACELET_MAX_ARTIFACT_BYTES)" if "limit" in str(exc) else "")) from None
            except OSError as exc:
                raise MetadataError(f"artifact {request.name!r}: {what}: {exc.strerror or exc}") from None
            files.append((dest, target))
        yield replace(request, files=tuple(files))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def artifact_ids(run_dir: str) -> list[str]:
    """Published artifact directories of a run, in publication order (ids sort by sequence);
    symlinks are not artifact directories."""
    try:
        listed = confine.entries(run_dir, f"{DIRNAME}/{ARTIFACTS}")
    except ConfinementError:
        return []
    return sorted(name for name, is_dir in listed if is_dir and not name.startswith("."))


_UPLOADER_CACHE: dict[str, tuple[tuple, str | None]] = {}


def uploader_of(run_dir: str) -> str | None:
    """The ``uploader`` a run's run.json names (None: none named, or no usable run.json).

    Cheap enough to ask on every rescan: the parsed value is cached by the file's identity.
    """
    path = run_file(run_dir)
    try:
        st = os.lstat(path)
    except OSError:
        _UPLOADER_CACHE.pop(path, None)
        return None
    ident = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _UPLOADER_CACHE.get(path)
    if cached is not None and cached[0] == ident:
        return cached[1]
    try:
        value = _read_json(run_dir, f"{DIRNAME}/{RUN_FILE}").get("uploader")
    except MetadataError:
        value = None
    value = value if isinstance(value, str) and value else None
    if len(_UPLOADER_CACHE) > 4096:
        _UPLOADER_CACHE.clear()
    _UPLOADER_CACHE[path] = (ident, value)
    return value


