"""The MLflow backend's pure parts: key rules, params, request packing, artifact names, URIs.

The key rule is checked against MLflow's own validator (mlflow.utils.validation), not against a
copy of it; request limits against MLflow's own constants and its own JSON encoding.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow_server import NEEDS_MLFLOW

from tracelet_daemon.backends.mlflow import batching, keys, params, store
from tracelet_daemon.backends.mlflow.convert import image_id, millis, row_file, text_markdown
from tracelet_daemon.errors import UsageError
from tracelet_daemon.values import Row, Text

pytestmark = NEEDS_MLFLOW


def mlflow_accepts(key: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_length_limit, _validate_metric_name, _validate_tag_name

    try:
        _validate_metric_name(key)
        _validate_tag_name(key)
        _validate_length_limit("key", keys.MAX_KEY, key)
    except MlflowException:
        return False
    return True


@pytest.mark.parametrize("raw, expected", [
    ("loss", "loss"), ("eval/loss", "eval/loss"), ("a(b)", "a_b_"), ("acc@1", "acc_1"),
    ("p+q#r,s[t]%", "p_q_r_s_t__"), ("a//b", "a/_/b"), ("/lead", "_/lead"), ("trail/", "trail/_"),
    ("a/../b", "a/_/b"), ("..up", "_up"), ("", "_"), ("ünï cödé: ok", "ünï cödé: ok"),
])
def test_keys_are_fixed_the_documented_way(raw, expected):
    assert keys.sanitize(raw) == expected
    assert mlflow_accepts(keys.sanitize(raw))


def test_long_keys_are_shortened_with_a_hash_and_stay_apart():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    sa, sb = keys.sanitize(a), keys.sanitize(b)
    assert len(sa) == len(sb) == keys.MAX_KEY and sa != sb
    assert sa == keys.sanitize(a)  # deterministic: a replay writes the same key
    assert mlflow_accepts(sa) and not mlflow_accepts(a)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_every_key_becomes_one_mlflow_accepts(raw):
    out = keys.sanitize(raw)
    assert mlflow_accepts(out), (raw, out)
    assert keys.sanitize(out) == out
    if mlflow_accepts(raw):
        assert out == raw  # a valid key is never touched


def test_keymap_warns_once_per_key_and_on_collisions():
    said = []
    km = keys.KeyMap(lambda k, m: said.append(m), {"tracelet.seq": "tb/tracelet.seq"})
    assert [km("a(b)"), km("a(b)"), km("a[b]"), km("ok"), km("tracelet.seq")] == \
        ["a_b_", "a_b_", "a_b_", "ok", "tb/tracelet.seq"]
    assert len([m for m in said if "not a valid MLflow key" in m]) == 2
    assert any("'a(b)' and 'a[b]' are both logged as 'a_b_'" in m for m in said)
    assert any("tracelet uses" in m for m in said)


def test_params_flatten_and_a_changed_value_goes_to_a_tag():
    said = []
    ledger = params.ParamLedger({"lr": "0.1"}, lambda k, m: said.append(m))
    p, t = ledger.plan({"lr": 0.1, "model": {"depth": 50, "act": "relu"}, "layers": [1, 2]}, str)
    assert p == {"model.depth": "50", "model.act": "relu", "layers": "[1, 2]"} and t == {}
    p, t = ledger.plan({"lr": 0.01, "model": {"depth": 50}}, str)
    assert p == {} and t == {"lr": "0.01"}
    assert ledger.plan({"lr": 0.01}, str) == ({}, {})  # said once
    assert ledger.plan({"lr": 0.1}, str) == ({}, {"lr": "0.1"})  # back to the first value: the tag follows
    assert sum("cannot change" in m for m in said) == 1
    p, _ = ledger.plan({"long": "y" * 7000}, str)
    assert len(p["long"]) == params.MAX_PARAM_VALUE and any("is cut" in m for m in said)


def test_requests_stay_within_mlflow_limits_in_its_own_encoding():
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.proto_json_utils import message_to_json
    from mlflow.utils.validation import (
        MAX_BATCH_LOG_REQUEST_SIZE,
        MAX_ENTITIES_PER_BATCH,
        MAX_METRICS_PER_BATCH,
        MAX_PARAMS_TAGS_PER_BATCH,
    )

    metrics = [(f"metric/ü{i % 37}" + "k" * (i % 200), float(i), 1_700_000_000_000 + i, i) for i in range(2500)]
    pairs = [(f"p{i}", "é" * 6000) for i in range(150)]
    tags = [(f"t{i}", "v" * 8000) for i in range(30)]
    reqs = list(batching.pack(metrics, pairs, tags))
    assert sum(len(r.metrics) for r in reqs) == 2500 and sum(len(r.params) for r in reqs) == 150
    assert [m for r in reqs for m in r.metrics] == metrics  # order kept
    for r in reqs:
        assert len(r.metrics) <= MAX_METRICS_PER_BATCH and len(r) <= MAX_ENTITIES_PER_BATCH
        assert len(r.params) + len(r.tags) <= MAX_PARAMS_TAGS_PER_BATCH
        body = message_to_json(LogBatch(run_id="0" * 32, metrics=[Metric(*m).to_proto() for m in r.metrics],
                                        params=[Param(*p).to_proto() for p in r.params],
                                        tags=[RunTag(*t).to_proto() for t in r.tags]))
        assert len(body) <= MAX_BATCH_LOG_REQUEST_SIZE, (len(body), r.size)
        assert len(body) <= r.size * 1.15  # the estimate is not wildly pessimistic either


def test_names_derive_from_the_row_only():
    row = Row(17, 40, 1_700_000_000.1234, {})
    assert millis(row.wall_time) == 1_700_000_000_123
    assert row_file("histograms", "a/b c/../d", row, ".json") == "tensorboard/histograms/a/b_c/d/step40-row17.json"
    assert image_id("k", row, 0) == image_id("k", row, 0) != image_id("k", row, 1)
    assert image_id("k", row, 0) != image_id("k", Row(18, 40, row.wall_time, {}), 0)


def test_text_is_kept_readable():
    assert text_markdown(Text(("**bold** ü",))) == "**bold** ü".encode()
    table = text_markdown(Text(("a", "b|c", "d", "e"), (2, 2))).decode()
    assert table.splitlines() == ["| text_0 | text_1 |", "|---|---|", "| a | b\\|c |", "| d | e |"]


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t = store.resolve(None, str(tmp_path / "state"))
    assert t.embedded and t.uri == f"sqlite:///{tmp_path}/state/mlflow/mlflow.db"
    assert t.artifact_root == str(tmp_path / "state" / "mlflow" / "artifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.resolve(None, str(tmp_path)).remote
    assert store.resolve("sqlite:////x/y.db", None).uri == "sqlite:////x/y.db"
    for bad in ("file:///tmp/mlruns", "./mlruns", "/abs/mlruns"):
        with pytest.raises(UsageError, match="file store"):
            store.resolve(bad, None)


def test_credentials_in_a_tracking_uri_are_never_shown():
    t = store.Target("https://alice:s3cret@mlflow.example:8443/base")
    assert "s3cret" not in t.display and "alice" in t.display
    loc = store.run_location(t, "3", "abc")
    assert loc == "https://alice:***@mlflow.example:8443/base/#/experiments/3/runs/abc"
    assert "tok" not in store.redact("https://tok@host/")
    assert json.dumps(store.redact("sqlite:////a/b.db")) == '"sqlite:////a/b.db"'
