"""The runs root is untrusted (issue 11): no leak through symlinks or races, no hijacked run id,
one owner per state directory, no forged display names, no hang or blow-up on one metadata file.

Each test drives the real CLI into offline W&B and reads the `.wandb` logs back."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time

import pytest
from tensorboardX import SummaryWriter

from helpers import assert_exactly_once, history_of, offline_runs, run_id_for, write_run
from tracelet_daemon.cli import main
from tracelet_daemon.records import frame

pytestmark = pytest.mark.slow

SECRET = "hunter2-the-secret-value"


def upload(root, state_dir, *extra: str) -> int:
    return main(["upload", str(root), "--state-dir", state_dir, "--no-progress", *extra])


def _scalar_run(run_dir, value: float = 1.0, steps: int = 1) -> None:
    w = SummaryWriter(str(run_dir))
    for step in range(steps):
        w.add_scalar("x", value + step, step)
    w.close()


def _run_json(run_dir, **fields) -> None:
    os.makedirs(run_dir / ".tracelet", exist_ok=True)
    (run_dir / ".tracelet" / "run.json").write_text(json.dumps({"format": "tracelet.run/1", **fields}))


def _artifact(run_dir, aid: str, files: dict[str, bytes], name: str = "model") -> None:
    base = run_dir / ".tracelet" / "artifacts" / aid
    (base / "files").mkdir(parents=True)
    for fname, content in files.items():
        (base / "files" / fname).write_bytes(content)
    (base / "manifest.json").write_text(json.dumps({
        "format": "tracelet.artifact/1", "name": name, "type": "model",
        "files": [{"path": f"files/{f}", "name": f} for f in files]}))


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _the_run(wandb_dir: str, run_id: str):
    ((_path, run),) = offline_runs(wandb_dir, run_id)
    return run


@pytest.fixture
def outside(tmp_path):
    """A directory outside the root holding another run's metadata and a secret."""
    out = tmp_path / "outside"
    _run_json(out, name="renamed-by-outside", config={"stolen": SECRET})
    _artifact(out, "0001-loot", {"secret.txt": SECRET.encode()}, name="loot")
    (out / "creds.yaml").write_text(f"api_key: {SECRET}\n")
    (out / "broken.yaml").write_text(f"key: [{SECRET}\n")
    return out


# -- 1-2: the file protocol never follows a symlink out of the run directory ------------------
def test_symlinked_metadata_directory_is_not_followed(runs_root, state_dir, wandb_env, outside, capsys):
    run_dir = runs_root / "r"
    _scalar_run(run_dir)
    os.symlink(outside / ".tracelet", run_dir / ".tracelet")
    assert upload(runs_root, state_dir) == 0
    run = _the_run(wandb_env["WANDB_DIR"], run_id_for(runs_root, "r"))
    assert run.display_name == "r" and "stolen" not in run.config and run.artifacts == []
    assert [row["x"] for row in run.history] == [1]
    err = capsys.readouterr().err
    assert "symbolic link" in err and SECRET not in err


def test_symlinked_artifact_directories_and_files_are_not_staged(runs_root, state_dir, wandb_env, outside,
                                                                 capsys):
    for name, how in [("a", "artifacts"), ("b", "artifact"), ("c", "file")]:
        run_dir = runs_root / name
        _scalar_run(run_dir)
        (run_dir / ".tracelet").mkdir()
        if how == "artifacts":
            os.symlink(outside / ".tracelet" / "artifacts", run_dir / ".tracelet" / "artifacts")
        elif how == "artifact":
            (run_dir / ".tracelet" / "artifacts").mkdir()
            os.symlink(outside / ".tracelet" / "artifacts" / "0001-loot",
                       run_dir / ".tracelet" / "artifacts" / "0001-loot")
        else:
            _artifact(run_dir, "0001-model", {"secret.txt": b"harmless"})
            target = run_dir / ".tracelet" / "artifacts" / "0001-model" / "files" / "secret.txt"
            target.unlink()
            os.symlink(outside / ".tracelet" / "artifacts" / "0001-loot" / "files" / "secret.txt", target)
    assert upload(runs_root, state_dir) == 0
    for name in "abc":
        run = _the_run(wandb_env["WANDB_DIR"], run_id_for(runs_root, name))
        assert run.artifacts == [], name
        assert [row["x"] for row in run.history] == [1]
    err = capsys.readouterr().err
    assert "c: " in err and "symbolic link" in err and SECRET not in err


def test_hparams_yaml_symlinked_to_a_secret_is_refused(runs_root, state_dir, wandb_env, outside, capsys):
    _scalar_run(runs_root / "r")
    os.symlink(outside / "creds.yaml", runs_root / "r" / "hparams.yaml")
    _scalar_run(runs_root / "status")
    os.symlink(os.path.join(state_dir, "status.json"), runs_root / "status" / "hparams.yaml")
    assert upload(runs_root, state_dir) == 0
    assert upload(runs_root, state_dir) == 0  # a second pass: status.json exists now
    run = _the_run(wandb_env["WANDB_DIR"], run_id_for(runs_root, "r"))
    assert "api_key" not in run.config
    for _p, run in offline_runs(wandb_env["WANDB_DIR"], run_id_for(runs_root, "status")):
        assert not {"pid", "host", "runs"} & set(run.config)
    err = capsys.readouterr().err
    assert "hparams.yaml" in err and "symbolic link" in err and SECRET not in err


def test_a_yaml_error_names_the_file_but_never_quotes_it(runs_root, state_dir, wandb_env, outside, capsys):
    _scalar_run(runs_root / "r")
    (runs_root / "r" / "hparams.yaml").write_text((outside / "broken.yaml").read_text())
    assert upload(runs_root, state_dir) == 0
    err = capsys.readouterr().err
    assert "hparams.yaml" in err and "not valid YAML (line " in err and SECRET not in err


def test_swapping_artifact_files_for_symlinks_never_leaks(runs_root, state_dir, wandb_env, outside):
    """The race of finding 3: while artifacts are uploaded, one file after another is swapped for
    a symlink to a secret for a moment (so a check of the path usually passes and a later open by
    name may not). Whatever W&B stores must be the harmless bytes, never the secret (by digest).
    On the code before confinement this leaked in most rounds; rounds stop at the first leak."""
    import random

    run_dir = runs_root / "r"
    _scalar_run(run_dir)
    harmless = b"harmless bytes"
    secret_file = outside / ".tracelet" / "artifacts" / "0001-loot" / "files" / "secret.txt"
    secret_digest = _md5(secret_file.read_bytes())
    wandb_dir = wandb_env["WANDB_DIR"]
    rng = random.Random(3)
    stored = 0
    for round_ in range(4):
        files = {f"f{i:02d}.bin": harmless for i in range(15)}
        for a in range(20):
            _artifact(run_dir, f"{round_}{a:03d}-art", files, name=f"art{round_}-{a}")
        paths = [run_dir / ".tracelet" / "artifacts" / f"{round_}{a:03d}-art" / "files" / f
                 for a in range(20) for f in files]
        stop = threading.Event()

        def swap() -> None:
            while not stop.is_set():
                p = rng.choice(paths)
                link, real = f"{p}.link", f"{p}.real"
                try:
                    os.symlink(secret_file, link)
                    os.replace(link, p)  # a symlink to the secret, for a moment
                    time.sleep(0.002)
                    with open(real, "wb") as f:
                        f.write(harmless)
                    os.replace(real, p)
                except OSError:
                    pass

        t = threading.Thread(target=swap, daemon=True)
        t.start()
        try:
            assert upload(runs_root, state_dir, "--log-level", "critical") == 0
        finally:
            stop.set()
            t.join()
        digests = [d for _p, run in offline_runs(wandb_dir, run_id_for(runs_root, "r"))
                   for art in run.artifacts for d in art["digests"].values()]
        assert secret_digest not in digests, f"the secret leaked in round {round_}"
        assert set(digests) <= {_md5(harmless)}
        stored = len(digests)
    assert stored > 0  # most artifacts were stored whole: the race did not just refuse everything


def test_artifact_bytes_are_staged_privately_and_cleaned_up(runs_root, state_dir, wandb_env):
    run_dir = runs_root / "r"
    _scalar_run(run_dir)
    _artifact(run_dir, "0001-model", {"w.bin": b"\x00" * 1000})
    assert upload(runs_root, state_dir) == 0
    run = _the_run(wandb_env["WANDB_DIR"], run_id_for(runs_root, "r"))
    assert [(a["files"], a["digests"]["w.bin"]) for a in run.artifacts] == [(["w.bin"], _md5(b"\x00" * 1000))]
    staging = os.path.join(state_dir, "staging")
    assert os.listdir(staging) == []  # copies removed once the backend took them
    assert os.stat(staging).st_mode & 0o077 == 0


def test_artifact_over_the_size_limit_is_refused(runs_root, state_dir, wandb_env, monkeypatch, capsys):
    run_dir = runs_root / "r"
    _scalar_run(run_dir)
    _artifact(run_dir, "0001-big", {"big.bin": b""})
    with open(run_dir / ".tracelet" / "artifacts" / "0001-big" / "files" / "big.bin", "wb") as f:
        f.truncate(2 << 30)  # sparse: 2 GiB that cost no disk
    monkeypatch.setenv("TRACELET_MAX_ARTIFACT_BYTES", str(64 << 20))
    assert upload(runs_root, state_dir) == 0
    run = _the_run(wandb_env["WANDB_DIR"], run_id_for(runs_root, "r"))
    assert run.artifacts == [] and [r["x"] for r in run.history] == [1]
    err = capsys.readouterr().err
    assert "big.bin" in err and "TRACELET_MAX_ARTIFACT_BYTES" in err
    assert os.listdir(os.path.join(state_dir, "staging")) == []


def test_a_fifo_as_run_json_does_not_hang(runs_root, state_dir, wandb_env, capsys):
    _scalar_run(runs_root / "r")
    (runs_root / "r" / ".tracelet").mkdir()
    os.mkfifo(runs_root / "r" / ".tracelet" / "run.json")
    assert upload(runs_root, state_dir) == 0
    assert [r["x"] for r in history_of(wandb_env["WANDB_DIR"], run_id_for(runs_root, "r"))] == [1]
    assert "not a regular file" in capsys.readouterr().err


# -- symlinked event files and run directories: not followed unless asked ---------------------
def test_symlinked_event_files_and_run_dirs_follow_only_with_the_option(tmp_path, runs_root, state_dir,
                                                                        wandb_env, outside):
    data = tmp_path / "data"
    _scalar_run(data / "exp1", value=10.0)
    _scalar_run(data / "single", value=20.0)
    os.symlink(data / "exp1", runs_root / "exp1")
    (runs_root / "linked").mkdir()
    (event,) = [n for n in os.listdir(data / "single") if "tfevents" in n]
    os.symlink(data / "single" / event, runs_root / "linked" / event)
    # inside a followed run, the file protocol is still confined to the real run directory
    os.symlink(outside / ".tracelet", data / "exp1" / ".tracelet")
    _scalar_run(runs_root / "plain", value=30.0)
    assert upload(runs_root, state_dir) == 0
    wandb_dir = wandb_env["WANDB_DIR"]
    assert [r["x"] for r in history_of(wandb_dir, run_id_for(runs_root, "plain"))] == [30]
    assert offline_runs(wandb_dir, run_id_for(runs_root, "exp1")) == []
    assert offline_runs(wandb_dir, run_id_for(runs_root, "linked")) == []

    assert upload(runs_root, state_dir, "--follow-symlinks") == 0
    run = _the_run(wandb_dir, run_id_for(runs_root, "exp1"))
    assert [r["x"] for r in run.history] == [10] and "stolen" not in run.config
    assert run.display_name == "exp1"
    assert [r["x"] for r in history_of(wandb_dir, run_id_for(runs_root, "linked"))] == [20]


# -- 4: a run id from metadata is claimed once per state store --------------------------------
def test_a_run_cannot_hijack_another_runs_id(tmp_path, runs_root, state_dir, wandb_env, capsys):
    for name in ("a-first", "b-second", "c-squatter", "d-victim"):
        write_run(SummaryWriter, runs_root / name, steps=60, hist_every=30, image_every=30, seed=len(name))
    _run_json(runs_root / "a-first", run_id="shared-id")
    _run_json(runs_root / "b-second", run_id="shared-id")
    _run_json(runs_root / "c-squatter", run_id=run_id_for(runs_root, "d-victim"))
    assert upload(runs_root, state_dir) == 0
    wandb_dir = wandb_env["WANDB_DIR"]
    assert_exactly_once(runs_root, wandb_dir, "a-first", run_id="shared-id")
    for name in ("b-second", "c-squatter", "d-victim"):
        assert_exactly_once(runs_root, wandb_dir, name)
    err = capsys.readouterr().err
    assert "b-second" in err and "shared-id" in err and "refused" in err
    assert "c-squatter" in err and "fails its checksum" not in err
    # and it stays that way on the next pass (new data lands in the same runs)
    write_run(SummaryWriter, runs_root / "b-second", steps=10, start=60, hist_every=0, image_every=0,
              eval_every=0, seed=9, suffix=".2")
    assert upload(runs_root, state_dir) == 0
    assert_exactly_once(runs_root, wandb_dir, "b-second")
    assert_exactly_once(runs_root, wandb_dir, "a-first", run_id="shared-id")


# -- 7: one owner per state directory ----------------------------------------------------------
def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tracelet_daemon", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy(), **kw)


def test_two_uploads_on_one_state_dir_never_send_twice(runs_root, state_dir, wandb_env):
    write_run(SummaryWriter, runs_root / "big", steps=15000, hist_every=0, image_every=0, eval_every=0)
    first = _cli("upload", str(runs_root), "--state-dir", state_dir, "--no-progress", "--jobs", "1")
    second = _cli("upload", str(runs_root), "--state-dir", state_dir, "--no-progress", "--jobs", "1")
    outs = [p.communicate(timeout=300) for p in (first, second)]
    codes = sorted(p.returncode for p in (first, second))
    assert codes in ([0, 0], [0, 2]), outs
    if codes == [0, 2]:
        err = next(o[1] for p, o in zip((first, second), outs) if p.returncode == 2)
        assert "in use by pid" in err and "upload" in err
    rows = assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "big")
    assert len(rows) == 15000


def test_watch_holds_the_state_dir_and_upload_is_refused(runs_root, state_dir, wandb_env, capsys):
    _scalar_run(runs_root / "r")
    watch = _cli("watch", str(runs_root), "--state-dir", state_dir, "--poll")
    try:
        lock = os.path.join(state_dir, "tracelet.lock")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the holder writes its pid into the lock file
            if os.path.exists(lock) and str(watch.pid) in open(lock).read():
                break
            time.sleep(0.1)
        assert upload(runs_root, state_dir) == 2
        err = capsys.readouterr().err
        assert f"in use by pid {watch.pid}" in err and "watch" in err
        assert len(err.strip().splitlines()) == 1  # one line
    finally:
        watch.terminate()
        watch.communicate(timeout=120)
    assert watch.returncode == 0
    assert upload(runs_root, state_dir) == 0  # released with the process
    assert [r["x"] for r in history_of(wandb_env["WANDB_DIR"], run_id_for(runs_root, "r"))] == [1]


# -- 8-9: display names, state permissions ---------------------------------------------------
def test_control_characters_never_reach_display_names(runs_root, state_dir, wandb_env):
    _scalar_run(runs_root / "a")
    _run_json(runs_root / "a", name="nice\nname\x1b[31m\u202e", tags=["t\r\nx"])
    _scalar_run(runs_root / "b\nERROR forged")
    assert upload(runs_root, state_dir) == 0
    run = _the_run(wandb_env["WANDB_DIR"], run_id_for(runs_root, "a"))
    assert run.display_name == "nice name [31m" and run.tags == ["t x"]
    run = _the_run(wandb_env["WANDB_DIR"], run_id_for(runs_root, "b\nERROR forged"))
    assert run.display_name == "b ERROR forged"


def test_a_world_readable_state_dir_is_tightened(tmp_path, runs_root, wandb_env, caplog):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    _scalar_run(runs_root / "r")
    assert upload(runs_root, str(state)) == 0
    assert os.stat(state).st_mode & 0o777 == 0o700
    for name in os.listdir(state):
        if name.startswith("state.sqlite3") or name == "tracelet.lock":
            assert os.stat(state / name).st_mode & 0o077 == 0, name


# -- 5-6 (metadata side): deep nesting and YAML aliases are refused quickly and cheaply ---------
def _billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", ["json-deep", "yaml-deep", "yaml-laughs"])
def test_hostile_metadata_is_one_error_in_bounded_time_and_memory(tmp_path, runs_root, state_dir, case):
    _scalar_run(runs_root / "bad")
    _scalar_run(runs_root / "good", value=5.0)
    if case == "json-deep":
        (runs_root / "bad" / ".tracelet").mkdir()
        (runs_root / "bad" / ".tracelet" / "run.json").write_text(
            '{"format": "tracelet.run/1", "config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif case == "yaml-deep":
        (runs_root / "bad" / "hparams.yaml").write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    else:
        (runs_root / "bad" / "hparams.yaml").write_text(_billion_laughs())
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
            "from tracelet_daemon.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, "upload", str(runs_root), "--state-dir", state_dir,
                           "--no-progress"], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    took = time.monotonic() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "bad" in proc.stderr
    assert ("nested deeper" in proc.stderr) or ("aliases" in proc.stderr)
    wandb_dir = os.environ["WANDB_DIR"]
    assert [r["x"] for r in history_of(wandb_dir, run_id_for(runs_root, "good"))] == [5]
    assert [r["x"] for r in history_of(wandb_dir, run_id_for(runs_root, "bad"))] == [1]
    print(f"{case}: {took:.1f}s, peak RSS of children so far {peak_mib:.0f} MiB")


# -- record size: a record over the limit is skipped unread, the rest of the file goes on -------
def test_an_oversize_record_is_skipped_unread(runs_root, state_dir, wandb_env, monkeypatch, capsys):
    from tensorboard.compat.proto import event_pb2

    run_dir = runs_root / "r"
    run_dir.mkdir()
    events = []
    for step in range(3):
        ev = event_pb2.Event(step=step, wall_time=1.0 + step)
        ev.summary.value.add(tag="x", simple_value=float(step))
        events.append(frame(ev.SerializeToString()))
    big = event_pb2.Event(step=1, wall_time=1.5, file_version="x" * (2 << 20))
    with open(run_dir / "events.out.tfevents.1.host", "wb") as f:
        f.write(events[0] + events[1] + frame(big.SerializeToString()) + events[2])
    monkeypatch.setenv("TRACELET_MAX_RECORD_BYTES", str(1 << 20))
    assert upload(runs_root, state_dir) == 0
    assert [r["x"] for r in history_of(wandb_env["WANDB_DIR"], run_id_for(runs_root, "r"))] == [0, 1, 2]
    err = capsys.readouterr().err
    assert "TRACELET_MAX_RECORD_BYTES" in err and "events.out.tfevents.1.host" in err


def test_a_bad_limit_is_a_usage_error(runs_root, state_dir, monkeypatch, capsys):
    monkeypatch.setenv("TRACELET_MAX_TENSOR_ELEMENTS", "lots")
    assert upload(runs_root, state_dir) == 2
    assert "TRACELET_MAX_TENSOR_ELEMENTS" in capsys.readouterr().err


def test_a_second_state_store_cannot_resend_into_a_shared_wandb_dir(tmp_path, runs_root, wandb_env, capsys):
    """WANDB_DIR (the conftest's) is shared and outside both state directories."""
    write_run(SummaryWriter, runs_root / "r", steps=50, hist_every=0, image_every=0)
    first, second = str(tmp_path / "state-a"), str(tmp_path / "state-b")
    assert upload(runs_root, first) == 0
    capsys.readouterr()
    assert upload(runs_root, second) == 1  # refused before anything is sent
    err = capsys.readouterr().err
    assert "belongs to state directory" in err and first in err
    assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "r")
    import shutil

    shutil.rmtree(first)  # gone for good: the second store takes over from W&B's checkpoints
    assert upload(runs_root, second) == 0
    assert_exactly_once(runs_root, wandb_env["WANDB_DIR"], "r")


def test_a_hard_link_to_a_file_elsewhere_is_not_metadata(runs_root, state_dir, wandb_env, outside, capsys):
    _scalar_run(runs_root / "r")
    os.link(outside / "creds.yaml", runs_root / "r" / "hparams.yaml")
    assert upload(runs_root, state_dir) == 0
    run = _the_run(wandb_env["WANDB_DIR"], run_id_for(runs_root, "r"))
    assert "api_key" not in run.config and [r["x"] for r in run.history] == [1]
    err = capsys.readouterr().err
    assert "hard links" in err and SECRET not in err
