"""`tracelet watch|upload s3://...` against a real S3 protocol server (moto's standalone server on
127.0.0.1, started and stopped here by pid) through s3fs over HTTP; the logs are written into the
bucket by the real writers (tensorboardX with S3_ENDPOINT, torch's SummaryWriter through
TensorBoard's gfile), and what W&B holds is compared with tbparse on a local copy of the objects."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from helpers import assert_exactly_once, history_of, run_id_for
from s3_server import MotoServer, moto_available
from s3_writers import spawn, wait_for_flush, write_tbx, write_torch
from watch_helpers import DEADLINE, acked_offsets, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not moto_available(), reason="moto[server] is not installed")]
pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'tracelet[s3]')")

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzzSECRET"  # the AWS secret key the tests use: never printed
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT_DIR = os.path.dirname(HERE)


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(str(tmp_path_factory.mktemp("moto"))).start()
    yield server
    server.close()


@pytest.fixture
def bucket(moto, request):
    name = "t" + str(abs(hash(request.node.nodeid)) % 10**10)
    moto.make_bucket(name)
    return name


@pytest.fixture
def env(moto, wandb_env):
    """The environment of writers and of tracelet: the server, test credentials, offline W&B."""
    return moto.subprocess_env(dict(os.environ), AWS_SECRET_ACCESS_KEY=SECRET)


def tracelet(*args: str) -> list[str]:
    return [sys.executable, "-m", "tracelet_daemon", *args]


def run_upload(env: dict, root: str, state_dir, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(tracelet("upload", root, "--state-dir", str(state_dir), "--no-progress", *extra),
                          env=env, cwd=ROOT_DIR, capture_output=True, text=True, timeout=DEADLINE)


class Watch:
    def __init__(self, env: dict, root: str, state_dir, *extra: str) -> None:
        self.state_dir = str(state_dir)
        self.proc = subprocess.Popen(tracelet("watch", root, "--state-dir", self.state_dir, "--rescan-interval",
                                              "0.5", *extra), env=env, cwd=ROOT_DIR, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)

    def stop(self, sig: int = signal.SIGTERM) -> str:
        self.proc.send_signal(sig)
        _out, err = self.proc.communicate(timeout=DEADLINE)
        if sig == signal.SIGTERM:
            assert self.proc.returncode == 0, err[-3000:]
        return err

    def kill(self) -> str:
        os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.communicate(timeout=DEADLINE)[1]

    def status(self) -> dict:
        try:
            with open(os.path.join(self.state_dir, "status.json")) as f:
                snap = json.load(f)
        except (OSError, ValueError):
            return {}
        return snap if snap.get("pid") == self.proc.pid else {}


def caught_up(moto: MotoServer, bucket: str, prefix: str, *state_dirs) -> bool:
    """Every event object's bytes are acknowledged by W&B, in one of the state stores."""
    done: dict[str, int] = {}
    for d in state_dirs:
        done.update(acked_offsets(d))
    objects = [o for o in moto.list_objects(bucket, prefix) if "tfevents" in o["Key"]]
    return bool(objects) and all(done.get(f"s3://{bucket}/{o['Key']}", -1) == o["Size"] for o in objects)


def check_exactly_once(moto, bucket, prefix, runs, wandb_dir, tmp_path) -> None:
    local = tmp_path / f"copy-{bucket}"
    moto.download_tree(bucket, prefix, str(local))
    for run in runs:
        rows = assert_exactly_once(local, wandb_dir, run, run_id=run_id_for(f"s3://{bucket}/{prefix}", run))
        assert rows, run


def no_secret_anywhere(state_dir, *texts: str) -> None:
    for text in texts:
        assert SECRET not in text
    for dirpath, _dirs, files in os.walk(str(state_dir)):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                assert SECRET.encode() not in f.read(), name


def test_watch_follows_real_writers_in_a_bucket(moto, bucket, env, tmp_path, wandb_env):
    """tensorboardX re-uploads its whole buffer on each flush, torch's gfile replaces the object:
    both tailed by listing and range reads, every value once, and a restart resumes."""
    root = f"s3://{bucket}/runs"
    # the root holds no object yet: a prefix exists only once something is written under it
    state = tmp_path / "state"
    watch = Watch(env, root, state, "--storage-option", "default_block_size=1048576")
    writers = [spawn("tbx", f"{root}/tbx", 120, 0.01, env=env, tags=("loss", "acc"), flush_every=5),
               spawn("tbx", f"{root}/tbx/eval", 40, 0.02, env=env, flush_every=4),
               spawn("torch", f"{root}/torch", 80, 0.01, env=env, flush_every=5)]
    for w in writers:
        wait_for_flush(w, 20)
    wait_until(lambda: watch.status().get("totals", {}).get("rows", 0) > 0, what="first rows", proc=watch.proc)
    first = watch.stop()
    for w in writers:  # the writers go on while tracelet is down
        assert w.wait(timeout=DEADLINE) == 0, w.stderr.read()
    watch = Watch(env, root, state)
    wait_until(lambda: caught_up(moto, bucket, "runs/", state), what="caught up", proc=watch.proc)
    snap = watch.status()
    second = watch.stop()
    check_exactly_once(moto, bucket, "runs", ["tbx", "torch"], wandb_env["WANDB_DIR"], tmp_path)
    rows = history_of(wandb_env["WANDB_DIR"], run_id_for(root, "tbx"))
    assert any("eval/loss" in r for r in rows)
    assert snap["root"] == root and snap["source"]["requests_list"] > 0 and snap["source"]["requests_read"] > 0
    shown = subprocess.run(tracelet("status", "--state-dir", str(state)), env=env, cwd=ROOT_DIR,
                           capture_output=True, text=True, timeout=60).stdout
    assert f"root {root}" in shown and "object store:" in shown and "listing(s)" in shown, shown
    no_secret_anywhere(state, first, second, shown)


def test_retroactive_upload_of_a_bucket(moto, bucket, env, tmp_path, wandb_env):
    root = f"s3://{bucket}/old/logs"
    write_tbx(f"{root}/a", 300, tags=("loss", "acc"), flush_every=50, env=env)
    write_tbx(f"{root}/a/eval", 30, flush_every=10, env=env)
    write_torch(f"{root}/b", 150, flush_every=50, env=env)
    state = tmp_path / "state"
    done = run_upload(env, root, state)
    assert done.returncode == 0, done.stderr[-3000:]
    check_exactly_once(moto, bucket, "old/logs", ["a", "b"], wandb_env["WANDB_DIR"], tmp_path)
    before = {r: history_of(wandb_env["WANDB_DIR"], run_id_for(root, r)) for r in ("a", "b")}
    again = run_upload(env, root, state)  # a rerun sends nothing
    assert again.returncode == 0 and "0 row(s)" in again.stderr
    assert {r: history_of(wandb_env["WANDB_DIR"], run_id_for(root, r)) for r in ("a", "b")} == before
    no_secret_anywhere(state, done.stderr, again.stderr)


def test_sigkill_at_seeded_points_loses_and_repeats_nothing(moto, bucket, env, tmp_path, wandb_env):
    root = f"s3://{bucket}/runs"
    rng = random.Random(1414)
    state = tmp_path / "state"
    writer = spawn("tbx", f"{root}/live", 400, 0.01, env=env, tags=("loss", "acc"), flush_every=3)
    wait_for_flush(writer, 3)
    logs = []
    for _round in range(3):
        watch = Watch(env, root, state)
        wait_until(lambda w=watch: w.status(), what="a status snapshot", proc=watch.proc)
        time.sleep(rng.uniform(0.2, 2.0))
        logs.append(watch.kill())
    assert writer.wait(timeout=DEADLINE) == 0, writer.stderr.read()
    watch = Watch(env, root, state)
    try:
        wait_until(lambda: caught_up(moto, bucket, "runs/", state), what="caught up", proc=watch.proc)
    finally:
        logs.append(watch.stop())
    try:
        check_exactly_once(moto, bucket, "runs", ["live"], wandb_env["WANDB_DIR"], tmp_path)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- tracelet's logs, round by round ---\n" + "\n---\n".join(logs)) from None


def test_objects_replaced_longer_shorter_and_deleted(moto, bucket, env, tmp_path, wandb_env):
    """Objects rewritten under tracelet's feet, with watch running: a longer copy of the same
    bytes is read on from the acked offset; other content (shorter, or same head) from the start;
    a deleted object is forgotten while the other runs go on."""
    root = f"s3://{bucket}/runs"
    one = write_tbx(f"{root}/grow", 200, flush_every=200, env=env)
    body = moto.get_object(bucket, one.key)
    moto.put_object(bucket, one.key, body[: len(body) // 2 + 5])  # cut inside a record: pending tail
    other = write_tbx(f"{root}/gone", 20, flush_every=20, env=env)
    state = tmp_path / "state"
    watch = Watch(env, root, state)
    wait_until(lambda: acked_offsets(state).get(other.url) == len(moto.get_object(bucket, other.key)),
               what="first pass", proc=watch.proc)
    moto.put_object(bucket, one.key, body)  # the same log, longer: tensorboardX's re-upload
    wait_until(lambda: acked_offsets(state).get(one.url) == len(body), what="regrown object", proc=watch.proc)
    moto.client().delete_object(Bucket=bucket, Key=other.key)
    shorter = write_tbx(f"{root}/short", 30, flush_every=30, env=env)
    short_body = moto.get_object(bucket, shorter.key)
    moto.put_object(bucket, one.key, short_body)  # replaced by a shorter, different log
    wait_until(lambda: acked_offsets(state).get(one.url) == len(short_body), what="shorter object", proc=watch.proc)
    err = watch.stop()
    assert "shorter" in err and "from the start" in err
    rows = history_of(wandb_env["WANDB_DIR"], run_id_for(root, "grow"))
    steps = sorted(r["global_step"] for r in rows if "loss" in r)
    assert steps == sorted(list(range(200)) + list(range(30)))  # the first log once, the new one once
    assert [r for r in history_of(wandb_env["WANDB_DIR"], run_id_for(root, "gone")) if "loss" in r]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_server_down_for_30_seconds(moto, bucket, env, tmp_path, wandb_env):
    """The store stops answering for 30 s: watch keeps running, backs off (few requests), says so
    once, keeps its memory, and afterwards loses and repeats nothing."""
    root = f"s3://{bucket}/runs"
    write_tbx(f"{root}/r1", 100, flush_every=50, env=env)
    state = tmp_path / "state"
    watch = Watch(env, root, state, "--rescan-interval", "1")
    wait_until(lambda: caught_up(moto, bucket, "runs/", state), what="first pass", proc=watch.proc)
    time.sleep(2)
    rss_before = _rss_kib(watch.proc.pid)
    listed_before = watch.status()["source"]["requests_list"]
    moto.restart(keep_data=True, down_for=30)  # stopped, 30 s, started again with the same objects
    listed_during = watch.status()["source"]["requests_list"] - listed_before
    assert watch.proc.poll() is None
    write_tbx(f"{root}/r2", 60, flush_every=20, env=env)
    write_tbx(f"{root}/r1/eval", 40, flush_every=20, env=env)
    wait_until(lambda: caught_up(moto, bucket, "runs/", state), what="after the outage", proc=watch.proc)
    rss_after = _rss_kib(watch.proc.pid)
    err = watch.stop()
    # --rescan-interval 1 would list ~60 times in 30 s (x2 prefixes); the back-off keeps it to a few
    assert listed_during <= 12, listed_during
    assert err.count("cannot list") == 1 and "answers again" in err
    assert rss_after - rss_before < 50_000, (rss_before, rss_after)  # KiB: no growth with the outage
    check_exactly_once(moto, bucket, "runs", ["r1", "r2"], wandb_env["WANDB_DIR"], tmp_path)


def test_three_shards_split_a_bucket_exactly_once(moto, bucket, env, tmp_path, wandb_env):
    root = f"s3://{bucket}/runs"
    runs = [f"run{i}" for i in range(7)]
    writers = [spawn("tbx", f"{root}/{r}", 40, 0.01, env=env, flush_every=10) for r in runs]
    states = [tmp_path / f"state{k}" for k in range(3)]
    watches = [Watch(env, root, states[k], "--shard", f"{k}/3") for k in range(3)]
    for w in writers:
        assert w.wait(timeout=DEADLINE) == 0, w.stderr.read()
    wait_until(lambda: caught_up(moto, bucket, "runs/", *states), what="all shards caught up")
    for w in watches:
        w.stop()
    check_exactly_once(moto, bucket, "runs", runs, wandb_env["WANDB_DIR"], tmp_path)
    owners: dict[str, int] = {}
    for k, state in enumerate(states):
        for path in acked_offsets(state):
            run = path.split("/runs/", 1)[1].split("/", 1)[0]
            assert owners.setdefault(run, k) == k, f"{run} read by shards {owners[run]} and {k}"
    assert sorted(owners) == runs


def test_missing_bucket_is_a_one_line_error(moto, env, tmp_path):
    done = run_upload(env, "s3://no-such-bucket-here/runs", tmp_path / "state")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "does not exist" in lines[0], done.stderr
    assert SECRET not in done.stderr


def test_sigterm_while_the_store_hangs_exits_at_once(moto, bucket, env, tmp_path, wandb_env):
    """A frozen server (SIGSTOP: connections accepted, never answered) blocks listings for their
    timeouts; a stop walks away from them instead of waiting for --drain-timeout."""
    root = f"s3://{bucket}/runs"
    write_tbx(f"{root}/a", 30, flush_every=30, env=env)
    state = tmp_path / "state"
    watch = Watch(env, root, state, "--rescan-interval", "1")
    wait_until(lambda: caught_up(moto, bucket, "runs/", state), what="first pass", proc=watch.proc)
    moto.freeze()
    try:
        time.sleep(2.5)  # a rescan is now stuck in a request
        started = time.monotonic()
        watch.stop()  # asserts exit 0
        assert time.monotonic() - started < 10
    finally:
        moto.thaw()
    check_exactly_once(moto, bucket, "runs", ["a"], wandb_env["WANDB_DIR"], tmp_path)
