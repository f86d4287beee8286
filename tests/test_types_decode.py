"""Decoding every TensorBoard type, key mapping and the W&B form of each value (no W&B run)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2, graph_pb2, node_def_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.plugins.pr_curve import metadata as pr_md
from tensorboard.plugins.text import summary_v2 as text_v2
from tensorboard.util import tensor_util

from tracelet_daemon.backends.wandb.convert import MAX_TABLE_KEY, convert_row, file_name, table_key
from tracelet_daemon.events import decode_event
from tracelet_daemon.runs import group_rows, join_key, locate, run_ref
from tracelet_daemon.values import (Audio, AudioBatch, Event, HParams, Histogram, Image, ImageBatch, PRCurve,
                                    Row, RunFile, Text, Video)
from types_helpers import gif_bytes, png_bytes, wav_bytes


def _event(summary, step=1, wall_time=10.0) -> bytes:
    return event_pb2.Event(step=step, wall_time=wall_time, summary=summary).SerializeToString()


def _value(tag, **kw):
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, **kw)])


# -- decoding ----------------------------------------------------------------------------------------


def test_text_torch_tf2_and_tables():
    torch_like = _value("notes/text_summary", tensor=tensor_util.make_tensor_proto(["hi **there**"]),
                        metadata=text_v2.text_pb("x", "y").value[0].metadata)
    ev = decode_event(_event(torch_like), {})
    assert ev.values == [("notes", Text(("hi **there**",), (1,)))]  # "/text_summary" dropped
    table_pb = text_v2.text_pb("t", np.array([["a", "b"], ["c", "ü"]]))
    ((tag, table),) = decode_event(_event(table_pb), {}).values
    assert tag == "t" and table.rows() == [["a", "b"], ["c", "ü"]]
    ((_, scalar),) = decode_event(_event(text_v2.text_pb("s", "plain")), {}).values
    assert scalar == Text(("plain",), ())


def test_audio_tf1_and_tf2():
    wav = wav_bytes(np.sin(np.linspace(0, 10, 200)), 8000)
    ev = decode_event(_event(_value("snd", audio=summary_pb2.Summary.Audio(
        sample_rate=8000, num_channels=1, length_frames=200, encoded_audio_string=wav,
        content_type="audio/wav"))), {})
    assert ev.values == [("snd", Audio(wav, 8000.0, "audio/wav", "", 200, 1))]
    from tensorboard.plugins.audio import metadata as audio_md

    md = audio_md.create_summary_metadata("", "", encoding=audio_md.Encoding.Value("WAV"))
    tensor = tensor_util.make_tensor_proto(np.array([(wav, b"first"), (wav, b"second")], dtype=object))
    ((tag, batch),) = decode_event(_event(_value("clips", tensor=tensor, metadata=md)), {}).values
    assert isinstance(batch, AudioBatch) and [c.label for c in batch.clips] == ["first", "second"]
    assert batch.clips[0].sample_rate == 8000 and batch.clips[0].frames == 200  # from the WAV header


def test_gif_image_summary_is_a_video():
    gif = gif_bytes(np.zeros((2, 4, 4, 3), dtype=np.uint8))
    ev = decode_event(_event(_value("clip", image=summary_pb2.Summary.Image(
        height=4, width=4, colorspace=3, encoded_image_string=gif))), {})
    assert ev.values == [("clip", Video(gif, "gif", 4, 4))]


def test_pr_curve():
    data = np.arange(30, dtype=np.float32).reshape(6, 5)
    ev = decode_event(_event(_value("pr", tensor=tensor_util.make_tensor_proto(data),
                                    metadata=pr_md.create_summary_metadata("", "", 5))), {})
    ((tag, pr),) = ev.values
    assert isinstance(pr, PRCurve) and pr.precision == tuple(data[4]) and pr.recall == tuple(data[5])
    assert pr.thresholds == (0.0, 0.25, 0.5, 0.75, 1.0)


def test_hparams_session_is_config_and_bookkeeping_is_reported():
    plugins: dict[str, str] = {}
    ev = decode_event(_event(hp.hparams_pb({"lr": 0.5, "opt": "adam", "flag": False, "units": 3})), plugins)
    assert ev.values == [("_hparams_/session_start_info",
                          HParams((("flag", False), ("lr", 0.5), ("opt", "adam"), ("units", 3.0))))]
    config = hp.hparams_config_pb(hparams=[hp.HParam("lr")], metrics=[hp.Metric("acc")])
    ev = decode_event(_event(config), plugins)
    # domains and metric names: no W&B counterpart, named in the report (issue 12)
    assert ev.values == [] and ev.skipped == [("_hparams_/experiment", "hparams experiment summary")]
    # torch/tensorboardX write the same with no tensor at all (metadata only)
    meta_only = summary_pb2.Summary()
    meta_only.value.add(tag="_hparams_/session_start_info",
                        metadata=hp.hparams_pb({"a": "b"}).value[0].metadata)
    assert decode_event(_event(meta_only), {}).values[0][1] == HParams((("a", "b"),))


def test_graphs_and_run_metadata_are_run_files():
    graph = graph_pb2.GraphDef(node=[node_def_pb2.NodeDef(name="n", op="Const")])
    ev = decode_event(event_pb2.Event(step=0, graph_def=graph.SerializeToString()).SerializeToString(), {})
    ((tag, f),) = ev.values
    assert tag == "graph" and isinstance(f, RunFile) and f.suffix == ".pbtxt" and b'op: "Const"' in f.content
    trm = event_pb2.TaggedRunMetadata(tag="step1", run_metadata=b"")
    payload = event_pb2.Event(step=3, tagged_run_metadata=trm).SerializeToString()
    ((tag, f),) = decode_event(payload, {}).values
    assert tag == "run_metadata/step1" and f.suffix == ".pbtxt"
    bad = decode_event(event_pb2.Event(step=0, graph_def=b"\xff\xff").SerializeToString(), {})
    assert bad.values[0][1].suffix == ".pb" and bad.values[0][1].content == b"\xff\xff"  # kept as written


def test_tf1_items_merge_into_batches_in_order():
    s = summary_pb2.Summary()
    pics = [np.full((2, 2, 3), i * 50, dtype=np.uint8) for i in range(3)]
    for i in (2, 0, 1):
        s.value.add(tag=f"gen/image/{i}",
                    image=summary_pb2.Summary.Image(encoded_image_string=png_bytes(pics[i])))
    s.value.add(tag="lonely/image/0",
                image=summary_pb2.Summary.Image(encoded_image_string=png_bytes(pics[0])))
    s.value.add(tag="x", simple_value=1.0)
    ev = decode_event(_event(s), {})
    assert [t for t, _ in ev.values] == ["gen/image", "lonely/image", "x"]  # one rule for one item too
    batch = ev.values[0][1]
    assert isinstance(batch, ImageBatch) and [i.encoded for i in batch.images] == [png_bytes(p) for p in pics]


def test_unknown_plugins_and_empty_values_are_reported():
    mesh = _value("m", tensor=tensor_util.make_tensor_proto(np.float32(1.0)))
    mesh.value[0].metadata.plugin_data.plugin_name = "mesh"  # a scalar-looking tensor: not guessed at
    assert decode_event(_event(mesh), {}).skipped == [("m", "tensor:mesh")]
    # torch add_video without moviepy < 2: a value with no data
    assert decode_event(_event(_value("vid")), {}).skipped == [("vid", "no data")]


# -- runs and keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix, tag, key", [
    ("", "loss", "loss"),
    ("eval", "loss", "eval/loss"),
    ("loss/train", "loss", "loss/train"),  # tensorboardX add_scalars
    ("a/b/val", "a/b", "a/b/val"),
    ("eval/loss/train", "loss", "eval/loss/train"),
    ("loss_train", "loss", "loss/train"),  # torch add_scalars
    ("a_b_val", "a/b", "a/b/val"),
    ("eval/loss_train", "loss", "eval/loss/train"),
    ("loss", "loss", "loss/loss"),  # a directory named like its tag is an ordinary prefix
    ("loss_", "loss", "loss_/loss"),
])
def test_join_key(prefix, tag, key):
    assert join_key(prefix, tag) == key


def test_locate_session_and_hparams_dirs(tmp_path):
    root = str(tmp_path)

    def loc(*parts):
        return locate(root, os.path.join(root, *parts, "events.out.tfevents.1"))

    assert loc("exp", "1795789123.4567") == ("exp", "")  # add_hparams' directory: no prefix
    assert loc("exp", "eval", "1795789123.4567") == ("exp", "eval")
    assert loc("1795789123.4567") == ("1795789123.4567", "")  # a run named by time stays a run
    assert loc("lightning_logs", "version_0") == (os.path.join("lightning_logs", "version_0"), "")
    assert loc("lightning_logs", "version_12", "loss_train") == (os.path.join("lightning_logs", "version_12"),
                                                                 "loss_train")
    assert loc("version_3") == ("version_3", "")
    session = os.path.join("out", "runs", "May01_12-30-59_host")
    assert loc("out", "runs", "May01_12-30-59_host") == (session, "")
    assert loc("exp", "eval") == ("exp", "eval")
    ref = run_ref(root, os.path.join("lightning_logs", "version_0"))
    assert ref.directory == os.path.join(root, "lightning_logs", "version_0")


def test_group_rows_applies_key_mapping():
    rows = group_rows([("loss_train", Event(1, 1.0, [("loss", 0.5)])),
                       ("loss_val", Event(1, 1.0, [("loss", 0.7)]))], 0)
    assert [r.values for r in rows] == [{"loss/train": 0.5, "loss/val": 0.7}]


# -- the W&B form --------------------------------------------------------------------------------------


def test_convert_routes_config_files_and_history():
    warnings: list[tuple[str, str]] = []
    row = Row(0, 5, 1.0, {
        "_hparams_/session_start_info": HParams((("lr", 0.1),)),
        "graph": RunFile(b"node {}", ".pbtxt"),
        "eval/../graph": RunFile(b"x", ".pbtxt"),
        "notes": Text(("a", "b"), (2,)),
        "loss": 0.25,
    })
    out = convert_row(row, lambda k, m: warnings.append((k, m)))
    assert out.config == {"lr": 0.1}
    assert out.files == [("tensorboard/graph.step5.pbtxt", b"node {}"),
                         ("tensorboard/eval/graph.step5.pbtxt", b"x")]
    assert set(out.history) == {"notes", "loss"} and not warnings
    table = out.history["notes"]
    assert table.columns == ["global_step", "text"] and table.data == [[5, "a"], [5, "b"]]


def test_table_keys_fit_wandb_artifact_names():
    assert table_key("short") == "short"
    long = "ä" * 10 + "k" * 100
    short = table_key(long)
    assert short != long and len(short) <= MAX_TABLE_KEY and short == table_key(long)
    assert len(table_key("p" * 70, "_table")) + len("_table") <= MAX_TABLE_KEY
    assert file_name("a b/../c", ".json", 0) == "tensorboard/a_b/c.json"


def test_audio_and_video_objects():
    import wandb

    wav = wav_bytes(np.zeros(100), 8000)
    row = Row(0, 1, 1.0, {"a": Audio(wav, 8000.0, frames=100),
                          "v": Video(gif_bytes(np.zeros((2, 3, 3, 3), np.uint8))),
                          "h": Histogram((0.0, 1.0, 2.0), (3.0, 4.0)),
                          "i": Image(png_bytes(np.zeros((2, 2, 3), np.uint8)))})
    out = convert_row(row, lambda k, m: None)
    assert isinstance(out.history["a"], wandb.Audio) and isinstance(out.history["v"], wandb.Video)
    assert isinstance(out.history["h"], wandb.Histogram) and isinstance(out.history["i"], wandb.Image)
    assert json.dumps(out.history["h"].histogram) == "[3.0, 4.0]"


def test_key_prefix_drops_only_add_hparams_directories():
    from tracelet_daemon.runs import key_prefix

    assert key_prefix("1795789123.4567") == ""
    assert key_prefix("eval/1795789123.4567") == "eval"
    assert key_prefix("v1.2/eval") == "v1.2/eval"
    assert key_prefix("") == ""
