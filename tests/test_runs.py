"""Run identity, key prefixes and row grouping (pure functions)."""

from __future__ import annotations

import os
import re

import pytest

from tracelet_daemon.runs import group_rows, locate, make_run_id, run_ref
from tracelet_daemon.values import Event


def test_locate_maps_first_level_dirs_to_runs_and_deeper_to_prefixes(tmp_path):
    root = str(tmp_path)
    assert locate(root, os.path.join(root, "exp1", "events.out.tfevents.1")) == ("exp1", "")
    assert locate(root, os.path.join(root, "exp1", "eval", "events.out.tfevents.1")) == ("exp1", "eval")
    assert locate(root, os.path.join(root, "exp1", "a", "b", "events.out.tfevents.1")) == ("exp1", "a/b")
    assert locate(root, os.path.join(root, "events.out.tfevents.1")) == ("", "")
    with pytest.raises(ValueError):
        locate(root, "/elsewhere/events.out.tfevents.1")


def test_run_ids_are_stable_valid_and_distinct(tmp_path):
    a = run_ref(str(tmp_path / "root1"), "exp 1/../ü")
    b = run_ref(str(tmp_path / "root2"), "exp 1/../ü")
    assert a.run_id == run_ref(str(tmp_path / "root1"), "exp 1/../ü").run_id
    assert a.run_id != b.run_id
    for rid in (a.run_id, b.run_id, make_run_id("", "x"), make_run_id("../../etc", "y")):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", rid), rid
    root_run = run_ref(str(tmp_path / "myroot"), "")
    assert root_run.name == "myroot" and root_run.directory == str(tmp_path / "myroot")


def test_group_rows_merges_one_step_across_files_and_never_overwrites():
    events = [
        ("", Event(1, 10.0, [("loss", 0.5)])),
        ("eval", Event(1, 10.5, [("loss", 0.7)])),
        ("", Event(2, 11.0, [("loss", 0.4), ("epoch", 0.0)])),
        ("", Event(2, 11.1, [("epoch", 0.0)])),  # Lightning logs epoch twice at one step
        ("", Event(1, 12.0, [("loss", 0.9)])),  # step went backwards (resumed training)
        ("", Event(3, 13.0, [])),
    ]
    rows = group_rows(events, first_seq=100)
    assert [(r.seq, r.step, r.values) for r in rows] == [
        (100, 1, {"loss": 0.5, "eval/loss": 0.7}),
        (101, 2, {"loss": 0.4, "epoch": 0.0}),
        (102, 2, {"epoch": 0.0}),
        (103, 1, {"loss": 0.9}),
    ]
    assert rows[0].wall_time == 10.0
    assert group_rows(events, 100) == rows  # deterministic: replay yields the same rows


# -- several add_hparams sessions (issue 12) ------------------------------------------------------------

FOLDERS = ["1796032715.145016", "1796032715.1511533", "1796032715.1572304"]  # str(time.time()) of 3 calls


def _listing(names):
    """A `listdir` for locate: `names` are the subdirectories of every directory."""
    return lambda _directory: list(names)


def test_the_first_add_hparams_folder_is_its_run_and_each_further_one_a_run_of_its_own(tmp_path):
    root = str(tmp_path)

    def loc(listing, *parts):
        return locate(root, os.path.join(root, *parts, "events.out.tfevents.1"), _listing(listing))

    first, second, third = FOLDERS
    # live, the folders appear one by one; after a restart (or in one upload) they are all there:
    # each folder gets the same answer whenever it is asked
    for listing in (FOLDERS[:1], FOLDERS[:2], FOLDERS, [third, "eval", first, second]):
        assert loc(listing, "run0", first) == ("run0", "")
    for listing in (FOLDERS[:2], FOLDERS, list(reversed(FOLDERS))):
        assert loc(listing, "run0", second) == (os.path.join("run0", second), "")
    # keys stay those of the writer's run, so sessions compare key by key
    assert loc(FOLDERS, "exp", "eval", third) == (os.path.join("exp", "eval", third), "eval")
    assert loc(FOLDERS, "exp", "eval", first) == ("exp", "eval")
    session = os.path.join("out", "May01_12-30-59_host")
    assert loc(FOLDERS, "out", "May01_12-30-59_host", second) == (os.path.join(session, second), "")
    assert loc(FOLDERS, second) == (second, "")  # a first-level folder is a run as before
    # the listing is asked for add_hparams folders below a run only: nothing else depends on it
    def never(directory):
        raise AssertionError(f"listed {directory}")

    for parts in (("exp", "eval"), (second,), ("exp", "eval", "loss_train")):
        assert locate(root, os.path.join(root, *parts, "events.out.tfevents.1"), never)[0] == parts[0]


def test_further_sessions_are_grouped_under_the_run_they_were_written_from(tmp_path):
    root = str(tmp_path)
    second = FOLDERS[1]
    assert run_ref(root, os.path.join("run0", second)).group == "run0"
    assert run_ref(root, os.path.join("exp", "eval", second)).group == "exp"
    assert run_ref(root, os.path.join("out", "May01_12-30-59_host", second)).group == os.path.join(
        "out", "May01_12-30-59_host")
    for run_rel in ("run0", second, "", os.path.join("lightning_logs", "version_0")):
        assert run_ref(root, run_rel).group == ""
    a, b = run_ref(root, os.path.join("run0", FOLDERS[1])), run_ref(root, os.path.join("run0", FOLDERS[2]))
    assert a.run_id != b.run_id and a.name == os.path.join("run0", FOLDERS[1])


def test_real_listing_counts_only_directories(tmp_path):
    from tracelet_daemon.runs import subdirectories

    run0 = tmp_path / "run0"
    (run0 / FOLDERS[1]).mkdir(parents=True)
    (run0 / FOLDERS[0]).write_text("a file named like a time is not a session")
    path = os.path.join(str(run0), FOLDERS[1], "events.out.tfevents.1")
    assert locate(str(tmp_path), path) == ("run0", "")
    assert sorted(subdirectories(str(run0))) == [FOLDERS[1]] and subdirectories(str(tmp_path / "gone")) == []


# -- row wall times (issue 12) -------------------------------------------------------------------------


def test_a_row_holds_values_within_a_second_of_its_first():
    events = [
        ("", Event(5, 100.0, [("a", 1.0)])),
        ("", Event(5, 100.9, [("b", 2.0)])),  # within the spread: same row
        ("", Event(5, 101.5, [("c", 3.0)])),  # 1.5 s after the row's first value: a new row
        ("", Event(5, 101.6, [("d", 4.0)])),
        ("", Event(0, 0.0, [("loss", 0.5)])),  # TF1: scalars of step 0 at wall time 0 ...
        ("", Event(0, 1.7e9, [("img", 0.25)])),  # ... media of that step at a real one
    ]
    rows = group_rows(events, 0)
    assert [(r.step, r.wall_time, sorted(r.values)) for r in rows] == [
        (5, 100.0, ["a", "b"]), (5, 101.5, ["c", "d"]), (0, 0.0, ["loss"]), (0, 1.7e9, ["img"])]
    assert group_rows(events, 0) == rows  # a pure function of the events: crash replay regroups alike


def test_a_late_value_does_not_pull_the_rest_of_its_step_out_of_its_row():
    """Files are read one after the other: a step's early values in one file come after a late
    value of that step in another (add_custom_scalars at the end of a writer, add_scalars' series)."""
    events = [
        ("", Event(0, 10.0, [("loss", 1.0)])),
        ("", Event(0, 12.5, [("layout", 0.0)])),  # written 2.5 s later at the same step
        ("loss_train", Event(0, 10.01, [("loss", 0.9)])),  # the series file: the first row again
        ("loss_train", Event(0, 12.6, [("loss", 0.8)])),  # close to the late row, whose key is new to it
    ]
    rows = group_rows(events, 7)
    assert [(r.seq, r.wall_time, r.values) for r in rows] == [
        (7, 10.0, {"loss": 1.0, "loss/train": 0.9}), (8, 12.5, {"layout": 0.0, "loss/train": 0.8})]


def test_parts_of_one_mesh_share_a_value():
    from tracelet_daemon.values import Mesh

    v, f, c = b"\0" * 36, b"\0" * 12, b"\1" * 36
    events = [("", Event(1, 10.0, [("m", Mesh(vertices=v))])), ("", Event(1, 10.1, [("m", Mesh(faces=f))])),
              ("", Event(1, 10.2, [("m", Mesh(colors=c)), ("x", 1.0)])),
              ("", Event(1, 10.3, [("m", Mesh(colors=c))]))]  # the same part again: a new row
    rows = group_rows(events, 0)
    assert [r.values for r in rows] == [{"m": Mesh(v, f, c), "x": 1.0}, {"m": Mesh(colors=c)}]
    assert Mesh(vertices=v, batch=2).merged(Mesh(faces=f)) is None


def test_grouping_keeps_every_value_once_and_close_to_its_wall_time():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    event = st.tuples(st.sampled_from(["", "eval", "loss_train"]), st.integers(0, 3),
                      st.floats(0, 6, allow_nan=False).map(lambda t: round(t, 2)),
                      st.lists(st.sampled_from(["loss", "acc", "epoch"]), min_size=1, max_size=3))

    @settings(max_examples=150, deadline=None)
    @given(st.lists(event, max_size=30))
    def check(items):
        events = [(prefix, Event(step, wall, [(tag, float(i)) for tag in tags]))
                  for i, (prefix, step, wall, tags) in enumerate(items)]
        rows = group_rows(events, 3)
        assert [r.seq for r in rows] == list(range(3, 3 + len(rows)))
        held = sorted((r.step, v) for r in rows for v in r.values.values())
        assert held == sorted((ev.step, v) for _p, ev in events for _t, v in ev.values)  # all, once
        for row in rows:
            for value in row.values.values():
                _prefix, ev = events[int(value)]
                assert ev.step == row.step and abs(ev.wall_time - row.wall_time) <= 1.0
        assert group_rows(events, 3) == rows

    check()
