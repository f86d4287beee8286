"""Every TensorBoard type from every common writer, replayed into offline W&B and compared exactly.

One corpus, written once by the real writers (tensorboardX, torch.utils.tensorboard, TF2 and TF1
layouts built from the tensorboard package's protos), uploaded once; each test checks one
writer or one type against what TensorBoard's own loader (and tbparse) find in the files.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os

import numpy as np
import pytest
from tensorboardX import SummaryWriter as TbxWriter

from helpers import HAVE_TORCH, NEEDS_TORCH, run_id_for
from types_helpers import (RawWriter, WandbRun, assert_rows_once, assert_same_points, env_for, f32, gif_bytes,
                           have, summary_writer_types, tb_points, tbparse_scalars, upload, write_tf1,
                           write_tf2)

pytestmark = pytest.mark.slow

LONG = "x" * 300
SERIES = {
    "tbx": {"loss_parts/train": "loss_parts/train", "loss_parts/val": "loss_parts/val"},
    "torch": {"loss_parts_train": "loss_parts/train", "loss_parts_val": "loss_parts/val"},
}


def _graph(w) -> None:
    import torch

    w.add_graph(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()), torch.zeros(1, 3))


def _write_tbx(run_dir, rng) -> None:
    w = TbxWriter(str(run_dir))
    summary_writer_types(w, rng, audio=have("soundfile"), figure=have("matplotlib"),
                         graph=_graph if HAVE_TORCH else None, video=have("moviepy"))
    # what add_video stores, encoded here so the GIF path runs without moviepy
    from tensorboardX.proto.summary_pb2 import Summary

    frames = rng.integers(0, 255, (3, 6, 6, 3), dtype=np.uint8)
    gif = Summary(value=[Summary.Value(tag="gif", image=Summary.Image(
        height=6, width=6, colorspace=3, encoded_image_string=gif_bytes(frames)))])
    w._get_file_writer().add_summary(gif, 5)
    w.close()


def _write_torch(run_dir, rng) -> None:
    from helpers import TorchWriter

    w = TorchWriter(str(run_dir))
    # torch's add_video needs moviepy < 2 (moviepy.editor): otherwise it stores an empty value,
    # which tracelet reports; it is part of the corpus on purpose
    summary_writer_types(w, rng, figure=have("matplotlib"), graph=_graph, video=True)
    w.close()


def _write_edge(run_dir) -> None:
    """Awkward tags, non-finite values, huge/negative steps, a step reset, W&B-reserved names."""
    raw = RawWriter(run_dir, suffix=".raw")  # tensorboardX would turn spaces into underscores
    from tensorboard.compat.proto import summary_pb2

    for i, tag in enumerate(("with space", " lead and trail ", "tab\there")):
        raw.summary(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=i + 0.5)]), 1)
    raw.close()
    w = TbxWriter(str(run_dir))
    for tag in ("ünïcödé/αβγ", LONG, "global_step", "_step"):
        w.add_scalar(tag, 1.5, 1)
    for step, value in enumerate([float("nan"), float("inf"), float("-inf"), 0.0, 3.4e38, 1e-45]):
        w.add_scalar("odd", value, step)
    for step in (0, 2**40, -3):
        w.add_scalar("steps", float(step % 7), step)
    for step in (10, 11, 12, 0, 1, 2):  # resumed from an earlier checkpoint: steps go back
        w.add_scalar("reset", float(step) / 10, step)
    w.add_text(LONG, "a long tag", 3)
    w.add_scalar("timed", 2.5, 77, walltime=1234567890.5)
    from tensorboardX.proto.summary_pb2 import HistogramProto, Summary

    inf = Summary(value=[Summary.Value(tag="inf_hist", histo=HistogramProto(
        min=float("-inf"), max=float("inf"), num=3, bucket_limit=[0.0, 1.7976931348623157e308],
        bucket=[1, 2]))])
    w._get_file_writer().add_summary(inf, 5)
    w.close()


def _write_shared(run_dir, rng) -> None:
    """Two writers appending to one directory at once; the second restarts its steps."""
    a = TbxWriter(str(run_dir), filename_suffix=".a")
    b = TbxWriter(str(run_dir), filename_suffix=".b")
    for step in range(40):
        a.add_scalar("loss", float(rng.normal()), step)
        b.add_scalar("acc", float(rng.random()), step)
        if step % 10 == 0:
            a.add_histogram("w", rng.normal(size=300), step)
            b.add_text("note", f"b at {step}", step)
            a.flush()
            b.flush()
    for step in range(10):  # writer b resumed from step 0
        b.add_scalar("acc", float(rng.random()) + 10, step)
    a.close()
    b.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("types")
    root = tmp / "runs"
    rng = np.random.default_rng(7)
    _write_tbx(root / "tbx", rng)
    if HAVE_TORCH:
        _write_torch(root / "torch", rng)
    write_tf2(root / "tf", rng)
    write_tf1(root / "tf", rng)
    _write_edge(root / "edge")
    _write_shared(root / "shared", rng)
    mp = pytest.MonkeyPatch()
    env = env_for(tmp)
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "TRACELET_STATE_DIR"):
        mp.delenv(var, raising=False)
    for k, v in env.items():
        mp.setenv(k, v)
    rc, logs = upload(root, tmp / "state")
    runs = {name: WandbRun(env["WANDB_DIR"], run_id_for(root, name)) for name in
            ("tbx", "torch", "tf", "edge", "shared") if (root / name).exists()}
    yield {"root": root, "rc": rc, "logs": logs, "runs": runs, "wandb_dir": env["WANDB_DIR"]}
    mp.undo()


def test_upload_succeeds_without_unexpected_warnings(corpus):
    assert corpus["rc"] == 0
    warnings = corpus["logs"].messages(logging.WARNING)
    expected = ("'global_step' is a W&B name", "'_step' is a W&B name", "too long for a W&B table name",
                "'inf_hist' has non-finite bounds")
    unexpected = [m for m in warnings if not any(e in m for e in expected)]
    assert not unexpected, unexpected


@pytest.mark.parametrize("name", ["tbx", "torch", "tf", "shared"])
def test_every_value_lands_exactly_once(corpus, name):
    """All types of one writer: W&B holds exactly what TensorBoard's loader finds, once each."""
    if name == "torch" and not HAVE_TORCH:
        pytest.skip(NEEDS_TORCH)
    run = corpus["runs"][name]
    assert_rows_once(run)
    want, _config, _graphs = tb_points(corpus["root"] / name, series_dirs=SERIES.get(name))
    assert_same_points(run.points(), want, name)


@pytest.mark.parametrize("name", ["tbx", "torch", "tf"])
def test_every_type_is_present(corpus, name):
    if name == "torch" and not HAVE_TORCH:
        pytest.skip(NEEDS_TORCH)
    kinds = {kind for (_k, _s, kind, _c) in corpus["runs"][name].points()}
    want = {"scalar", "histogram", "image", "text", "pr_curve"}
    if name != "tbx" or have("soundfile"):
        want.add("audio")
    if name == "tbx":
        want.add("video")
    assert want <= kinds, want - kinds


@pytest.mark.parametrize("name", ["tbx", "torch"])
def test_scalars_agree_with_tbparse(corpus, name):
    """tbparse (an independent parser) sees the same scalars, keyed by the documented mapping."""
    if name == "torch" and not HAVE_TORCH:
        pytest.skip(NEEDS_TORCH)
    series = SERIES[name]
    want = {}
    for (d, tag, step, value), n in tbparse_scalars(corpus["root"] / name).items():
        d = "" if d.replace(".", "").isdigit() else d  # add_hparams' time.time() directory
        key = series.get(d) or (f"{d}/{tag}" if d else tag)
        want[(key, step, value)] = want.get((key, step, value), 0) + n
    got = {}
    for (key, step, kind, canon), n in corpus["runs"][name].points().items():
        if kind == "scalar":
            got[(key, step, canon)] = got.get((key, step, canon), 0) + n
    assert got == want


@pytest.mark.parametrize("name", ["tbx", "torch"])
def test_add_scalars_series_are_keys_of_the_same_run(corpus, name):
    if name == "torch" and not HAVE_TORCH:
        pytest.skip(NEEDS_TORCH)
    root = corpus["root"]
    keys = {k for r in corpus["runs"][name].history for k in r}
    assert {"loss_parts/train", "loss_parts/val", "hparam/accuracy", "hparam/loss"} <= keys
    assert not any(k.startswith("loss_parts_") or k[:1].isdigit() for k in keys), keys
    # one step from three files (the run's own and one per series) is one W&B row
    rows = [r for r in corpus["runs"][name].history if "loss" in r]
    assert len(rows) == 6 and all({"loss_parts/train", "loss_parts/val"} <= set(r) for r in rows)
    # no extra W&B runs for the series or the hparams directory
    folders = os.listdir(os.path.join(corpus["wandb_dir"], "wandb"))
    ids = {run_id_for(root, n) for n in corpus["runs"]}
    assert all(any(i in f for i in ids) for f in folders if f.startswith("offline-run-")), folders
    assert len([f for f in folders if f.startswith("offline-run-")]) == len(corpus["runs"])


@pytest.mark.parametrize("name", ["tbx", "torch", "tf"])
def test_hparams_become_run_config(corpus, name):
    if name == "torch" and not HAVE_TORCH:
        pytest.skip(NEEDS_TORCH)
    _points, want, _graphs = tb_points(corpus["root"] / name)
    assert want, "the corpus has hparams"
    config = corpus["runs"][name].config
    for key, value in want.items():
        assert config.get(key) == value, (key, config.get(key), value)
    if name == "tf":
        assert config["optimizer"] == "sgd" and config["dropout"] is True and config["units"] == 64


@pytest.mark.parametrize("name", ["tbx", "torch", "tf"])
def test_graphs_and_model_configs_are_run_files(corpus, name):
    if name == "torch" and not HAVE_TORCH:
        pytest.skip(NEEDS_TORCH)
    if name == "tbx" and not HAVE_TORCH:
        pytest.skip("tensorboardX's add_graph needs torch")
    from google.protobuf import text_format
    from tensorboard.compat.proto import config_pb2, graph_pb2

    _points, _config, graphs = tb_points(corpus["root"] / name)
    files = corpus["runs"][name].run_files()
    assert graphs
    for prefix, kind, content in graphs:
        base = f"{prefix}/{kind}" if prefix else kind
        if kind == "graph":
            got = text_format.Parse(files[base + ".pbtxt"].decode(), graph_pb2.GraphDef())
            assert got == graph_pb2.GraphDef.FromString(content)
        elif kind.startswith("run_metadata/"):
            got = text_format.Parse(files[base + ".pbtxt"].decode(), config_pb2.RunMetadata())
            assert got == config_pb2.RunMetadata.FromString(content)
        elif kind == "custom_scalars__config__":
            from tensorboard.plugins.custom_scalar import layout_pb2

            got = text_format.Parse(files[base + ".pbtxt"].decode(), layout_pb2.Layout())
            assert got == layout_pb2.Layout.FromString(content)
        else:  # Keras model config
            assert files[base + ".json"] == content
    if name != "tf":
        assert "custom_scalars__config__.pbtxt" in files


def test_text_is_a_table_per_step(corpus):
    run = corpus["runs"]["tf"]
    tables = {(k, s): c for (k, s, kind, c) in run.points() if kind == "text"}
    assert tables[("summary", 1)] == (("**epoch** 1: ünï",),)
    assert tables[("table", 2)] == (("a", "2"), ("b", "x|y"))
    assert tables[("lines", 0)] == (("one",), ("two",), ("0",))
    tbx = {(k, s) for (k, s, kind, _c) in corpus["runs"]["tbx"].points() if kind == "text"}
    assert ("notes", 0) in tbx  # add_text's "/text_summary" suffix is not part of the key


def test_tf1_image_and_audio_items_become_lists(corpus):
    points = corpus["runs"]["tf"].points()
    gen = [c for (k, s, kind, c) in points if k == "gen/image"]
    voice = [c for (k, s, kind, c) in points if k == "voice/audio"]
    assert len(gen) == 3 and all(len(c) == 3 for c in gen)
    assert len(voice) == 3 and all(len(c) == 2 for c in voice)
    assert any(k == "single/image" for (k, _s, _kind, _c) in points)


def test_histograms_are_rebinned_with_count_and_range_kept(corpus):
    hists = [(k, c) for (k, _s, kind, c) in corpus["runs"]["tbx"].points() if kind == "histogram"]
    assert any(k == "fine" for k, _ in hists)
    for _key, (_total, bins, lo, hi) in hists:
        assert 1 <= bins <= 512 and lo <= hi


def test_pr_curves_have_a_table_and_a_line_chart(corpus):
    run = corpus["runs"]["tbx"]
    assert any("pr_table" in r for r in run.history)
    panel = run.config.get("_wandb/visualize/pr") or {}
    assert panel.get("panel_config", {}).get("fieldSettings") == {"x": "recall", "y": "precision"}


def test_edge_cases_are_kept_or_transformed_as_documented(corpus):
    run = corpus["runs"]["edge"]
    assert_rows_once(run)
    want, _c, _g = tb_points(corpus["root"] / "edge")
    renamed = {"global_step": "tb/global_step", "_step": "tb/_step"}
    digest = hashlib.sha256(LONG.encode()).hexdigest()[:8]
    short = f"{LONG[:51]}~{digest}"  # tables: W&B's artifact names stop at 128 characters
    expected = type(want)()
    for (key, step, kind, canon), n in want.items():
        key = renamed.get(key, key)
        if kind == "text" and key == LONG:
            key = short
        if kind == "histogram":  # +-inf bounds are clamped to +-DBL_MAX (with a warning)
            total, bins, lo, hi = canon
            canon = (total, bins, max(lo, -1.7976931348623157e308), min(hi, 1.7976931348623157e308))
        expected[(key, step, kind, canon)] += n
    got = run.points()
    assert_same_points(got, expected, "edge")
    odd = sorted((s, c) for (k, s, _kind, c) in got if k == "odd")
    assert [c for _s, c in odd] == ["nan", math.inf, -math.inf, 0.0, f32(3.4e38), f32(1e-45)]
    assert {s for (k, s, _kind, _c) in got if k == "steps"} == {0, 2**40, -3}
    reset = {r["global_step"]: r["reset"] for r in run.history if "reset" in r}
    assert reset == pytest.approx({10: 1.0, 11: 1.1, 12: 1.2, 0: 0.0, 1: 0.1, 2: 0.2})
    (timed,) = [r for r in run.history if "timed" in r]
    assert timed["_timestamp"] == 1234567890.5 and timed["global_step"] == 77
    (inf_hist,) = [r["inf_hist"] for r in run.history if "inf_hist" in r]
    assert inf_hist["bins"][0] == -1.7976931348623157e308 and inf_hist["bins"][-1] == 1.7976931348623157e308
    warned = " ".join(corpus["logs"].messages(logging.WARNING))
    assert "'global_step' is a W&B name" in warned and "too long for a W&B table name" in warned
    assert "'inf_hist' has non-finite bounds" in warned
    assert {"with space", " lead and trail ", "tab\there"} <= set().union(*run.history)


def test_two_writers_in_one_directory_share_rows(corpus):
    run = corpus["runs"]["shared"]
    first_round = [r for r in run.history if "loss" in r]
    assert len(first_round) == 40
    assert all("acc" in r for r in first_round)  # one step of both files is one W&B row
    resets = [r for r in run.history if "acc" in r and "loss" not in r]
    assert [r["global_step"] for r in resets] == list(range(10))


def test_unsupported_and_empty_values_are_reported(corpus):
    if not HAVE_TORCH:
        pytest.skip(NEEDS_TORCH)
    info = corpus["logs"].messages(logging.INFO)
    assert any("'clip'" in m and "no data" in m for m in info), "torch's empty add_video value is reported"
