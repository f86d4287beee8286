"""Logs nobody here wrote (issue 12): several add_hparams sessions, hparams bookkeeping, row wall
times, TF1 image keys and meshes, written by the real writers (torch, tensorboardX) or built from
the tensorboard package's protos (TF layouts), replayed into offline W&B and read back from the
.wandb log and the media files the run stores.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections import Counter

import numpy as np
import pytest
from tensorboardX import SummaryWriter as TbxWriter

from helpers import HAVE_TORCH, NEEDS_TORCH, offline_runs, run_id_for
from types_helpers import WandbRun, decode_pixels, env_for, f32, pixels_key, png_bytes, upload, wav_bytes
from tracelet_daemon.events import decode_event

pytestmark = pytest.mark.slow

N_SESSIONS = 5


# -- independent readers: TensorBoard's loader, a GLB parser ------------------------------------------


def tb_events(directory):
    """(event, plugins) of every event file directly in `directory`, with TensorBoard's own loader."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    for name in sorted(f for f in os.listdir(directory) if "tfevents" in f):
        plugins: dict[str, str] = {}
        for event in LegacyEventFileLoader(os.path.join(directory, name)).Load():
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name:
                    plugins.setdefault(v.tag, v.metadata.plugin_data.plugin_name)
            yield event, plugins


def tb_sessions(run_dir) -> dict[str, tuple[dict, Counter]]:
    """{add_hparams folder: (its hparams, Counter of (metric tag, step, float32 value))}."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    out = {}
    for name in sorted(os.listdir(run_dir)):
        folder = os.path.join(str(run_dir), name)
        if not os.path.isdir(folder):
            continue
        hparams: dict = {}
        metrics: Counter = Counter()
        for event, plugins in tb_events(folder):
            for v in event.summary.value:
                plugin = plugins.get(v.tag, "")
                if plugin == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    if data.WhichOneof("data") == "session_start_info":
                        for k, hv in data.session_start_info.hparams.items():
                            hparams[k] = getattr(hv, hv.WhichOneof("kind"))
                elif v.WhichOneof("value") == "simple_value":
                    metrics[(v.tag, event.step, f32(v.simple_value))] += 1
                elif v.WhichOneof("value") == "tensor":
                    metrics[(v.tag, event.step, f32(tensor_util.make_ndarray(v.tensor).item()))] += 1
        out[name] = (hparams, metrics)
    return out


def metric_points(run: WandbRun) -> Counter:
    out: Counter = Counter()
    for row in run.history:
        for key, value in row.items():
            if not key.startswith("_") and key != "global_step":
                out[(key, row["global_step"], f32(value))] += 1
    return out


def read_glb(data: bytes) -> dict[str, np.ndarray]:
    """POSITION, COLOR_0 and the indices of a one-primitive binary glTF file, read by the spec."""
    magic, version, total = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON"
    doc = json.loads(data[20 : 20 + json_len])
    bin_at = 20 + json_len
    bin_len, bin_type = struct.unpack_from("<I4s", data, bin_at)
    assert bin_type == b"BIN\0"
    blob = data[bin_at + 8 : bin_at + 8 + bin_len]
    dtypes = {5126: "<f4", 5125: "<u4"}
    widths = {"VEC3": 3, "SCALAR": 1}

    def accessor(i: int) -> np.ndarray:
        acc = doc["accessors"][i]
        view = doc["bufferViews"][acc["bufferView"]]
        arr = np.frombuffer(blob, dtype=dtypes[acc["componentType"]], count=acc["count"] * widths[acc["type"]],
                            offset=view.get("byteOffset", 0) + acc.get("byteOffset", 0))
        return arr.reshape(acc["count"], widths[acc["type"]]) if acc["type"] != "SCALAR" else arr

    (prim,) = doc["meshes"][0]["primitives"]
    assert prim.get("mode", 4) == 4  # triangles
    out = {"vertices": accessor(prim["attributes"]["POSITION"]), "faces": accessor(prim["indices"]).reshape(-1, 3)}
    if "COLOR_0" in prim["attributes"]:
        out["colors"] = np.round(accessor(prim["attributes"]["COLOR_0"]) * 255)
    pos = doc["accessors"][prim["attributes"]["POSITION"]]
    assert pos["min"] == out["vertices"].min(axis=0).tolist() and pos["max"] == out["vertices"].max(axis=0).tolist()
    return out


def wandb_objects(wandb_dir: str, run_id: str) -> Counter:
    """(key, global_step, canonical mesh) of every 3D object W&B holds, read from the stored files."""
    out: Counter = Counter()
    for path, run in offline_runs(wandb_dir, run_id):
        folder = os.path.dirname(path)
        for row in run.history:
            for key, value in row.items():
                if not isinstance(value, dict) or not value.get("_type", "").startswith("object3D"):
                    continue
                objects = value["objects"] if value["_type"] == "object3D" else [value]
                items = []
                for obj in objects:
                    with open(os.path.join(folder, "files", obj["path"]), "rb") as f:
                        data = f.read()
                    if obj["path"].endswith(".glb"):
                        parts = read_glb(data)
                    else:  # a point cloud: [x, y, z] or [x, y, z, r, g, b] rows
                        rows = np.asarray(json.loads(data), dtype=np.float64)
                        parts = {"vertices": rows[:, :3]}
                        if rows.shape[1] == 6:
                            parts["colors"] = rows[:, 3:]
                    items.append(canon_mesh(parts))
                out[(key, row["global_step"], tuple(items))] += 1
    return out


def canon_mesh(parts: dict[str, np.ndarray]) -> tuple:
    return tuple((name, np.asarray(parts[name], dtype=np.float32).tobytes())
                 for name in ("vertices", "faces", "colors") if name in parts)


def tb_meshes(run_dir) -> Counter:
    """(tag, step, canonical mesh per batch item) as TensorBoard's loader and mesh metadata give them."""
    from tensorboard.plugins.mesh import plugin_data_pb2
    from tensorboard.util import tensor_util

    names = {1: "vertices", 2: "faces", 3: "colors"}
    found: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    content: dict[str, tuple[str, int]] = {}  # tag -> (mesh name, part): the metadata of its first value
    for event, plugins in tb_events(str(run_dir)):
        for v in event.summary.value:
            if plugins.get(v.tag) != "mesh":
                continue
            if v.metadata.plugin_data.content:
                md = plugin_data_pb2.MeshPluginData.FromString(v.metadata.plugin_data.content)
                # the metadata names the mesh without TF2 name scopes: the tag keeps them
                content.setdefault(v.tag, (v.tag[: v.tag.rindex("_")], md.content_type))
            name, part = content[v.tag]
            found.setdefault((name, event.step), {})[names[part]] = tensor_util.make_ndarray(v.tensor)
    out: Counter = Counter()
    for (name, step), parts in found.items():
        batch = parts["vertices"].shape[0]
        out[(name, step, tuple(canon_mesh({k: a[i] for k, a in parts.items()}) for i in range(batch)))] += 1
    return out


def offline_upload(tmp, root):
    """`tracelet upload` of `root` into offline W&B under `tmp` (module fixtures cannot use conftest's)."""
    env = env_for(tmp)
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "TRACELET_STATE_DIR"):
            mp.delenv(var, raising=False)
        for k, v in env.items():
            mp.setenv(k, v)
        rc, logs = upload(root, tmp / "state")
        return {"root": root, "rc": rc, "logs": logs, "wandb_dir": env["WANDB_DIR"]}


# -- 1, 2: several add_hparams sessions and their bookkeeping ----------------------------------------


def _hparams_sample_torch_or_tbx(writer_cls, log_dir) -> None:
    """tbparse's hparams sample: one writer, five add_hparams calls."""
    with writer_cls(os.path.join(str(log_dir), "run0")) as w:
        for i in range(N_SESSIONS):
            w.add_hparams({"lr": 0.1 * i, "bsize": i}, {"hparam/accuracy": 10 * i, "hparam/loss": 10 * i})


def session_end_pb(status: int = 1, end_time_secs: float = 0.0):
    """TF's hparams `session_end_pb` (tensorboard's own needs TensorFlow): a placeholder tensor."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=end_time_secs))
    summary = summary_pb2.Summary()
    summary.value.add(tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(data),
                      tensor=metadata.NULL_TENSOR)
    return summary


def _hparams_sample_tf(log_dir) -> None:
    """The same sessions as TF writes them (tensor scalars, hparams_pb, session end), one folder each."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp
    from tensorboard.plugins.scalar import summary_v2 as scalar_v2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    run0 = os.path.join(str(log_dir), "run0")
    EventFileWriter(run0).close()
    for i in range(N_SESSIONS):
        folder = os.path.join(run0, f"{1_796_000_000 + i}.{250_000 + 7 * i}")  # str(time.time())
        w = EventFileWriter(folder)
        wall = 1_796_000_000.0 + i
        config = hp.hparams_config_pb(hparams=[hp.HParam("lr"), hp.HParam("bsize")],
                                      metrics=[hp.Metric("hparam/accuracy"), hp.Metric("hparam/loss")])
        summaries = [config, hp.hparams_pb({"lr": 0.1 * i, "bsize": i}),
                     scalar_v2.scalar_pb("hparam/accuracy", 10.0 * i), scalar_v2.scalar_pb("hparam/loss", 10.0 * i),
                     session_end_pb(1, wall)]
        for summary in summaries:
            w.add_event(event_pb2.Event(step=0, wall_time=wall, summary=summary))
        w.close()


@pytest.fixture(scope="module", params=["torch", "tensorboardX", "tf"])
def hparams_sessions(request, tmp_path_factory):
    if request.param == "torch" and not HAVE_TORCH:
        pytest.skip(NEEDS_TORCH)
    tmp = tmp_path_factory.mktemp(f"hparams-{request.param}")
    root = tmp / "run"
    if request.param == "tf":
        _hparams_sample_tf(root)
    else:
        from helpers import writer_class

        _hparams_sample_torch_or_tbx(writer_class("torch" if request.param == "torch" else "tensorboardX"), root)
    return offline_upload(tmp, root)


def test_every_add_hparams_session_keeps_its_hparams_and_metrics(hparams_sessions):
    """First session: the writer's run, as before. Each further one: a run of its own, grouped under it."""
    root, wandb_dir = hparams_sessions["root"], hparams_sessions["wandb_dir"]
    assert hparams_sessions["rc"] == 0
    sessions = tb_sessions(root / "run0")
    assert len(sessions) == N_SESSIONS
    first, *further = sorted(sessions, key=float)
    seen: Counter = Counter()
    for folder in [first, *further]:
        hparams, metrics = sessions[folder]
        run_rel = "run0" if folder == first else os.path.join("run0", folder)
        run = WandbRun(wandb_dir, run_id_for(root, run_rel))
        assert run.history, f"no W&B run for session {folder}"
        assert {k: run.config[k] for k in hparams} == hparams, (folder, run.config)
        got = metric_points(run)
        assert got == metrics, (folder, got, metrics)
        seen.update(got)
        (_path, offline), *_ = offline_runs(wandb_dir, run_id_for(root, run_rel))
        assert offline.group == ("" if folder == first else "run0")
        assert offline.display_name == run_rel
    assert sum(seen.values()) == 2 * N_SESSIONS and max(seen.values()) == 1  # every metric exactly once
    assert sorted(v for (tag, _s, v) in seen if tag == "hparam/accuracy") == [10.0 * i for i in range(N_SESSIONS)]
    folders = [f for f in os.listdir(os.path.join(wandb_dir, "wandb")) if f.startswith("offline-run-")]
    assert len(folders) == N_SESSIONS, folders  # no run for anything else


def test_hparams_bookkeeping_is_reported_once_per_run(hparams_sessions):
    info = hparams_sessions["logs"].messages(logging.INFO)
    for tag in ("_hparams_/experiment", "_hparams_/session_end_info"):
        said = [m for m in info if f"tag {tag!r}" in m and "not replayed" in m]
        assert len(said) == N_SESSIONS, (tag, said)  # one per run: the writer's and the 4 further sessions
        assert len({m.split(":")[0] for m in said}) == N_SESSIONS


def test_hparams_bookkeeping_decodes_to_a_report():
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    def decoded(summary):
        return decode_event(event_pb2.Event(step=0, summary=summary).SerializeToString(), {})

    config = decoded(hp.hparams_config_pb(hparams=[hp.HParam("lr")], metrics=[hp.Metric("acc")]))
    assert config.values == [] and config.skipped == [("_hparams_/experiment", "hparams experiment summary")]
    end = decoded(session_end_pb(1))
    assert end.values == [] and end.skipped == [("_hparams_/session_end_info", "hparams session end status")]


def test_a_session_decision_survives_more_sessions_and_a_restart(tmp_path, wandb_env):
    """Upload after the first add_hparams, then after four more: the first stays in the writer's run."""
    root = tmp_path / "run"
    w = TbxWriter(str(root / "run0"))
    w.add_scalar("loss", 1.5, 0)
    w.add_hparams({"lr": 0.0, "bsize": 0}, {"hparam/accuracy": 0.0})
    w.flush()
    assert upload(root, tmp_path / "state")[0] == 0
    for i in range(1, N_SESSIONS):
        w.add_hparams({"lr": 0.1 * i, "bsize": i}, {"hparam/accuracy": 10.0 * i})
    w.close()
    assert upload(root, tmp_path / "state")[0] == 0
    wandb_dir = wandb_env["WANDB_DIR"]
    parent = WandbRun(wandb_dir, run_id_for(root, "run0"))
    assert metric_points(parent) == Counter({("loss", 0, 1.5): 1, ("hparam/accuracy", 0, 0.0): 1})
    assert parent.config["lr"] == 0.0 and parent.config["bsize"] == 0
    folders = sorted((d for d in os.listdir(root / "run0") if os.path.isdir(root / "run0" / d)), key=float)
    for i, folder in enumerate(folders[1:], start=1):
        run = WandbRun(wandb_dir, run_id_for(root, os.path.join("run0", folder)))
        assert metric_points(run) == Counter({("hparam/accuracy", 0, 10.0 * i): 1}), folder
        assert run.config["lr"] == pytest.approx(0.1 * i) and run.config["bsize"] == i


# -- 3, 4, 5: wall times, TF1 image keys, meshes ------------------------------------------------------

VERTS = np.array([[1, 1, 1], [-1, -1, 1], [1, -1, -1], [-1, 1, -1]], dtype=np.float32)
COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 0, 255]], dtype=np.int32)
FACES = np.array([[0, 2, 3], [0, 3, 1], [0, 1, 2], [1, 3, 2]], dtype=np.int32)


def _write_wall_time_jump(run_dir, rng) -> None:
    """One step whose values are written across a jump in wall time (tensorboardX's walltime=)."""
    w = TbxWriter(str(run_dir))
    w.add_scalar("a", 1.0, 5, walltime=1_700_000_000.0)
    w.add_scalar("b", 2.0, 5, walltime=1_700_000_000.5)  # close: the same row
    w.add_scalar("c", 3.0, 5, walltime=1_700_000_023.0)  # 23 s later, as in the profile plugin's log
    w.add_image("pic", rng.integers(0, 255, (3, 4, 5), dtype=np.uint8), 5, walltime=1_700_000_023.4)
    w.add_scalar("a", 4.0, 6, walltime=1_700_000_024.0)
    w.close()


def _tf1_summary(step_images: int, rng, scalar: float):
    from tensorboard.compat.proto import summary_pb2

    s = summary_pb2.Summary()
    s.value.add(tag="loss", simple_value=scalar)
    images = summary_pb2.Summary()
    for i in range(step_images):  # tf.compat.v1.summary.image("gen", x, max_outputs=3)
        pic = rng.integers(0, 255, (4, 3, 3), dtype=np.uint8)
        images.value.add(tag=f"gen/image/{i}", image=summary_pb2.Summary.Image(
            height=4, width=3, colorspace=3, encoded_image_string=png_bytes(pic)))
    images.value.add(tag="voice/audio/0", audio=summary_pb2.Summary.Audio(
        sample_rate=4000, num_channels=1, length_frames=200, content_type="audio/wav",
        encoded_audio_string=wav_bytes(np.sin(np.linspace(0, 7 + step_images, 200)), 4000)))
    return s, images


def _write_tf1(run_dir, rng) -> None:
    """TF1: scalars of step 0 with wall time 0, images and audio of that step with a real one;
    max_outputs=3 gives `gen/image/0..2` for a full batch and a lone `gen/image/0` for a batch of one."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    w = EventFileWriter(str(run_dir), filename_suffix=".v1")
    for step, (n, scalar_wall, media_wall) in enumerate([(3, 0.0, 1_700_000_100.0), (1, 1_700_000_200.0,
                                                                                     1_700_000_200.2)]):
        scalars, media = _tf1_summary(n, rng, 0.5 + step)
        w.add_event(event_pb2.Event(step=step, wall_time=scalar_wall, summary=scalars))
        w.add_event(event_pb2.Event(step=step, wall_time=media_wall, summary=media))
    w.close()


def _write_meshes(w) -> None:
    """add_mesh as torch and tensorboardX take it: a colored mesh, a colored point cloud, a bare
    mesh, and a batch of two meshes."""
    w.add_mesh("solid", vertices=VERTS[None], colors=COLORS[None], faces=FACES[None], global_step=0)
    w.add_mesh("cloud", vertices=VERTS[None] * 2, colors=COLORS[None][:, ::-1].copy(), global_step=1)
    w.add_mesh("solid", vertices=VERTS[None] + 0.5, faces=FACES[None][:, :2].copy(), global_step=2)
    w.add_mesh("pair", vertices=np.stack([VERTS, -VERTS]), colors=np.stack([COLORS, COLORS // 2]),
               faces=np.stack([FACES, FACES[:, ::-1]]), global_step=3)


def _write_tf2_meshes(run_dir) -> None:
    """TF2's mesh summary: one event per part, metadata on a tag's first summary only, name scope."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.mesh import metadata
    from tensorboard.plugins.mesh.plugin_data_pb2 import MeshPluginData
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    w = EventFileWriter(str(run_dir))
    parts = [(MeshPluginData.VERTEX, np.float32), (MeshPluginData.FACE, np.int32), (MeshPluginData.COLOR, np.uint8)]
    components = metadata.get_components_bitmask([p for p, _ in parts])
    for step in range(2):
        data = {MeshPluginData.VERTEX: VERTS[None] * (step + 1), MeshPluginData.FACE: FACES[None],
                MeshPluginData.COLOR: COLORS[None]}
        for content_type, dtype in parts:
            tensor = tensor_util.make_tensor_proto(data[content_type].astype(dtype))
            value = summary_pb2.Summary.Value(tag="scope/" + metadata.get_instance_name("tf_mesh", content_type),
                                              tensor=tensor)
            if step == 0:
                value.metadata.CopyFrom(metadata.create_summary_metadata(
                    "tf_mesh", None, content_type, components, list(data[content_type].shape), json_config="{}"))
            w.add_event(event_pb2.Event(step=step, wall_time=1_700_000_300.0 + step,
                                        summary=summary_pb2.Summary(value=[value])))
    w.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fidelity")
    root = tmp / "runs"
    rng = np.random.default_rng(12)
    _write_wall_time_jump(root / "jump", rng)
    _write_tf1(root / "tf1", rng)
    w = TbxWriter(str(root / "mesh_tbx"))
    _write_meshes(w)
    w.close()
    if HAVE_TORCH:
        from helpers import TorchWriter

        w = TorchWriter(str(root / "mesh_torch"))
        _write_meshes(w)
        w.close()
    _write_tf2_meshes(root / "mesh_tf2")
    return offline_upload(tmp, root)


def _value_times(run_dir) -> Counter:
    """(tag, step) -> wall time of every summary value, from TensorBoard's loader."""
    out: dict = {}
    for event, _plugins in tb_events(str(run_dir)):
        for v in event.summary.value:
            out[(v.tag, event.step)] = event.wall_time
    return out


def test_upload_succeeds_without_warnings(corpus):
    assert corpus["rc"] == 0
    assert not corpus["logs"].messages(logging.WARNING)
    assert not [m for m in corpus["logs"].messages() if "mesh" in m and "not replayed" in m]


def test_a_row_timestamp_stays_within_a_second_of_each_value(corpus):
    run = WandbRun(corpus["wandb_dir"], run_id_for(corpus["root"], "jump"))
    times = _value_times(corpus["root"] / "jump")
    held = {}
    for row in run.history:
        for key in row:
            if not key.startswith("_") and key != "global_step":
                assert (key, row["global_step"]) not in held, "a value was sent twice"
                held[(key, row["global_step"])] = row["_timestamp"]
    assert set(held) == set(times)  # every value, exactly once
    for (key, step), stamp in held.items():
        assert abs(stamp - times[(key, step)]) <= 1.0, (key, step, stamp, times[(key, step)])
    rows5 = [r for r in run.history if r["global_step"] == 5]
    assert [sorted(k for k in r if not k.startswith("_") and k != "global_step") for r in rows5] == [
        ["a", "b"], ["c", "pic"]]


def test_tf1_media_do_not_take_the_wall_time_of_the_step_scalars(corpus):
    run = WandbRun(corpus["wandb_dir"], run_id_for(corpus["root"], "tf1"))
    step0 = {k: r["_timestamp"] for r in run.history if r["global_step"] == 0 for k in r
             if not k.startswith("_") and k != "global_step"}
    assert step0.pop("loss") == 0.0
    assert {k.split("/")[0] for k in step0} == {"gen", "voice"}  # (the keys themselves: the next test)
    assert set(step0.values()) == {1_700_000_100.0}


def test_tf1_numbered_items_are_one_key_whatever_the_batch(corpus):
    """`gen/image/0..2` (a full batch) and a lone `gen/image/0` (a batch of one) both land as `gen/image`."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    run = WandbRun(corpus["wandb_dir"], run_id_for(corpus["root"], "tf1"))
    want: Counter = Counter()
    (name,) = os.listdir(corpus["root"] / "tf1")
    for event in LegacyEventFileLoader(str(corpus["root"] / "tf1" / name)).Load():
        pics = [pixels_key(decode_pixels(v.image.encoded_image_string)) for v in event.summary.value
                if v.tag.startswith("gen/image/")]
        if pics:
            want[("gen/image", event.step, "image", pics[0] if len(pics) == 1 else tuple(pics))] += 1
    got = Counter({p: n for p, n in run.points().items() if p[2] == "image"})
    assert got == want and len(want) == 2
    keys = set().union(*run.history)
    assert "gen/image/0" not in keys and "voice/audio/0" not in keys and "voice/audio" in keys


@pytest.mark.parametrize("name", ["mesh_tbx", "mesh_torch", "mesh_tf2"])
def test_meshes_are_3d_objects_with_their_colors_exactly_once(corpus, name):
    if name == "mesh_torch" and not HAVE_TORCH:
        pytest.skip(NEEDS_TORCH)
    want = tb_meshes(corpus["root"] / name)
    got = wandb_objects(corpus["wandb_dir"], run_id_for(corpus["root"], name))
    assert got == want and sum(want.values()) == (2 if name == "mesh_tf2" else 4)
    kinds = {len(parts) for (_k, _s, items), _n in want.items() for parts in items}
    assert kinds == {3} if name == "mesh_tf2" else kinds == {2, 3}  # bare meshes and point clouds too


def test_mesh_files_are_glb_for_meshes_and_points_without_faces(corpus):
    folder = os.path.dirname(offline_runs(corpus["wandb_dir"], run_id_for(corpus["root"], "mesh_tbx"))[0][0])
    media = sorted(os.listdir(os.path.join(folder, "files", "media", "object3D")))
    assert sum(f.endswith(".glb") for f in media) == 4 and sum(f.endswith(".pts.json") for f in media) == 1
