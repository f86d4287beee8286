"""`Experiment.log_artifact`: what an object becomes inside an artifact, and the artifact's
name and type (the scheme is documented in docs/python-api.md, "Artifacts").

Objects: a file path, a directory path, a pandas DataFrame (CSV by default; .tsv, .json,
.parquet by the file name), a matplotlib Figure (PNG by default; any format savefig knows by
the file name), a dict or list (JSON), or a ``wandb.Artifact`` (its files, name, type,
description and metadata as they are). Everything is copied into the run directory at once, so
the artifact is a snapshot; nothing here imports wandb.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._protocol import ArtifactBuilder, PublishedArtifact, jsonable, safe_name

log = logging.getLogger("tracelet")

# the first of these words found in artifact_path's folders, then in the file's stem, is the type
TYPE_BY_WORD = {
    "model": "model", "models": "model", "checkpoint": "model", "checkpoints": "model", "ckpt": "model",
    "ckpts": "model", "weights": "model",
    "data": "dataset", "dataset": "dataset", "datasets": "dataset",
    "plot": "plot", "plots": "plot", "figure": "plot", "figures": "plot", "fig": "plot", "figs": "plot",
    "image": "plot", "images": "plot", "chart": "plot", "charts": "plot",
    "result": "results", "results": "results", "prediction": "results", "predictions": "results",
    "output": "results", "outputs": "results", "eval": "results", "evaluation": "results",
    "metrics": "results", "report": "results", "reports": "results", "summary": "results",
    "code": "source", "src": "source", "source": "source",
}
# else the extension of the file inside the artifact
TYPE_BY_EXTENSION = {
    **dict.fromkeys((".pt", ".pth", ".ckpt", ".safetensors", ".onnx", ".h5", ".keras", ".joblib", ".pkl",
                     ".pickle", ".bin", ".pb", ".tflite", ".msgpack", ".gguf"), "model"),
    **dict.fromkeys((".csv", ".tsv", ".parquet", ".feather", ".arrow", ".jsonl", ".npy", ".npz",
                     ".tfrecord"), "dataset"),
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf", ".webp", ".bmp"), "plot"),
    **dict.fromkeys((".json", ".yaml", ".yml", ".txt", ".md", ".log", ".html"), "results"),
    **dict.fromkeys((".py", ".ipynb", ".sh"), "source"),  # W&B reserves the type "code"
}
DEFAULT_TYPE = "artifact"
# default file names for objects that have none
DEFAULT_FILE = {"dataframe": "table.csv", "figure": "figure.png", "json": "summary.json"}


@dataclass(frozen=True)
class Plan:
    """Where an object lands: `folder` inside the artifact and, for single files, `filename`."""

    folder: str  # "" or "a/b"
    filename: str | None  # None: a directory object keeps its relative paths


def _kind(obj: object) -> str:
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if os.path.isdir(path):
            return "dir"
        if os.path.isfile(path):
            return "file"
        raise FileNotFoundError(f"log_artifact: {path} does not exist")
    cls = type(obj)
    names = {(c.__module__.partition(".")[0], c.__name__) for c in cls.__mro__}
    if ("pandas", "DataFrame") in names:
        return "dataframe"
    if ("matplotlib", "Figure") in names or ("matplotlib", "SubFigure") in names:
        return "figure"
    if ("wandb", "Artifact") in names:
        return "wandb"
    if isinstance(obj, (Mapping, list, tuple)):
        return "json"
    raise TypeError(f"log_artifact cannot store a {cls.__module__}.{cls.__name__}: give a path, a directory,"
                    " a pandas DataFrame, a matplotlib Figure, a dict/list or a wandb.Artifact")


def plan(kind: str, obj: object, artifact_path: str | None) -> Plan:
    """Read `artifact_path`: ending in "/" (or with no file extension) it is a folder and a file
    keeps its own name; otherwise it is the file's path inside the artifact."""
    raw = (artifact_path or "").replace("\\", "/")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"artifact_path {artifact_path!r} must stay inside the artifact")
    is_folder = raw.endswith("/") or not parts or kind == "dir" or not posixpath.splitext(parts[-1])[1]
    if kind == "dir":
        return Plan("/".join(parts), None)
    if is_folder:
        own = os.path.basename(os.fspath(obj)) if kind == "file" else DEFAULT_FILE[kind]
        return Plan("/".join(parts), own)
    return Plan("/".join(parts[:-1]), parts[-1])


def artifact_type(p: Plan, explicit: str | None = None) -> str:
    if explicit:
        return safe_name(explicit, DEFAULT_TYPE)
    words = [w.lower() for w in p.folder.split("/") if w]
    if p.filename:
        words.append(posixpath.splitext(p.filename)[0].lower())
    for word in words:
        if word in TYPE_BY_WORD:
            return TYPE_BY_WORD[word]
    if p.filename:
        return TYPE_BY_EXTENSION.get(posixpath.splitext(p.filename)[1].lower(), DEFAULT_TYPE)
    return DEFAULT_TYPE


def artifact_name(p: Plan, obj: object, kind: str, explicit: str | None = None) -> str:
    if explicit:
        return safe_name(explicit)
    if p.filename:
        return safe_name(posixpath.splitext(p.filename)[0])
    if p.folder:
        return safe_name(p.folder.split("/")[-1])
    return safe_name(os.path.basename(os.path.abspath(os.fspath(obj))))


def build(run_dir: str, obj: object, artifact_path: str | None = None, *, name: str | None = None,
          type: str | None = None, description: str = "", metadata: Mapping | None = None,  # noqa: A002
          aliases: Iterable[str] = ()) -> PublishedArtifact:
    """Materialize `obj` as an artifact of the run in `run_dir` and publish it."""
    kind = _kind(obj)
    builder = ArtifactBuilder(run_dir)
    try:
        if kind == "wandb":
            return _from_wandb(builder, obj, name=name, aliases=aliases)
        p = plan(kind, obj, artifact_path)
        member = "/".join(x for x in (p.folder, p.filename) if x)
        if kind == "file":
            builder.add_file(os.fspath(obj), member)
        elif kind == "dir":
            if not builder.add_dir(os.fspath(obj), p.folder):
                raise ValueError(f"log_artifact: directory {os.fspath(obj)} has no files")
        elif kind == "dataframe":
            builder.add_writer(member, lambda path: _write_dataframe(obj, path))
        elif kind == "figure":
            builder.add_writer(member, lambda path: obj.savefig(path, bbox_inches="tight"))
        else:
            builder.add_writer(member, lambda path: _write_json(obj, path))
        return builder.publish(artifact_name(p, obj, kind, name), artifact_type(p, type),
                               description=description, metadata=metadata, aliases=aliases)
    except BaseException:
        builder.discard()
        raise


def _write_dataframe(df, path: str) -> None:  # noqa: ANN001 - a pandas DataFrame
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        df.to_parquet(path)
    elif ext in (".json", ".jsonl"):
        df.to_json(path, orient="records", lines=ext == ".jsonl")
    elif ext == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    else:
        df.to_csv(path, index=False)


def _write_json(obj: object, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(jsonable(obj), f, indent=1, sort_keys=True)


def _from_wandb(builder: ArtifactBuilder, art, *, name: str | None, aliases: Iterable[str]) -> PublishedArtifact:  # noqa: ANN001
    """A wandb.Artifact as it is: its files, name, type, description and metadata.

    Reference entries (``add_reference``) have no local file to hand over and are refused.
    """
    entries = getattr(getattr(art, "manifest", None), "entries", None)
    if entries is None:
        raise TypeError("log_artifact: this wandb.Artifact exposes no manifest entries")
    refs = []
    for member, entry in sorted(entries.items()):
        local = getattr(entry, "local_path", None)
        if not local or not os.path.isfile(local):
            refs.append(member)
            continue
        builder.add_file(local, member)
    if refs:
        raise ValueError(f"log_artifact: wandb.Artifact {art.name!r} has entries without a local file"
                         f" (references?): {refs[:3]}; tracelet stores files only")
    art_name = name or str(art.name).split(":")[0]
    all_aliases = list(dict.fromkeys([*(getattr(art, "_aliases", None) or []), *aliases]))
    return builder.publish(safe_name(art_name), safe_name(str(art.type), DEFAULT_TYPE),
                           description=str(art.description or ""), metadata=dict(art.metadata or {}),
                           aliases=[a for a in all_aliases if a != "latest"])
