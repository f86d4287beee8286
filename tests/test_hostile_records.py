"""Issue 11, items 5 and 6: one hostile record must not stop `tracelet upload` or blow its memory.

Each case is a tfevents file holding a healthy scalar, one hostile record and another healthy
scalar, in a run directory next to a healthy run written by tensorboardX. A real `tracelet
upload` (a subprocess, offline W&B) must exit normally, land every healthy value exactly once
(read back from the `.wandb` log) and report the hostile item once: refused records in one line
naming the file (and, for a limit, its variable); values W&B could not name as they are (long
or control-character tags) land under a shortened name, said once.
"""

from __future__ import annotations

import functools
import glob
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

import pytest
from tensorboardX import SummaryWriter

import hostile_payloads as hp
from helpers import assert_exactly_once, history_of, image_pixels, png_pixels, run_id_for, scalar_points, write_run

pytestmark = pytest.mark.slow

HOSTILE_FILE = "events.out.tfevents.1700000000.hostile"


@functools.lru_cache(maxsize=None)
def _big_png() -> bytes:
    return hp.png(12000, 12000)  # 432 MB of pixels in ~420 KB


SMALL_PNG = hp.png(4, 3, color=200)


@dataclass(frozen=True)
class Refused:
    """The record is skipped; one log line names the file and says `why`."""

    why: str


@dataclass(frozen=True)
class Lands:
    """The value lands under a shortened name; one log line says which (`said`)."""

    said: str
    check: str  # "image": the picture under a key starting with `prefix`; "file": a run file holding `content`
    prefix: str
    content: str = ""


CASES = {
    # item 5: records that decoded into an uncaught exception
    "shape-2**40": (hp.huge_shape_histogram, Refused("TRACELET_MAX_TENSOR_ELEMENTS")),
    "tf1-image-5000-digits": (lambda: hp.tf1_image("x/image/" + "7" * 5000, SMALL_PNG),
                              Lands("cannot name a W&B media file", "image", "x/image/777")),
    "run-metadata-300-char-tag": (lambda: hp.run_metadata("t" * 300),
                                  Lands("too long for a file name", "file", "run_metadata_ttt", 'device: "/cpu:0"')),
    "custom-scalars-300-char-tag": (lambda: hp.custom_scalars("c" * 300),
                                    Lands("too long for a file name", "file", "ccc", 'title: "losses"')),
    "image-tag-with-nul": (lambda: hp.tf1_image("x\x00y", SMALL_PNG),
                           Lands("cannot name a W&B media file", "image", "x_y~")),
    "image-tag-1000-deep": (lambda: hp.tf1_image("a/" * 1000 + "img", SMALL_PNG),
                            Lands("cannot name a W&B media file", "image", "a/a/a/")),
    # item 6: memory bombs, refused before anything large is allocated
    "histogram-broadcast-1e7": (lambda: hp.broadcast_histogram(10**7), Refused("TRACELET_MAX_TENSOR_ELEMENTS")),
    "text-broadcast-1e6": (lambda: hp.broadcast_text(10**6), Refused("a broadcast larger than its")),
    "five-12000x12000-pngs": (lambda: hp.image_batch([_big_png()] * 5, 12000, 12000),
                              Refused("TRACELET_MAX_IMAGE_PIXELS")),
    "4M-empty-summary-values": (lambda: hp.empty_values(4_000_000), Refused("TRACELET_MAX_DECODED_BYTES")),
}


def _upload(root, state_dir) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tracelet_daemon", "upload", str(root), "--state-dir", state_dir, "--no-progress",
           "--jobs", "1", "--log-level", "warning"]
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=600)


def _run_files(wandb_dir: str, run_id: str) -> dict[str, bytes]:
    out = {}
    for folder in glob.glob(os.path.join(wandb_dir, "wandb", f"offline-run-*-{run_id}")):
        base = os.path.join(folder, "files", "tensorboard")
        for dirpath, _dirs, names in os.walk(base):
            for name in names:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, base)] = f.read()
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_one_hostile_record_is_contained(runs_root, state_dir, wandb_env, case):
    build, expect = CASES[case]
    write_run(SummaryWriter, runs_root / "healthy", steps=40, hist_every=10, image_every=20, eval_every=10)
    (runs_root / "hostile").mkdir()
    hp.write_events(str(runs_root / "hostile" / HOSTILE_FILE),
                    [hp.scalar("before", 0, 1.5), build(), hp.scalar("after", 2, 2.5)])

    proc = _upload(runs_root, state_dir)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    wandb_dir = wandb_env["WANDB_DIR"]
    assert_exactly_once(runs_root, wandb_dir, "healthy")
    rows = history_of(wandb_dir, run_id_for(runs_root, "hostile"))
    steps = [r["_step"] for r in rows]
    assert len(steps) == len(set(steps)), "a W&B row was sent twice"
    points = scalar_points(rows)
    assert points[("before", 0, 1.5)] == 1 and points[("after", 2, 2.5)] == 1, points

    lines = proc.stderr.splitlines()
    if isinstance(expect, Refused):
        naming = [line for line in lines if HOSTILE_FILE in line]
        assert len(naming) == 1, naming  # reported once, naming the file
        assert expect.why in naming[0], naming[0]
        assert len(naming[0]) < 1000  # one readable line, not the hostile bytes
        assert len(rows) == 2  # nothing of the hostile record landed
    else:
        said = [line for line in lines if expect.said in line]
        assert len(said) == 1, proc.stderr[-3000:]
        assert len(said[0]) < 1000
        if expect.check == "image":
            images = {k: px for (k, step), px in image_pixels(wandb_dir, run_id_for(runs_root, "hostile")).items()
                      if step == 1}
            assert len(images) == 1 and next(iter(images)).startswith(expect.prefix), list(images)
            assert (next(iter(images.values())) == png_pixels(SMALL_PNG)).all()
        else:
            files = _run_files(wandb_dir, run_id_for(runs_root, "hostile"))
            (name,) = [n for n in files if n.startswith(expect.prefix)]
            assert all(len(part) < 255 for part in name.split(os.sep)), name
            assert expect.content in files[name].decode()


def test_every_hostile_record_in_one_file_and_the_rest_goes_on(runs_root, state_dir, wandb_env):
    """All the cases one after another in one file: each refused once, every healthy value lands."""
    write_run(SummaryWriter, runs_root / "healthy", steps=30, hist_every=10, image_every=0, eval_every=0)
    (runs_root / "hostile").mkdir()
    payloads = []
    for i, (build, _expect) in enumerate(CASES.values()):
        payloads += [hp.scalar("ok", 2 * i, float(i)), build()]
    hp.write_events(str(runs_root / "hostile" / HOSTILE_FILE), payloads)

    proc = _upload(runs_root, state_dir)

    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "healthy")
    rows = history_of(wandb_env["WANDB_DIR"], run_id_for(runs_root, "hostile"))
    got = Counter((k, s) for (k, s, _v) in scalar_points(rows).elements() if k == "ok")
    assert got == Counter(("ok", 2 * i) for i in range(len(CASES)))
    # the engine names a file once however many of its records it skips (they are counted)
    assert sum(HOSTILE_FILE in line for line in proc.stderr.splitlines()) == 1


def test_a_limit_is_raised_with_its_variable(tmp_path, wandb_env, monkeypatch):
    """The variable a refusal names is the one that lets the record through."""
    from tensorboard.compat.proto import tensor_pb2, types_pb2

    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=hp._shape(6),
                               string_val=[f"row {i}".encode() for i in range(6)])
    outcome = {}
    for limit in ("5", "6"):
        root = tmp_path / f"runs-{limit}"
        (root / "notes").mkdir(parents=True)
        hp.write_events(str(root / "notes" / HOSTILE_FILE), [hp.event(1, hp.tensor_value("notes", "text", t))])
        monkeypatch.setenv("TRACELET_MAX_TABLE_ROWS", limit)
        proc = _upload(root, str(tmp_path / f"state-{limit}"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        outcome[limit] = ([line for line in proc.stderr.splitlines() if HOSTILE_FILE in line],
                          history_of(wandb_env["WANDB_DIR"], run_id_for(root, "notes")))
    (line,), rows = outcome["5"]
    assert "max_table_rows=5" in line and "TRACELET_MAX_TABLE_ROWS" in line and not rows
    said, (row,) = outcome["6"]
    assert not said and row["notes"]["nrows"] == 6
