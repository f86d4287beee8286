"""Typed values → what the W&B SDK takes. Pure except for building wandb media objects.

A row splits three ways: history values (``run.log``), run config updates (hyperparameters) and
files to attach to the run. Adding a type means one branch in ``to_wandb`` (or a new ``Value``
kind routed to config/files in ``convert_row``); the sink never changes.

History keys (docs/data-types.md has the full table):

* scalar, histogram, image(s), video, audio, mesh (``wandb.Object3D``): the key itself;
* text: the key (``add_text``'s ``/text_summary`` suffix is already gone), a ``wandb.Table``
  with columns ``global_step`` and ``text`` (``text_0``, ``text_1``, ... for 2-D text);
* PR curve: a line chart ``<key>`` whose data W&B stores as the table ``<key>_table``;
* hparams: run config, no history key; graphs and model configs: files ``tensorboard/<key><ext>``.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ...budget import one_line, open_image, short_tag
from ...values import (Audio, AudioBatch, HParams, Histogram, Image, ImageBatch, Mesh, PRCurve, Row, RunFile,
                       Text, Value, Video)
from .object3d import glb_bytes, mesh_items, point_rows

MAX_HIST_BINS = 512
STEP_KEY = "global_step"
RESERVED = frozenset({STEP_KEY, "_step", "_runtime", "_timestamp"})
_DBL_MAX = 1.7976931348623157e308
FILES_DIR = "tensorboard"  # run files (graphs, model configs) go under files/tensorboard/

# W&B stores a table logged under `key` in an artifact named "run-<run id>-<key>" (characters
# outside [A-Za-z0-9_.-] dropped, plus a 7-character suffix if any were) and refuses names longer
# than 128. Run ids here are at most 51 characters (runs.make_run_id), so keys of tables keep at
# most this many such characters; longer ones are shortened with a hash (and a warning).
MAX_TABLE_KEY = 60
_ARTIFACT_UNSAFE = re.compile(r"[^a-zA-Z0-9_\-.]+")
_FILE_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]+")
# W&B names media files after the history key (media/images/<key>_<step>_<hash>.png, "/" making
# folders): a NUL fails, a long key exceeds the 255-byte name limit, a deep one W&B's recursion.
# Keys of media values are kept to this many UTF-8 bytes without control characters, like
# run files (tensorboard/<key>...) to this many per path component and in all.
MAX_MEDIA_KEY = 160
MAX_FILE_COMPONENT = 120
MAX_FILE_PATH = 240
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PR_COLUMNS = ["threshold", "precision", "recall", "true_positives", "false_positives",
              "true_negatives", "false_negatives"]


@dataclass
class Converted:
    """One row, ready for the SDK."""

    history: dict[str, object] = field(default_factory=dict)
    config: dict[str, object] = field(default_factory=dict)
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (name under files/, content)


def safe_key(key: str) -> str:
    """W&B's own history keys are renamed ``tb/<key>`` so a TensorBoard tag cannot shadow them."""
    return f"tb/{key}" if key in RESERVED else key


def table_key(key: str, suffix: str = "") -> str:
    """`key` shortened (prefix + hash) if W&B could not name the table artifact of `key + suffix`."""
    if len(_ARTIFACT_UNSAFE.sub("", key + suffix)) <= MAX_TABLE_KEY:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    keep = MAX_TABLE_KEY - len(suffix) - len(digest) - 1
    return f"{key[:keep]}~{digest}"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _cut(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` UTF-8 bytes, never inside a character."""
    return text.encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore")


def media_key(key: str) -> str:
    """`key`, or a prefix + hash of it if W&B could not name a media file after it."""
    if len(key.encode("utf-8", "surrogatepass")) <= MAX_MEDIA_KEY and not _CONTROL.search(key):
        return key
    return f"{_cut(_CONTROL.sub('_', key), MAX_MEDIA_KEY - 9)}~{_digest(key)}"


def file_name(key: str, suffix: str, step: int) -> str:
    """Where a RunFile of `key` goes under the run's files/: ``tensorboard/<key>[.step<N>]<suffix>``.

    A name no file system takes (a component over 255 bytes, a path over PATH_MAX) is shortened
    to one component, a prefix of the key plus a hash of it.
    """
    name = _file_stem(key)
    tail = (f".step{step}" if step else "") + suffix
    if len(name) + len(tail) > MAX_FILE_PATH or any(len(p) + len(tail) > MAX_FILE_COMPONENT
                                                    for p in name.split("/")):
        name = f"{name.replace('/', '_')[: MAX_FILE_COMPONENT - len(tail) - 9]}~{_digest(key)}"
    return f"{FILES_DIR}/{name}{tail}"


def _file_stem(key: str) -> str:
    parts = [p for p in _FILE_UNSAFE.sub("_", key).split("/") if p and p not in (".", "..")]
    return "/".join(parts) or "value"


def _finite(x: float) -> float:
    if math.isnan(x):
        return 0.0
    return x if math.isfinite(x) else math.copysign(_DBL_MAX, x)


def _image(img: Image):
    """A wandb.Image of the decoded pixels, released once W&B has written its PNG.

    The decoder checked the size against ``max_image_pixels`` before this value existed.
    Closing the picture right away keeps one decoded image in memory at a time, not a whole row's.
    """
    import wandb

    with open_image(img.encoded) as pic:
        pic.load()
        return wandb.Image(pic)


_media_dir: str | None = None


def _media_file(content: bytes, ext: str) -> str:
    """A private temporary file W&B moves into the run when the row is logged."""
    global _media_dir
    if _media_dir is None or not os.path.isdir(_media_dir):
        _media_dir = tempfile.mkdtemp(prefix="tracelet-media-")
        atexit.register(shutil.rmtree, _media_dir, ignore_errors=True)
    fd, path = tempfile.mkstemp(suffix=ext, dir=_media_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return path


def _audio(clip: Audio):
    import wandb

    ext = ".wav" if clip.content_type in ("", "audio/wav", "audio/x-wav") else ".ogg"
    path = _media_file(clip.encoded, ext)
    out = wandb.Audio(path, sample_rate=int(clip.sample_rate) or None, caption=clip.label or None)
    out._set_file(path, is_tmp=True)  # moved (not copied) into the run: no temp files pile up
    if clip.sample_rate and clip.frames:
        out._duration = clip.frames / clip.sample_rate
    return out


def _object3d(vertices, faces, colors):
    """One mesh item: a GLB file W&B moves into the run, or a point cloud when there are no faces."""
    import wandb

    if faces is None:
        return wandb.Object3D(point_rows(vertices, colors))
    path = _media_file(glb_bytes(vertices, faces, colors), ".glb")
    out = wandb.Object3D(path)
    out._set_file(path, is_tmp=True, extension=".glb")  # moved, not copied (as audio clips)
    return out


def _have_soundfile() -> bool:
    # wandb refuses lists of wandb.Audio without the soundfile package (it does not use it)
    try:
        import soundfile  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or its native library missing
        return False
    return True


def _text_table(value: Text, step: int):
    import wandb

    rows = value.rows()
    width = max((len(r) for r in rows), default=1)
    columns = [STEP_KEY] + (["text"] if width == 1 else [f"text_{i}" for i in range(width)])
    return wandb.Table(columns=columns, data=[[step, *r] for r in rows])


def _pr_chart(value: PRCurve, title: str):
    import wandb

    data = [list(r) for r in zip(value.thresholds, value.precision, value.recall, value.true_positives,
                                  value.false_positives, value.true_negatives, value.false_negatives)]
    table = wandb.Table(columns=PR_COLUMNS, data=data)
    return wandb.plot_table("wandb/line/v0", table, {"x": "recall", "y": "precision"},
                            {"title": f"{title} (precision vs recall)"})


def to_wandb(value: Value, step: int = 0, key: str = ""):
    """A typed history value as the object ``run.log`` takes."""
    import wandb

    if isinstance(value, float):
        return value
    if isinstance(value, Histogram):
        h = value.rebinned(MAX_HIST_BINS)
        return wandb.Histogram(np_histogram=(list(h.counts), [_finite(e) for e in h.edges]))
    if isinstance(value, Image):
        return _image(value)
    if isinstance(value, ImageBatch):
        return [_image(i) for i in value.images]
    if isinstance(value, Video):
        return wandb.Video(io.BytesIO(value.encoded), format=value.format)
    if isinstance(value, Audio):
        return _audio(value)
    if isinstance(value, AudioBatch):
        return [_audio(c) for c in value.clips]
    if isinstance(value, Text):
        return _text_table(value, step)
    if isinstance(value, PRCurve):
        return _pr_chart(value, key)
    if isinstance(value, Mesh):
        objects = [_object3d(*item) for item in mesh_items(value)]
        return objects[0] if len(objects) == 1 else objects
    raise TypeError(f"no W&B form for {type(value).__name__}")


def convert_row(row: Row, warn: Callable[[str, str], None]) -> Converted:
    """Split and convert one row; a value that cannot be converted is warned about and left out.

    `warn(key, message)` is called at most once per distinct key by the caller's own bookkeeping.
    """
    out = Converted()
    history = out.history
    for key, value in row.values.items():
        if value.__class__ is float and key not in RESERVED:  # most values: nothing to convert
            history[key] = value
            continue
        try:
            _convert(out, key, value, row, warn)
        except Exception as exc:  # noqa: BLE001 - one bad value must not sink the row (nor retry it forever)
            _not_sent(key, row, exc, warn)
    return out


def _convert(out: Converted, key: str, value: Value, row: Row, warn: Callable[[str, str], None]) -> None:
    if isinstance(value, HParams):
        out.config.update(value.as_dict())
        return
    if isinstance(value, RunFile):
        name = file_name(key, value.suffix, row.step)
        if not name.startswith(f"{FILES_DIR}/{_file_stem(key)}"):
            warn("file:" + key, f"tag {short_tag(key)} is too long for a file name; its file is {name!r}")
        out.files.append((name, value.content))
        return
    if key in RESERVED:
        warn("reserved:" + key, f"tag {key!r} is a W&B name; logged as 'tb/{key}'")
    name = safe_key(key)
    if isinstance(value, (Text, PRCurve)):
        short = table_key(name, "_table" if isinstance(value, PRCurve) else "")
        if short != name:
            warn("long:" + key, f"tag {short_tag(key)} is too long for a W&B table name; logged as {short!r}")
            name = short
    if not isinstance(value, (float, Histogram)):  # media: W&B names files after the key
        short = media_key(name)
        if short != name:
            warn("media:" + key, f"tag {short_tag(key)} cannot name a W&B media file; logged as {short!r}")
            name = short
    if isinstance(value, Histogram) and not all(map(math.isfinite, (value.edges[0], value.edges[-1]))):
        warn("inf:" + key, f"histogram {short_tag(key)} has non-finite bounds (first at step {row.step}); "
             "+-inf become +-1.8e308 and NaN 0 in W&B")
    if isinstance(value, AudioBatch) and not _have_soundfile():
        warn("soundfile:" + key, f"{len(value.clips)} clips of {short_tag(key)} per step are logged as "
             f"'{name}/0', '{name}/1', ...: W&B logs lists of audio only with the soundfile package")
        for i, clip in enumerate(value.clips):
            _put(out, f"{name}/{i}", clip, row, key, warn)
        return
    _put(out, name, value, row, key, warn)


def _not_sent(key: str, row: Row, exc: BaseException, warn: Callable[[str, str], None]) -> None:
    warn(key, f"value of {short_tag(key)} at step {row.step} not sent: {one_line(exc)}")


def _put(out: Converted, name: str, value: Value, row: Row, key: str,
         warn: Callable[[str, str], None]) -> None:
    try:
        out.history[name] = to_wandb(value, row.step, name)
    except Exception as exc:  # noqa: BLE001 - one bad value must not sink the row
        _not_sent(key, row, exc, warn)


def finite_edges(edges: Sequence[float]) -> list[float]:
    return [_finite(e) for e in edges]
