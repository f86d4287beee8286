"""The state store: journal before send, fold only on acknowledgement, survive damage."""

from __future__ import annotations

import os

import pytest

from tracelet_daemon.errors import StateError
from tracelet_daemon.state import FileRecord, RunRecord, StateStore


def test_offsets_advance_only_on_acknowledgement(tmp_path):
    store = StateStore(str(tmp_path / "s"))
    store.put_run(RunRecord("k", "id-1", "exp"))
    store.journal("k", 0, 9, [("/f1", 0, 100), ("/f2", 0, 50)], [FileRecord("/f1", "k"), FileRecord("/f2", "k")])
    store.journal("k", 10, 14, [("/f1", 100, 160)], [FileRecord("/f1", "k")])
    store.journal("k", 15, 14, [("/f2", 50, 60)], [FileRecord("/f2", "k")])  # a batch without rows
    assert {p: f.acked_offset for p, f in store.files_of("k").items()} == {"/f1": 0, "/f2": 0}
    assert store.get_run("k").next_seq == 15

    assert store.acknowledge("k", 12) == 1  # the second batch is only partly held
    assert {p: f.acked_offset for p, f in store.files_of("k").items()} == {"/f1": 100, "/f2": 50}
    assert [b.seq_first for b in store.batches("k")] == [10, 15]

    store.close()
    store = StateStore(str(tmp_path / "s"))  # durable across reopen
    assert store.acknowledge("k", 14) == 2
    assert {p: f.acked_offset for p, f in store.files_of("k").items()} == {"/f1": 160, "/f2": 60}
    assert store.get_run("k").acked_seq == 14 and store.batches("k") == []


def test_garbage_state_file_is_moved_aside(tmp_path, caplog):
    d = tmp_path / "s"
    d.mkdir()
    (d / StateStore.FILENAME).write_bytes(b"this is not a database" * 100)
    store = StateStore(str(d))
    assert store.all_runs() == []
    assert any(name.startswith(StateStore.FILENAME + ".corrupt-") for name in os.listdir(d))
    assert "unreadable" in caplog.text


def test_unwritable_state_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="cannot create state directory"):
        StateStore(str(blocker / "state"))
