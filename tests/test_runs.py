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
