"""Typed values → what MLflow stores: metrics, params, tags and artifact files. Pure.

Every name here is a function of the row alone (its sequence number, step, wall time and key),
so replaying a row writes the same points and the same files again: MLflow's SQL store keeps one
copy of an identical (key, value, step, timestamp) point, and an artifact logged again at the
same path replaces itself.

| value | MLflow |
|---|---|
| scalar | metric: step = TensorBoard step, timestamp = the row's wall time in integer ms |
| hparams | params (nested values flattened with dots); their metrics arrive as scalars |
| image(s) | ``images/<key, / as ~>+step+<step>+timestamp+<ms>+<id>.png`` and ``...+compressed.webp``, the layout ``log_image(key, step)`` writes and the UI's image grid reads, with a deterministic id in place of its random UUID; run tag ``mlflow.loggedImages`` |
| histogram | ``tensorboard/histograms/<key>/step<N>-row<seq>.json``: columns left, right, count |
| text | ``tensorboard/text/<key>/step<N>-row<seq>.md``: the string, or a markdown table |
| PR curve | ``tensorboard/pr_curves/<key>/step<N>-row<seq>.json``: threshold, precision, recall, TP, FP, TN, FN |
| audio | ``tensorboard/audio/<key>/step<N>-row<seq>[-i].wav`` |
| video | ``tensorboard/videos/<key>/step<N>-row<seq>.gif`` |
| mesh | ``tensorboard/meshes/<key>/step<N>-row<seq>[-i].glb`` (a point cloud: ``.json``, columns x, y, z[, r, g, b]) |
| graph, model config | ``tensorboard/<key>[.step<N>]<suffix>`` |

The JSON tables use pandas' "split" layout (``pandas.read_json(f, orient="split")``); like
MLflow itself, +-inf become +-1.797e308 and NaN null.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ...values import (
    Audio,
    AudioBatch,
    Histogram,
    HParams,
    Image,
    ImageBatch,
    Mesh,
    PRCurve,
    Row,
    RunFile,
    Text,
    Value,
    Video,
)

IMAGES_DIR = "images"
FILES_DIR = "tensorboard"
LOGGED_IMAGES_TAG = "mlflow.loggedImages"
_DBL_MAX = 1.7976931348623157e308
_PATH_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Converted:
    """What a batch of rows becomes; metrics are (key, value, timestamp ms, step)."""

    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)
    params: dict[str, object] = field(default_factory=dict)  # raw hparams, flattened later
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (artifact path, content)
    images: bool = False  # a file of the images/ layout is among them


def millis(wall_time: float) -> int:
    """The timestamp MLflow stores: deterministic, so a replayed point is the same point."""
    return round(wall_time * 1000)


def finite(x: float) -> float | None:
    """JSON-safe as MLflow stores numbers: +-inf clamp to +-DBL_MAX, NaN is None."""
    if math.isnan(x):
        return None
    return x if math.isfinite(x) else math.copysign(_DBL_MAX, x)


def path_of(key: str) -> str:
    """`key` as an artifact directory: safe characters only, no empty, '.' or '..' segments."""
    parts = [_PATH_UNSAFE.sub("_", p) for p in key.split("/")]
    return "/".join(p for p in parts if p and p not in (".", "..")) or "value"


def row_file(kind: str, key: str, row: Row, ext: str, index: int | None = None) -> str:
    """``tensorboard/<kind>/<key>/step<N>-row<seq>[-i]<ext>``: one file per value, named by its row."""
    tail = "" if index is None else f"-{index}"
    return f"{FILES_DIR}/{kind}/{path_of(key)}/step{row.step}-row{row.seq}{tail}{ext}"


def run_file_name(key: str, suffix: str, step: int) -> str:
    """Graphs and model configs: ``tensorboard/<key>[.step<N>]<suffix>``."""
    name = path_of(key) + (f".step{step}" if step else "")
    return f"{FILES_DIR}/{name}{suffix}"


def image_id(key: str, row: Row, index: int) -> str:
    """Stands where log_image puts a random UUID: derived from the row, so a replay overwrites."""
    digest = hashlib.sha256(f"{key}\0{row.seq}\0{index}".encode("utf-8", "surrogatepass")).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def image_files(image_key: str, row: Row, img: Image, index: int) -> list[tuple[str, bytes]]:
    """The full-size PNG and the compressed WebP log_image would write for this image."""
    from mlflow.tracking.multimedia import compress_image_size
    from PIL import Image as PILImage

    pic = PILImage.open(io.BytesIO(img.encoded))
    pic.load()
    if img.encoded.startswith(_PNG_MAGIC):
        png = img.encoded  # the writer's own bytes: pixels exactly as logged
    else:
        buf = io.BytesIO()
        pic.save(buf, format="PNG")
        png = buf.getvalue()
    small = io.BytesIO()
    compressed = compress_image_size(pic if pic.mode in ("RGB", "RGBA", "L") else pic.convert("RGBA"))
    compressed.save(small, format="WEBP")
    stem = (f"{IMAGES_DIR}/{image_key.replace('/', '~')}+step+{row.step}+timestamp+{millis(row.wall_time)}"
            f"+{image_id(image_key, row, index)}")
    return [(f"{stem}.png", png), (f"{stem}+compressed.webp", small.getvalue())]


def table_json(columns: list[str], data: list[list[float]]) -> bytes:
    rows = [[finite(float(x)) for x in r] for r in data]
    return json.dumps({"columns": columns, "data": rows}, allow_nan=False).encode()


def histogram_json(value: Histogram) -> bytes:
    edges, counts = value.edges, value.counts
    return table_json(["left", "right", "count"], [[edges[i], edges[i + 1], counts[i]] for i in range(len(counts))])


PR_COLUMNS = ["threshold", "precision", "recall", "true_positives", "false_positives", "true_negatives",
              "false_negatives"]


def pr_json(value: PRCurve) -> bytes:
    return table_json(PR_COLUMNS, [list(r) for r in zip(value.thresholds, value.precision, value.recall,
                                                        value.true_positives, value.false_positives,
                                                        value.true_negatives, value.false_negatives)])


def text_markdown(value: Text) -> bytes:
    """One string as itself; several as a markdown table (TensorBoard renders text as markdown)."""
    if len(value.strings) == 1:
        return value.strings[0].encode()
    rows = value.rows()
    width = max((len(r) for r in rows), default=1)

    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(f"text_{i}" if width > 1 else "text" for i in range(width)) + " |",
             "|" + "---|" * width]
    lines += ["| " + " | ".join(cell(s) for s in r) + " |" for r in rows]
    return ("\n".join(lines) + "\n").encode()


def mesh_files(key: str, value: Mesh, row: Row) -> Iterator[tuple[str, bytes]]:
    """A binary glTF per mesh of the batch (the format W&B's 3D panel reads too); a cloud of points
    without faces as a JSON table."""
    from ..wandb.object3d import glb_bytes, mesh_items, point_rows  # numpy work shared with W&B

    items = mesh_items(value)
    for i, (vertices, faces, colors) in enumerate(items):
        index = i if len(items) > 1 else None
        if faces is not None and len(faces):
            yield row_file("meshes", key, row, ".glb", index), glb_bytes(vertices, faces, colors)
        else:
            points = point_rows(vertices, colors)
            columns = ["x", "y", "z", "r", "g", "b"][: points.shape[1] if points.ndim == 2 else 3]
            yield row_file("meshes", key, row, ".json", index), table_json(columns, points.tolist())


def _files_of(key: str, value: Value, row: Row, image_key: Callable[[str], str]) -> Iterator[tuple[str, bytes]]:
    if isinstance(value, Image):
        yield from image_files(image_key(key), row, value, 0)
    elif isinstance(value, ImageBatch):
        for i, img in enumerate(value.images):
            yield from image_files(image_key(key), row, img, i)
    elif isinstance(value, Histogram):
        yield row_file("histograms", key, row, ".json"), histogram_json(value)
    elif isinstance(value, Text):
        yield row_file("text", key, row, ".md"), text_markdown(value)
    elif isinstance(value, PRCurve):
        yield row_file("pr_curves", key, row, ".json"), pr_json(value)
    elif isinstance(value, Audio):
        yield row_file("audio", key, row, ".wav" if value.content_type in ("", "audio/wav", "audio/x-wav")
                       else ".ogg"), value.encoded
    elif isinstance(value, AudioBatch):
        for i, clip in enumerate(value.clips):
            yield row_file("audio", key, row, ".wav", i), clip.encoded
    elif isinstance(value, Video):
        yield row_file("videos", key, row, f".{value.format or 'gif'}"), value.encoded
    elif isinstance(value, RunFile):
        yield run_file_name(key, value.suffix, row.step), value.content
    elif isinstance(value, Mesh):
        yield from mesh_files(key, value, row)
    else:
        raise TypeError(f"no MLflow form for {type(value).__name__}")


def convert_rows(rows: list[Row], metric_key: Callable[[str], str], image_key: Callable[[str], str],
                 warn: Callable[[str, str], None], out: Converted | None = None) -> Converted:
    """Split rows into metrics, hparams and files; a value that cannot be converted is warned
    about (once per key, by the caller's bookkeeping) and left out, never silently."""
    out = out if out is not None else Converted()
    metrics = out.metrics
    for row in rows:
        ts = millis(row.wall_time)
        step = row.step
        for key, value in row.values.items():
            if value.__class__ is float:  # most values: nothing else to do
                metrics.append((metric_key(key), value, ts, step))
                continue
            if isinstance(value, HParams):
                out.params.update(value.as_dict())
                continue
            try:
                files = list(_files_of(key, value, row, image_key))
            except Exception as exc:  # noqa: BLE001 - one bad value must not sink the row
                warn("convert:" + key, f"value of {key!r} at step {row.step} not sent: {exc}")
                continue
            out.files.extend(files)
            out.images = out.images or isinstance(value, (Image, ImageBatch))
    return out
