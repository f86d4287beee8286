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
here is untrusted: names are checked and paths cannot leave the run directory.

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
from dataclasses import dataclass, field

log = logging.getLogger("tracelet.metadata")

DIRNAME = ".tracelet"
RUN_FILE = "run.json"
ARTIFACTS = "artifacts"
RUN_FORMAT = "tracelet.run/1"
ARTIFACT_FORMAT = "tracelet.artifact/1"
LIGHTNING_HPARAMS = "hparams.yaml"
_MAX_FILE = 16 << 20  # a metadata file larger than this is not metadata
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
    """Cheap change detector: (mtime_ns, size) of each metadata source and the artifact list."""
    out = []
    if not os.path.isdir(os.path.join(run_dir, DIRNAME)):  # most runs: one stat instead of three calls
        try:
            st = os.stat(os.path.join(run_dir, LIGHTNING_HPARAMS))
            return (None, (st.st_mtime_ns, st.st_size), ())
        except OSError:
            return (None, None, ())
    for path in (run_file(run_dir), os.path.join(run_dir, LIGHTNING_HPARAMS)):
        try:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    try:
        out.append(tuple(sorted(os.listdir(os.path.join(run_dir, DIRNAME, ARTIFACTS)))))
    except OSError:
        out.append(())
    return tuple(out)


def has_metadata(run_dir: str) -> bool:
    return os.path.isfile(run_file(run_dir)) or os.path.isfile(os.path.join(run_dir, LIGHTNING_HPARAMS))


def _read_json(path: str) -> dict:
    try:
        if os.path.getsize(path) > _MAX_FILE:
            raise MetadataError(f"{path}: larger than {_MAX_FILE} bytes")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise MetadataError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: not a JSON object")
    return data


def _check_format(path: str, data: dict, expected: str) -> None:
    fmt = data.get("format", "")
    kind, _, version = str(fmt).partition("/")
    want_kind, _, want_version = expected.partition("/")
    if kind != want_kind or not version.isdigit():
        raise MetadataError(f"{path}: format {fmt!r} is not {expected!r}")
    if int(version) > int(want_version):
        raise MetadataError(f"{path}: format {fmt!r} is newer than this tracelet understands ({expected})")


def _lightning_hparams(run_dir: str) -> dict[str, object]:
    path = os.path.join(run_dir, LIGHTNING_HPARAMS)
    if not os.path.isfile(path):
        return {}
    import yaml

    try:
        if os.path.getsize(path) > _MAX_FILE:
            raise MetadataError(f"{path}: larger than {_MAX_FILE} bytes")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            data = yaml.safe_load(text)
        except yaml.constructor.ConstructorError:
            # Lightning may write python/* tags (e.g. for Namespace); read them as plain data
            data = yaml.load(text, Loader=_lenient_loader())  # noqa: S506 - builds no objects
    except (OSError, yaml.YAMLError) as exc:
        raise MetadataError(f"{path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: not a mapping")
    return {str(k): v for k, v in data.items()}


def read_lightning_hparams(directory: str) -> dict[str, object]:
    """``<directory>/hparams.yaml`` as a mapping ({} if absent); raises MetadataError if unusable."""
    return _lightning_hparams(directory)


def _lenient_loader():
    """A SafeLoader that reads unknown tags as the plain scalar, list or mapping they wrap."""
    import yaml

    class Lenient(yaml.SafeLoader):
        pass

    def plain(loader, _suffix, node):  # noqa: ANN001
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_mapping(node, deep=True)

    Lenient.add_multi_constructor("tag:yaml.org,2002:python/", plain)
    Lenient.add_multi_constructor("!", plain)
    return Lenient


def load_run_metadata(run_dir: str) -> RunMetadata | None:
    """Merged metadata of a run directory (Lightning's hparams.yaml, then run.json); None if none.

    Raises MetadataError naming the file when a source exists but is unusable.
    """
    config: dict[str, object] = dict(_lightning_hparams(run_dir))
    path = run_file(run_dir)
    if not os.path.isfile(path):
        return RunMetadata(config=config) if config else None
    data = _read_json(path)
    _check_format(path, data, RUN_FORMAT)
    kwargs: dict[str, object] = {}
    for key in _STR_FIELDS:
        value = data.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise MetadataError(f"{path}: {key!r} must be a string")
            kwargs[key] = value
    tags = data.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise MetadataError(f"{path}: 'tags' must be a list of strings")
    extra = data.get("config") or {}
    if not isinstance(extra, dict):
        raise MetadataError(f"{path}: 'config' must be an object")
    config.update(extra)
    return RunMetadata(tags=tuple(tags), config=config, finished=bool(data.get("finished")), **kwargs)


def _inside(base: str, rel: str) -> str | None:
    path = os.path.realpath(os.path.join(base, rel))
    root = os.path.realpath(base)
    return path if path == root or path.startswith(root + os.sep) else None


def load_artifact(directory: str) -> ArtifactRequest:
    """One published artifact request; raises MetadataError naming the file if unusable."""
    path = os.path.join(directory, "manifest.json")
    data = _read_json(path)
    _check_format(path, data, ARTIFACT_FORMAT)
    name, kind = data.get("name"), data.get("type") or "artifact"
    if not isinstance(name, str) or not _ARTIFACT_NAME.fullmatch(name):
        raise MetadataError(f"{path}: artifact name {name!r} must match {_ARTIFACT_NAME.pattern}")
    if not isinstance(kind, str) or not _ARTIFACT_NAME.fullmatch(kind):
        raise MetadataError(f"{path}: artifact type {kind!r} must match {_ARTIFACT_NAME.pattern}")
    files = []
    for entry in data.get("files") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise MetadataError(f"{path}: each file needs a 'path'")
        src = _inside(directory, entry["path"])
        if src is None or not os.path.isfile(src):
            raise MetadataError(f"{path}: file {entry['path']!r} is missing or outside the artifact")
        target = str(entry.get("name") or os.path.basename(src))
        if os.path.isabs(target) or ".." in target.split("/"):
            raise MetadataError(f"{path}: file name {target!r} must be relative")
        files.append((src, target))
    metadata = data.get("metadata") or {}
    aliases = data.get("aliases") or []
    if not isinstance(metadata, dict) or not isinstance(aliases, list):
        raise MetadataError(f"{path}: 'metadata' must be an object and 'aliases' a list")
    return ArtifactRequest(
        id=os.path.basename(directory), name=name, type=kind,
        description=str(data.get("description") or ""), metadata=metadata,
        aliases=tuple(str(a) for a in aliases), files=tuple(files),
    )


def artifact_dirs(run_dir: str) -> list[str]:
    """Published artifact directories of a run, in publication order (ids sort by sequence)."""
    base = os.path.join(run_dir, DIRNAME, ARTIFACTS)
    try:
        names = sorted(n for n in os.listdir(base) if not n.startswith("."))
    except OSError:
        return []
    return [os.path.join(base, n) for n in names if os.path.isdir(os.path.join(base, n))]


_UPLOADER_CACHE: dict[str, tuple[tuple, str | None]] = {}


def uploader_of(run_dir: str) -> str | None:
    """The ``uploader`` a run's run.json names (None: none named, or no usable run.json).

    Cheap enough to ask on every rescan: the parsed value is cached by the file's identity.
    """
    path = run_file(run_dir)
    try:
        st = os.stat(path)
    except OSError:
        _UPLOADER_CACHE.pop(path, None)
        return None
    ident = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _UPLOADER_CACHE.get(path)
    if cached is not None and cached[0] == ident:
        return cached[1]
    try:
        value = _read_json(path).get("uploader")
    except MetadataError:
        value = None
    value = value if isinstance(value, str) and value else None
    if len(_UPLOADER_CACHE) > 4096:
        _UPLOADER_CACHE.clear()
    _UPLOADER_CACHE[path] = (ident, value)
    return value


