"""The object-store source through fsspec's file:// protocol: the same listing, range-read and
rewrite rules as s3://, gs:// and az://, without a server (tests/test_s3.py runs them on one)."""

from __future__ import annotations

import os
import shutil

import pytest
from tensorboardX import SummaryWriter

from helpers import assert_exactly_once, history_of, run_id_for, tb_scalar_points, write_run
from tracelet_daemon.cli import main
from tracelet_daemon.cli._common import parse_shard, parse_storage_options
from tracelet_daemon.errors import UsageError
from tracelet_daemon.runs import shard_of
from tracelet_daemon.sources import LocalSource, is_url, open_source
from tracelet_daemon.sources.objectstore import ObjectStoreSource


def upload(root, state_dir, *extra) -> int:
    return main(["upload", str(root), "--state-dir", str(state_dir), "--no-progress", "--log-level", "warning",
                 *extra])


def url(path) -> str:
    return "file://" + os.path.abspath(str(path))


def scalars_of(rows: list[dict], key: str) -> dict[int, float]:
    return {r["global_step"]: r[key] for r in rows if key in r}


def write_scalars(path_dir, steps, *, seed: float, name_suffix: str = "") -> str:
    """A tensorboardX log of `loss` = seed + step; returns the event file's path."""
    w = SummaryWriter(str(path_dir), filename_suffix=name_suffix)
    for step in range(steps):
        w.add_scalar("loss", seed + step, step)
    w.close()
    (name,) = [n for n in os.listdir(path_dir) if "tfevents" in n and n.endswith(name_suffix)]
    return os.path.join(str(path_dir), name)


def test_roots_pick_their_source(tmp_path):
    assert is_url("s3://bucket/runs") and is_url("file:///x") and is_url("gs://b") and is_url("az://c/p")
    assert not is_url(str(tmp_path)) and not is_url("runs/s3:/x")
    assert isinstance(open_source(str(tmp_path)), LocalSource)
    assert isinstance(open_source(url(tmp_path)), ObjectStoreSource)


def test_upload_of_a_url_root_lands_every_value_once(runs_root, state_dir, wandb_env):
    write_run(SummaryWriter, runs_root / "exp1", steps=120, seed=1)
    write_run(SummaryWriter, runs_root / "exp2", steps=80, tags=("loss",), image_every=0, seed=2)
    root = url(runs_root)
    assert upload(root, state_dir) == 0
    for run in ("exp1", "exp2"):
        rows = assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], run, run_id=run_id_for(root, run))
        assert any("eval/loss" in r for r in rows)  # deeper "directories" are key prefixes
    # a rerun sends nothing; data added later goes to the same run
    before = history_of(wandb_env["WANDB_DIR"], run_id_for(root, "exp2"))
    assert upload(root, state_dir) == 0
    assert history_of(wandb_env["WANDB_DIR"], run_id_for(root, "exp2")) == before


def test_object_regrown_by_reupload_is_read_from_the_acked_offset(runs_root, state_dir, wandb_env, tmp_path):
    """tensorboardX's S3 writer uploads its whole buffer again on each flush: the same bytes,
    longer. Simulated by replacing the file with a longer copy of the same log (new inode)."""
    full = write_scalars(tmp_path / "full", 300, seed=0.0)
    data = open(full, "rb").read()
    run = runs_root / "grow"
    run.mkdir()
    target = run / os.path.basename(full)
    for cut in (len(data) // 3, len(data) // 3 + 7, 2 * len(data) // 3, len(data)):  # +7: a partial record
        tmp = run / ".upload"
        tmp.write_bytes(data[:cut])
        os.replace(tmp, target)
        assert upload(url(runs_root), state_dir) == 0
    got = scalars_of(history_of(wandb_env["WANDB_DIR"], run_id_for(url(runs_root), "grow")), "loss")
    assert got == {s: float(s) for s in range(300)}


@pytest.mark.parametrize("longer", [True, False])
def test_object_replaced_by_another_is_read_from_the_start(runs_root, state_dir, wandb_env, tmp_path, capsys,
                                                           longer):
    first = write_scalars(tmp_path / "a", 100, seed=1000.0)
    second = write_scalars(tmp_path / "b", 160 if longer else 40, seed=5000.0)
    run = runs_root / "swap"
    run.mkdir()
    target = run / "events.out.tfevents.1.host"
    shutil.copyfile(first, target)
    assert upload(url(runs_root), state_dir) == 0
    tmp = run / ".upload"
    shutil.copyfile(second, tmp)
    os.replace(tmp, target)
    capsys.readouterr()
    assert main(["upload", url(runs_root), "--state-dir", str(state_dir), "--no-progress"]) == 0
    said = capsys.readouterr().err
    # a new process checks the first bytes (the window before the offset is checked within one)
    assert ("first bytes changed" if longer else "shorter") in said and "from the start" in said
    rows = history_of(wandb_env["WANDB_DIR"], run_id_for(url(runs_root), "swap"))
    values = sorted(r["loss"] for r in rows if "loss" in r)
    n = 160 if longer else 40
    assert values == sorted([1000.0 + s for s in range(100)] + [5000.0 + s for s in range(n)])


def test_deleted_object_is_forgotten_and_other_runs_go_on(runs_root, state_dir, wandb_env):
    write_run(SummaryWriter, runs_root / "keep", steps=30, image_every=0, hist_every=0, seed=4)
    write_run(SummaryWriter, runs_root / "gone", steps=30, image_every=0, hist_every=0, seed=5)
    assert upload(url(runs_root), state_dir) == 0
    shutil.rmtree(runs_root / "gone")
    write_run(SummaryWriter, runs_root / "keep", steps=20, start=30, image_every=0, hist_every=0, seed=6,
              suffix=".b")
    assert upload(url(runs_root), state_dir) == 0
    rows = history_of(wandb_env["WANDB_DIR"], run_id_for(url(runs_root), "keep"))
    assert sorted(r["global_step"] for r in rows if "loss" in r) == list(range(50))


def test_idle_runs_are_listed_with_back_off(runs_root):
    """An active run is listed on every rescan; one unchanged for `idle_after` backs off to one
    listing per `idle_max`: the bound on requests per idle run per minute."""
    for i in range(5):
        write_scalars(runs_root / f"run{i}", 3, seed=float(i))
    now = [0.0]
    src = ObjectStoreSource(url(runs_root), idle_after=60.0, idle_max=60.0, clock=lambda: now[0])
    listings: list[str] = []
    real_find = src._find

    times: list[float] = []

    def counting_find(path):
        listings.append(path)
        times.append(now[0])
        return real_find(path)

    src._find = counting_find
    assert len(src.scan()) == 5
    for _ in range(600):  # ten minutes of --rescan-interval 1
        now[0] += 1.0
        src.scan()
    per_run = {p: sum(1 for q in listings if q == p) for p in set(listings)}
    assert len(per_run) == 5, sorted(per_run.items())
    # first minute: every second (61 listings); then gaps of 1, 2, 4, ..., 32, 60 s: 13 more
    for count in per_run.values():
        assert 61 <= count <= 61 + 16, per_run
    last_five_minutes = sum(1 for t in times if t > 300)
    assert last_five_minutes <= 5 * 5 + 5  # at most one listing per idle run per minute
    counters = src.counters()
    assert counters["idle_prefixes"] == 5 and counters["prefixes"] == 5
    # the run that changes is listed at once again on the next rescan after its change
    write_scalars(runs_root / "run0", 2, seed=9.0, name_suffix=".new")
    before = len(listings)
    for _ in range(61):
        now[0] += 1.0
        src.scan()
    assert any(p.endswith("run0") for p in listings[before:])
    assert any(u.endswith(".new") for u in src.scan())


def test_shards_split_runs_with_no_overlap(runs_root, tmp_path, wandb_env):
    names = [f"r{i:02d}" for i in range(9)]
    for name in names:
        write_scalars(runs_root / name, 5, seed=float(len(name)))
    owners = {name: shard_of(name, 3) for name in names}
    assert owners == {name: shard_of(name, 3) for name in names}  # stable
    assert shard_of("a/b", 3) == shard_of("a" + os.sep + "b", 3)
    for k in range(3):
        assert upload(url(runs_root), tmp_path / f"state{k}", "--shard", f"{k}/3") == 0
    for name in names:
        rows = history_of(wandb_env["WANDB_DIR"], run_id_for(url(runs_root), name))
        assert sorted(r["global_step"] for r in rows if "loss" in r) == list(range(5)), name
    state_runs = []
    for k in range(3):
        import sqlite3

        with sqlite3.connect(tmp_path / f"state{k}" / "state.sqlite3") as db:
            keys = [row[0] for row in db.execute("SELECT key FROM runs")]
        assert all(shard_of(key.rsplit("/", 1)[1], 3) == k for key in keys)
        state_runs.extend(keys)
    assert len(state_runs) == len(set(state_runs)) == len(names)


def test_option_parsing_says_what_is_wrong():
    assert parse_storage_options(["anon=true", "endpoint_url=http://h:9000", "client_kwargs={\"a\": 1}"]) == {
        "anon": True, "endpoint_url": "http://h:9000", "client_kwargs": {"a": 1}}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_storage_options(["novalue"])
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) is None
    for bad in ("3/3", "x/2", "1", "-1/2", "0/0"):
        with pytest.raises(UsageError, match="K/N"):
            parse_shard(bad)


def test_missing_url_root_is_a_one_line_usage_error(tmp_path, capsys):
    assert main(["upload", url(tmp_path / "nope"), "--state-dir", str(tmp_path / "s"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and "nope" in err[0]


def test_tail_scalars_match_tensorboard(runs_root, state_dir, wandb_env):
    """The local copy and the URL root are the same bytes: TensorBoard's view equals W&B's."""
    write_run(SummaryWriter, runs_root / "cmp", steps=60, seed=8)
    assert upload(url(runs_root), state_dir) == 0
    rows = history_of(wandb_env["WANDB_DIR"], run_id_for(url(runs_root), "cmp"))
    want = tb_scalar_points(str(runs_root / "cmp"))
    assert sum(want.values()) == sum(1 for r in rows for k in r if k in ("loss", "acc", "eval/loss"))


def test_reader_notices_bytes_rewritten_before_its_offset(tmp_path):
    """Within one process the reader checks the bytes just before where it resumes: a rewritten
    object with the same first bytes (and so the same head checksum) is still noticed."""
    from tracelet_daemon.errors import RewrittenError
    from tracelet_daemon.records import read_batch

    path = write_scalars(tmp_path / "a", 50, seed=1.0)
    data = open(path, "rb").read()
    first = read_batch(path, 0, len(data) // 2)
    assert first.window_crc is not None and first.end > 0
    again = read_batch(path, first.end, expect_before=first.window_crc)  # unchanged: fine
    assert again.records and again.at_eof
    other = write_scalars(tmp_path / "b", 80, seed=2.0)
    forged = data[:32] + open(other, "rb").read()[32:]  # same head, other content
    with open(path, "wb") as f:
        f.write(forged)
    with pytest.raises(RewrittenError):
        read_batch(path, first.end, expect_before=first.window_crc)
    src = ObjectStoreSource(url(tmp_path))  # through a source handle (range reads) too
    src.scan()
    with pytest.raises(RewrittenError):
        read_batch(src.root + "/a/" + os.path.basename(path), first.end, expect_before=first.window_crc,
                   opener=src.open)
