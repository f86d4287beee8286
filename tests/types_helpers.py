"""Golden round trips of every TensorBoard type: what the tfevents files hold, read independently
(TensorBoard's own LegacyEventFileLoader and tensor_util, tbparse for scalars), against what the
offline W&B run holds, read back from its .wandb transaction log and its media files.

Both sides are reduced to comparable points ``(key, global_step, kind, canonical value)``:

* scalar: the float32 value ("nan" for NaN);
* histogram: (total count, bin count after rebinning to <= 512, min, max);
* image / images: the decoded RGB pixels (shape + bytes digest), a tuple for batches;
* video / audio: a digest of the encoded bytes (a tuple for audio batches);
* text: the strings, row by row; pr curve: float32 precision, recall and the four counts.

The expected key of a value is computed here from the documented mapping (docs/data-types.md),
independently of tracelet's own code.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import wave
from collections import Counter
from collections.abc import Callable

import numpy as np

from helpers import offline_runs, run_id_for
from tracelet_daemon.cli import main

Point = tuple  # (key, step, kind, canonical value)


# -- running tracelet ------------------------------------------------------------------------------


class Collect(logging.Handler):
    """Keeps every record of the `tracelet` loggers (the CLI reconfigures the root logger)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


def upload(root, state_dir, *extra) -> tuple[int, Collect]:
    """`tracelet upload` at log level info; returns (exit code, the log records)."""
    collect = Collect()
    logger = logging.getLogger("tracelet")
    logger.addHandler(collect)
    try:
        rc = main(["upload", str(root), "--state-dir", str(state_dir), "--no-progress",
                   "--log-level", "info", *extra])
    finally:
        logger.removeHandler(collect)
    return rc, collect


def env_for(tmp) -> dict[str, str]:
    """Offline W&B environment variables under `tmp` (module-scoped fixtures cannot use conftest's)."""
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp / "wandb-dir"),
        "WANDB_DATA_DIR": str(tmp / "wandb-data"),
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        "WANDB_SILENT": "true",
    }
    os.makedirs(env["WANDB_DIR"], exist_ok=True)
    return env


# -- canonical forms -------------------------------------------------------------------------------


def f32(value) -> float | str:
    if isinstance(value, str):  # JSON's NaN / Infinity spelled as strings on some paths
        value = float(value)
    v = float(np.float32(value))
    return "nan" if math.isnan(v) else v


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def pixels_key(arr: np.ndarray) -> tuple:
    arr = np.ascontiguousarray(arr)
    return (arr.shape, digest(arr.tobytes()))


def decode_pixels(encoded: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as img:
        return np.asarray(img.convert("RGB"))


def rebinned_count(n: int, max_bins: int = 512) -> int:
    if n <= max_bins:
        return n
    group = -(-n // max_bins)
    return len(range(0, n, group))


# -- the independent side: what the tfevents files hold -------------------------------------------

_HPARAMS_DIR = re.compile(r"\d{9,11}\.\d{1,9}")


def default_prefix(dir_rel: str) -> str:
    """Key prefix of a directory inside a run: add_hparams' time.time() directories add none."""
    return "/".join(p for p in dir_rel.split("/") if p and p != "." and not _HPARAMS_DIR.fullmatch(p))


def tb_points(run_dir, *, series_dirs: dict[str, str] | None = None) -> tuple[Counter, dict, list]:
    """(points, hparams config, graphs) of every event file under `run_dir`.

    `series_dirs` maps add_scalars directories (relative to the run) to the key their values get.
    Graphs are (prefix, kind, serialized proto) for GraphDef/RunMetadata events.
    """
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    series_dirs = series_dirs or {}
    points: Counter = Counter()
    config: dict[str, object] = {}
    graphs: list[tuple[str, str, bytes]] = []
    for dirpath, _dirs, files in sorted(os.walk(str(run_dir))):
        rel = os.path.relpath(dirpath, str(run_dir)).replace(os.sep, "/")
        rel = "" if rel == "." else rel
        for name in sorted(f for f in files if "tfevents" in f):
            plugins: dict[str, str] = {}
            for event in LegacyEventFileLoader(os.path.join(dirpath, name)).Load():
                step = int(event.step)
                if event.HasField("graph_def"):
                    graphs.append((default_prefix(rel), "graph", event.graph_def))
                if event.HasField("tagged_run_metadata"):
                    graphs.append((default_prefix(rel), "run_metadata/" + event.tagged_run_metadata.tag,
                                   event.tagged_run_metadata.run_metadata))
                batch: dict[str, dict[int, tuple]] = {}
                for v in event.summary.value:
                    plugin = v.metadata.plugin_data.plugin_name or plugins.get(v.tag, "")
                    if v.metadata.plugin_data.plugin_name:
                        plugins.setdefault(v.tag, plugin)
                    tag = v.tag
                    kind, canon = None, None
                    field = v.WhichOneof("value")
                    if plugin == "hparams":
                        data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                        if data.WhichOneof("data") == "session_start_info":
                            for k, hv in data.session_start_info.hparams.items():
                                which = hv.WhichOneof("kind")
                                config[k] = getattr(hv, which) if which else None
                        continue
                    if field == "simple_value":
                        kind, canon = "scalar", f32(v.simple_value)
                    elif field == "histo":
                        h = v.histo
                        kind, canon = "histogram", (int(round(sum(h.bucket))), rebinned_count(len(h.bucket)),
                                                    float(h.min), float(h.max))
                    elif field == "image":
                        data = v.image.encoded_image_string
                        if data[:4] == b"GIF8":
                            kind, canon = "video", digest(data)
                        else:
                            kind, canon = "image", pixels_key(decode_pixels(data))
                    elif field == "audio":
                        kind, canon = "audio", digest(v.audio.encoded_audio_string)
                    elif field == "tensor":
                        arr = tensor_util.make_ndarray(v.tensor)
                        if plugin in ("scalars", ""):
                            kind, canon = "scalar", f32(arr.item())
                        elif plugin == "histograms":
                            total, bins = int(round(arr[:, 2].sum())), rebinned_count(arr.shape[0])
                            kind, canon = "histogram", (total, bins, float(arr[0, 0]), float(arr[-1, 1]))
                        elif plugin == "images":
                            imgs = tuple(pixels_key(decode_pixels(b)) for b in arr.reshape(-1)[2:])
                            kind, canon = "image", imgs[0] if len(imgs) == 1 else imgs
                        elif plugin == "text":
                            strings = [b.decode("utf-8") for b in np.asarray(arr).reshape(-1)]
                            if arr.ndim >= 2:
                                width = arr.shape[-1]
                                rows = [tuple(strings[i : i + width]) for i in range(0, len(strings), width)]
                            else:
                                rows = [(s,) for s in strings]
                            kind, canon = "text", tuple(rows)
                            if tag.endswith("/text_summary"):
                                tag = tag[: -len("/text_summary")]
                        elif plugin == "audio":
                            clips = tuple(digest(b) for b in arr.reshape(-1, 2)[:, 0])
                            kind, canon = "audio", clips[0] if len(clips) == 1 else clips
                        elif plugin == "pr_curves":
                            kind, canon = "pr_curve", tuple(tuple(f32(x) for x in row) for row in arr)
                        elif plugin in ("graph_keras_model", "custom_scalars"):
                            graphs.append((default_prefix(rel), tag, bytes(arr.item())))
                            continue
                    if kind is None:
                        continue
                    m = re.fullmatch(r"(.+/(?:image|audio))/(\d+)", tag)
                    if m and field in ("image", "audio"):  # TF1 max_outputs > 1: merged per event
                        batch.setdefault(m.group(1), {})[int(m.group(2))] = (kind, canon)
                        continue
                    points[(key_for(rel, tag, series_dirs), step, kind, canon)] += 1
                for base, items in batch.items():
                    if len(items) == 1 and 0 not in items:
                        ((i, (kind, canon)),) = items.items()
                        points[(key_for(rel, f"{base}/{i}", series_dirs), step, kind, canon)] += 1
                        continue
                    kind = items[0][0]
                    canon = tuple(items[i][1] for i in range(len(items)))
                    canon = canon if len(canon) > 1 else canon[0]
                    points[(key_for(rel, base, series_dirs), step, kind, canon)] += 1
    return points, config, graphs


def key_for(rel: str, tag: str, series_dirs: dict[str, str]) -> str:
    if rel in series_dirs:
        return series_dirs[rel]
    prefix = default_prefix(rel)
    return f"{prefix}/{tag}" if prefix else tag


def tbparse_scalars(run_dir) -> Counter:
    """(dir, tag, step, float32) of every scalar, as tbparse reads them."""
    from tbparse import SummaryReader

    df = SummaryReader(str(run_dir), pivot=False, extra_columns={"dir_name"}).scalars
    out: Counter = Counter()
    for tag, step, value, dir_name in zip(df["tag"], df["step"], df["value"], df["dir_name"]):
        out[(dir_name or "", tag, int(step), f32(value))] += 1
    return out


# -- the W&B side: what the offline run holds -------------------------------------------------------


class WandbRun:
    """History, config, media and files of every local folder of one run."""

    def __init__(self, wandb_dir: str, run_id: str) -> None:
        self.rows: list[tuple[str, dict]] = []  # (folder, row)
        self.config: dict[str, object] = {}
        self.folders: list[str] = []
        for path, run in offline_runs(wandb_dir, run_id):
            folder = os.path.dirname(path)
            self.folders.append(folder)
            self.config.update(run.config)
            self.rows.extend((folder, row) for row in run.history)
        self.history = [row for _f, row in self.rows]

    def file(self, folder: str, rel: str) -> bytes:
        with open(os.path.join(folder, "files", rel), "rb") as f:
            return f.read()

    def run_files(self, under: str = "tensorboard") -> dict[str, bytes]:
        out = {}
        for folder in self.folders:
            base = os.path.join(folder, "files", under)
            for dirpath, _d, files in os.walk(base):
                for name in files:
                    path = os.path.join(dirpath, name)
                    with open(path, "rb") as f:
                        out[os.path.relpath(path, base).replace(os.sep, "/")] = f.read()
        return out

    def points(self) -> Counter:
        out: Counter = Counter()
        for folder, row in self.rows:
            step = row.get("global_step")
            for key, value in row.items():
                if key.startswith("_") or key == "global_step":
                    continue
                kind, canon = self._canon(folder, key, value)
                if kind == "pr_curve":
                    key = key[: -len("_table")]
                out[(key, step, kind, canon)] += 1
        return out

    def _canon(self, folder: str, key: str, value) -> tuple[str, object]:
        if not isinstance(value, dict):
            return "scalar", f32(value)
        t = value.get("_type")
        if t == "histogram":
            bins = value["bins"]
            total = int(round(sum(value["values"])))
            return "histogram", (total, len(value["values"]), float(bins[0]), float(bins[-1]))
        if t == "image-file":
            return "image", pixels_key(decode_pixels(self.file(folder, value["path"])))
        if t == "images/separated":
            return "image", tuple(pixels_key(decode_pixels(self.file(folder, p))) for p in value["filenames"])
        if t == "video-file":
            return "video", digest(self.file(folder, value["path"]))
        if t == "audio-file":
            return "audio", digest(self.file(folder, value["path"]))
        if t == "audio":
            return "audio", tuple(digest(self.file(folder, a["path"])) for a in value["audio"])
        if t == "table-file":
            table = json.loads(self.file(folder, value["path"]))
            if table["columns"][:3] == ["threshold", "precision", "recall"]:
                cols = list(zip(*table["data"]))
                # tb order: tp, fp, tn, fn, precision, recall
                order = [3, 4, 5, 6, 1, 2]
                return "pr_curve", tuple(tuple(f32(x) for x in cols[i]) for i in order)
            return "text", tuple(tuple(r[1:]) for r in table["data"])
        return f"unknown:{t}", json.dumps(value, sort_keys=True)


def wandb_run(wandb_dir: str, root, run_rel: str) -> WandbRun:
    return WandbRun(wandb_dir, run_id_for(root, run_rel))


def assert_same_points(got: Counter, want: Counter, what: str = "") -> None:
    missing, extra = want - got, got - want
    assert not missing and not extra, (
        f"{what}: {sum(missing.values())} missing, e.g. {list(missing)[:4]}; "
        f"{sum(extra.values())} extra, e.g. {list(extra)[:4]}"
    )


def assert_rows_once(run: WandbRun) -> None:
    steps = [r["_step"] for r in run.history]
    assert len(steps) == len(set(steps)), "a W&B row was sent twice"
    assert steps == sorted(steps), "W&B _step went backwards"


# -- writers ----------------------------------------------------------------------------------------


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """16-bit PCM WAV, as TF's audio encoder and torch's add_audio write it."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1 if pcm.ndim == 1 else pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def gif_bytes(frames: np.ndarray, duration_ms: int = 100) -> bytes:
    """An animated GIF (what add_video stores), encoded with Pillow."""
    from PIL import Image

    pics = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    pics[0].save(buf, format="GIF", save_all=True, append_images=pics[1:], duration=duration_ms, loop=0)
    return buf.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def have(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # noqa: BLE001
        return False
    return True


def summary_writer_types(w, rng: np.random.Generator, *, steps=range(0, 6), audio: bool = True,
                         figure: bool = True, graph: Callable | None = None, video: bool = True) -> None:
    """Every SummaryWriter method on `w` (torch and tensorboardX share the API)."""
    for step in steps:
        w.add_scalar("loss", float(rng.normal()), step)
        w.add_scalars("loss_parts", {"train": float(rng.random()), "val": float(rng.random())}, step)
        if step % 2 == 0:
            w.add_histogram("weights", rng.normal(size=2000), step)
            w.add_histogram("fine", rng.uniform(-4, 4, 20000), step, bins=np.linspace(-4, 4, 1000))
        if step % 3 == 0:
            w.add_image("sample", rng.integers(0, 255, (3, 9, 7), dtype=np.uint8), step)
            w.add_images("batch", rng.integers(0, 255, (4, 3, 6, 5), dtype=np.uint8), step)
            w.add_text("notes", f"step **{step}** ü {rng.integers(1000)}", step)
            labels = rng.integers(0, 2, 50)
            w.add_pr_curve("pr", labels, rng.random(50), step, num_thresholds=11)
        if audio and step % 3 == 1:
            w.add_audio("sound", np.sin(np.linspace(0, 80 * (step + 1), 1600)).astype(np.float32), step,
                        sample_rate=8000)
    if video:
        w.add_video("clip", rng.integers(0, 255, (1, 4, 3, 8, 8), dtype=np.uint8), 2, fps=4)
    if figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(1.2, 1.0), dpi=50)
        plt.plot([0, 1, 0.5])
        w.add_figure("figure", fig, 4)
    w.add_embedding(rng.random((6, 3)), metadata=list("abcdef"), tag="emb", global_step=1)
    w.add_custom_scalars({"losses": {"parts": ["Multiline", ["loss_parts/train", "loss_parts/val"]]}})
    if graph is not None:
        graph(w)
    w.add_hparams({"lr": 0.01, "batch": 32, "optimizer": "adam", "nesterov": True},
                  {"hparam/accuracy": 0.75, "hparam/loss": 0.5})


class RawWriter:
    """Events built from the tensorboard package's protos, written by its own EventFileWriter.

    This is how TensorFlow's summaries look on disk, without installing TensorFlow.
    """

    def __init__(self, logdir, suffix: str = "") -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._w = EventFileWriter(str(logdir), filename_suffix=suffix)
        self.wall = 1_700_000_000.0

    def summary(self, summary, step: int) -> None:
        from tensorboard.compat.proto import event_pb2

        self.wall += 1.0
        self._w.add_event(event_pb2.Event(step=step, wall_time=self.wall, summary=summary))

    def event(self, step: int, **fields) -> None:
        from tensorboard.compat.proto import event_pb2

        self.wall += 1.0
        self._w.add_event(event_pb2.Event(step=step, wall_time=self.wall, **fields))

    def close(self) -> None:
        self._w.close()


def tf2_value(tag: str, tensor, metadata=None):
    from tensorboard.compat.proto import summary_pb2

    summary = summary_pb2.Summary()
    v = summary.value.add(tag=tag, tensor=tensor)
    if metadata is not None:
        v.metadata.CopyFrom(metadata)
    return summary


def write_tf2(logdir, rng: np.random.Generator, steps=range(4)) -> None:
    """TF 2.x `tf.summary.*` / Keras layouts: tensor summaries, plugin metadata on the first only."""
    from tensorboard.compat.proto import graph_pb2, node_def_pb2
    from tensorboard.plugins.audio import metadata as audio_md
    from tensorboard.plugins.histogram import summary_v2 as hist_v2
    from tensorboard.plugins.hparams import summary_v2 as hp
    from tensorboard.plugins.image import metadata as image_md
    from tensorboard.plugins.pr_curve import metadata as pr_md
    from tensorboard.plugins.scalar import summary_v2 as scalar_v2
    from tensorboard.plugins.text import summary_v2 as text_v2
    from tensorboard.util import tensor_util

    w = RawWriter(logdir)
    train = RawWriter(os.path.join(str(logdir), "train"))  # Keras: one directory per phase
    val = RawWriter(os.path.join(str(logdir), "validation"))
    config = hp.hparams_config_pb(hparams=[hp.HParam("lr", hp.RealInterval(0.0, 1.0))],
                                  metrics=[hp.Metric("acc")])
    w.summary(config, 0)
    session = hp.hparams_pb({"lr": 0.25, "units": 64, "optimizer": "sgd", "dropout": True}, start_time_secs=1)
    w.summary(session, 0)
    keras = json.dumps({"class_name": "Sequential", "config": {"name": "tiny"}}).encode()
    keras_md = scalar_v2.metadata.create_summary_metadata("", "")
    keras_md.plugin_data.plugin_name = "graph_keras_model"
    w.summary(tf2_value("keras", tensor_util.make_tensor_proto(keras), keras_md), 0)
    graph = graph_pb2.GraphDef(node=[node_def_pb2.NodeDef(name="dense/kernel", op="VarHandleOp")])
    w.event(0, graph_def=graph.SerializeToString())
    first = True
    for step in steps:
        def md(summary):
            if not first:
                for v in summary.value:
                    v.ClearField("metadata")
            return summary

        w.summary(md(scalar_v2.scalar_pb("acc", float(rng.random()))), step)
        double = tensor_util.make_tensor_proto(np.array(rng.normal(), dtype=np.float64))
        w.summary(md(tf2_value("lr", double, scalar_v2.metadata.create_summary_metadata("", ""))), step)
        w.summary(md(hist_v2.histogram_pb("kernel", rng.normal(size=300), buckets=20)), step)
        pics = [rng.integers(0, 255, (5, 4, 3), dtype=np.uint8) for _ in range(1 if step % 2 else 3)]
        images = tensor_util.make_tensor_proto([b"4", b"5", *[png_bytes(p) for p in pics]])
        w.summary(md(tf2_value("inputs", images, image_md.create_summary_metadata("", ""))), step)
        w.summary(md(text_v2.text_pb("summary", f"**epoch** {step}: ünï")), step)
        w.summary(md(text_v2.text_pb("table", np.array([["a", f"{step}"], ["b", "x|y"]]))), step)
        w.summary(md(text_v2.text_pb("lines", np.array(["one", "two", f"{step}"]))), step)
        clips = [(wav_bytes(np.sin(np.linspace(0, 20 + i, 400)), 4000), f"clip {i}".encode())
                 for i in range(2)]
        audio = tensor_util.make_tensor_proto(np.array(clips, dtype=object))
        wav_md = audio_md.create_summary_metadata("", "", encoding=audio_md.Encoding.Value("WAV"))
        w.summary(md(tf2_value("speech", audio, wav_md)), step)
        n = 9
        counts = np.sort(rng.integers(0, 20, (4, n)), axis=1)[:, ::-1].astype(np.float32)
        prec, rec = rng.random(n).astype(np.float32), np.linspace(1, 0, n).astype(np.float32)
        pr = tensor_util.make_tensor_proto(np.vstack([counts, prec, rec]).astype(np.float32))
        w.summary(md(tf2_value("pr", pr, pr_md.create_summary_metadata("", "", n))), step)
        train.summary(md(scalar_v2.scalar_pb("epoch_loss", float(rng.random()))), step)
        val.summary(md(scalar_v2.scalar_pb("epoch_loss", float(rng.random()))), step)
        first = False
    for x in (w, train, val):
        x.close()


def write_tf1(logdir, rng: np.random.Generator, steps=range(3)) -> None:
    """TF 1.x (`tf.compat.v1.summary`) layouts: simple_value, histo, image and audio protos."""
    from tensorboard.compat.proto import summary_pb2

    w = RawWriter(logdir, suffix=".v1")
    for step in steps:
        s = summary_pb2.Summary()
        s.value.add(tag="loss_1", simple_value=float(rng.random()))
        data = rng.normal(size=100)
        limits = list(np.linspace(-3, 3, 12)) + [1.7976931348623157e308]
        counts = np.histogram(data, bins=[-1e308, *limits])[0]
        s.value.add(tag="act", histo=summary_pb2.HistogramProto(
            min=float(data.min()), max=float(data.max()), num=100, sum=float(data.sum()),
            bucket_limit=limits, bucket=[float(c) for c in counts]))
        for i in range(3):  # tf.compat.v1.summary.image("gen", x, max_outputs=3)
            pic = rng.integers(0, 255, (6, 4, 3), dtype=np.uint8)
            s.value.add(tag=f"gen/image/{i}", image=summary_pb2.Summary.Image(
                height=6, width=4, colorspace=3, encoded_image_string=png_bytes(pic)))
        pic = rng.integers(0, 255, (3, 3, 3), dtype=np.uint8)
        s.value.add(tag="single/image", image=summary_pb2.Summary.Image(
            height=3, width=3, colorspace=3, encoded_image_string=png_bytes(pic)))
        for i in range(2):
            s.value.add(tag=f"voice/audio/{i}", audio=summary_pb2.Summary.Audio(
                sample_rate=4000, num_channels=1, length_frames=300, content_type="audio/wav",
                encoded_audio_string=wav_bytes(np.sin(np.linspace(0, 9 + step + i, 300)), 4000)))
        w.summary(s, step)
    w.close()
