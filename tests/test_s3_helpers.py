"""The S3 test infrastructure itself: moto's standalone server (tests/s3_server.py) and the real
TensorBoard writers writing into it (tests/s3_writers.py), read back with tbparse on a local copy."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time

import numpy as np
import pytest
from s3_server import MotoServer, moto_available, running_moto
from s3_writers import expected_scalars, read_event, spawn, split_url, wait_for_flush, write_tbx, write_torch

pytestmark = pytest.mark.skipif(not moto_available(), reason="moto[server] / boto3 not installed")

TBX_KEY = re.compile(r"^events\.out\.tfevents\.\d{10}\.[^/]+$")
TORCH_KEY = re.compile(r"^events\.out\.tfevents\.\d{10}\.[^/]+\.\d+\.\d+$")


@pytest.fixture
def moto(tmp_path):
    with running_moto(str(tmp_path / "moto")) as server:
        server.make_bucket("logs")
        yield server


def tb_scalars(local_dir) -> set[tuple[str, int, float]]:
    from tbparse import SummaryReader

    df = SummaryReader(str(local_dir)).scalars
    return {(t, int(s), float(np.float32(v))) for t, s, v in zip(df["tag"], df["step"], df["value"])}


def event_objects(server: MotoServer, prefix: str) -> list[dict]:
    return [o for o in server.list_objects("logs", prefix) if "/events.out.tfevents." in o["Key"]]


def test_server_env_and_store(moto, tmp_path):
    env = moto.env()
    assert moto.endpoint == f"http://127.0.0.1:{moto.port}"
    assert env["S3_ENDPOINT"] == env["AWS_ENDPOINT_URL"] == moto.endpoint  # with scheme: boto3 endpoint_url
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    moto.put_object("logs", "a/run1/f.bin", b"one")
    moto.put_object("logs", "a/run2/g.bin", b"two")
    moto.put_object("logs", "a/run10/h.bin", b"ten")
    keys = [o["Key"] for o in moto.list_objects("logs", "a/run1")]
    assert keys == ["a/run1/f.bin", "a/run10/h.bin"]  # a raw prefix, not a directory
    paths = moto.download_tree("logs", "a", str(tmp_path / "copy"))
    rel = sorted(os.path.relpath(p, tmp_path / "copy") for p in paths)
    assert rel == ["run1/f.bin", "run10/h.bin", "run2/g.bin"]
    assert (tmp_path / "copy" / "run2" / "g.bin").read_bytes() == b"two"
    moto.reset()
    assert moto.client().list_buckets()["Buckets"] == []


@pytest.mark.parametrize("kind", ["tbx", "torch"])
def test_writer_roundtrip(moto, tmp_path, kind):
    tags = ("loss", "acc")
    write = write_tbx if kind == "tbx" else write_torch
    result = write("s3://logs/exp/run1", 20, tags=tags, flush_every=5, env=moto.subprocess_env())
    bucket, key = split_url(result.url)
    assert bucket == "logs" and key == result.key and key.startswith("exp/run1/")
    assert (TBX_KEY if kind == "tbx" else TORCH_KEY).match(key.rsplit("/", 1)[1]), key
    objects = {o["Key"]: o for o in moto.list_objects("logs", "exp/")}
    if kind == "torch":  # tensorboard's gfile makedirs puts a zero-byte directory marker
        assert set(objects) == {key, "exp/run1/"} and objects["exp/run1/"]["Size"] == 0
    else:
        assert set(objects) == {key}
    moto.download_tree("logs", "exp", str(tmp_path / "copy"))
    assert tb_scalars(tmp_path / "copy") == expected_scalars(20, tags)


@pytest.mark.parametrize("kind", ["tbx", "torch"])
def test_flushes_rewrite_one_growing_key(moto, tmp_path, kind):
    """Each flush PUTs the whole file again to the same key: the body only grows (each earlier
    body is a prefix of the later one) and the ETag (MD5 of the body) changes."""
    proc = spawn(kind, "s3://logs/grow/run", 6, interval=0.3, env=moto.subprocess_env())
    try:
        opened = read_event(proc)
        assert opened and opened["event"] == "open", opened
        key = split_url(opened["key"])[1]
        bodies = []
        for step in range(6):
            wait_for_flush(proc, step)
            assert [o["Key"] for o in event_objects(moto, "grow/")] == [key]
            head = moto.head_object("logs", key)
            body = moto.get_object("logs", key)
            assert head["ETag"].strip('"') == hashlib.md5(body).hexdigest()
            bodies.append(body)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        proc.kill()
    for earlier, later in itertools.pairwise(bodies):
        assert len(later) > len(earlier) and later.startswith(earlier)
    assert moto.get_object("logs", key) == bodies[-1]  # close re-PUTs the same bytes
    modified = moto.list_objects("logs", key)[0]["LastModified"]
    assert modified.microsecond == 0  # moto: whole seconds (ListObjects ".000Z", HEAD an HTTP date)
    moto.download_tree("logs", "grow", str(tmp_path / "copy"))
    assert tb_scalars(tmp_path / "copy") == expected_scalars(6)


def test_freeze_thaw_keeps_data_and_writer_waits(moto, tmp_path):
    from botocore.exceptions import ReadTimeoutError

    moto.put_object("logs", "before/x", b"kept")
    proc = spawn("tbx", "s3://logs/frozen/run", 8, interval=0.3, env=moto.subprocess_env())
    try:
        wait_for_flush(proc, 1)
        t_freeze = time.time()
        moto.freeze(seconds=3)  # thawed by a timer while the writer and this test wait on it
        t0 = time.monotonic()
        with pytest.raises(ReadTimeoutError):  # the kernel still accepts: it is the READ that times out
            moto.client(timeout=1, attempts=1).list_objects_v2(Bucket="logs")
        assert time.monotonic() - t0 < 2.5
        assert not moto.healthy(timeout=0.5)
        # the writer's flushes block on the frozen server (botocore's default 60 s read timeout)
        # and complete after the thaw
        events = wait_for_flush(proc, 7)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        moto.thaw()
        proc.kill()
    flushes = [e for e in events if e["event"] == "flush"]
    # at most one flush was already under way when the group stopped; none completed while frozen
    assert not [e for e in flushes if t_freeze + 0.5 < e["t"] < t_freeze + 2.9], (t_freeze, flushes)
    assert [e["step"] for e in flushes][-1] == 7
    assert moto.get_object("logs", "before/x") == b"kept"
    moto.download_tree("logs", "frozen", str(tmp_path / "copy"))
    assert tb_scalars(tmp_path / "copy") == expected_scalars(8)

    with moto.frozen_for():
        assert moto.frozen and not moto.healthy(timeout=0.5)
    assert not moto.frozen and moto.healthy()


def test_kill_restart_same_port(moto):
    from botocore.exceptions import EndpointConnectionError

    port, pid = moto.port, moto.pid
    moto.put_object("logs", "k", b"v")
    moto.restart(keep_data=True)
    assert moto.port == port and moto.pid != pid
    assert moto.get_object("logs", "k") == b"v"

    moto.stop()
    t0 = time.monotonic()
    with pytest.raises(EndpointConnectionError):  # refused at once (no process on the port)
        moto.client(timeout=1, attempts=1).list_objects_v2(Bucket="logs")
    assert time.monotonic() - t0 < 2
    moto.start()
    assert moto.port == port
    assert moto.client().list_buckets()["Buckets"] == []  # in-memory store: a plain restart is empty

    moto.make_bucket("logs")
    moto.freeze()
    moto.stop()  # a frozen group still stops (SIGCONT before SIGTERM)
    assert moto.proc is None and not moto.healthy(timeout=0.5)
    moto.start()
    moto.kill()
    assert not moto.healthy(timeout=0.5)
