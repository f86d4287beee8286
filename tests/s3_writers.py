"""Write TensorBoard event logs INTO an S3 bucket with the REAL writers, in a subprocess.

Writers (each runs in its own process, so the env from MotoServer.subprocess_env() applies and
tensorboard's stub gfile reads S3_ENDPOINT at its import, which has to come after the env is set):
- "tbx":   tensorboardX.SummaryWriter("s3://bucket/prefix/run"). tensorboardX/record_writer.py
           S3RecordWriter keeps the WHOLE file in a BytesIO and every flush re-uploads all of it to
           the same key with `boto3.client('s3', endpoint_url=os.environ.get('S3_ENDPOINT'))
           .upload_fileobj(...)` (a single PutObject below boto3's 8 MiB multipart threshold,
           a multipart upload - ETag "<md5>-<parts>" - above it). Key:
           <run>/events.out.tfevents.<first 10 chars of str(time.time())>.<hostname> (no pid: two
           tensorboardX writers started in the same second on one host into one run share the key).
           Nothing is uploaded before the first event is flushed (the file_version record goes in
           with it). SummaryWriter.flush() does NOT drain tensorboardX's event queue (a worker thread
           writes queued events into the buffer), so `_flush_tbx` waits for the queue to empty first.
- "torch": torch.utils.tensorboard.SummaryWriter("s3://...") -> tensorboard.summary.writer
           EventFileWriter -> tensorboard.compat.tensorflow_stub gfile S3FileSystem (boto3; used when
           TensorFlow is absent). It needs S3_ENDPOINT (with scheme) or AWS_ENDPOINT_URL and AWS
           credentials; GFile buffers the file in a local TemporaryFile and every flush PUTs the
           whole file again (`put_object`, never multipart) to the same key
           <run>/events.out.tfevents.<%010d time>.<hostname>.<pid>.<counter>; gfile.makedirs also
           PUTs a zero-byte "<run>/" directory marker first. The writer flushes at construction, so
           the object (holding only the file_version record) exists before any scalar is added.
Both objects only ever grow between flushes, and always end on a record boundary.

CLI, for a background writer in "written while watch runs" tests:
    python tests/s3_writers.py {tbx,torch} s3://bucket/prefix/run STEPS [INTERVAL]
        [--tags loss,acc] [--flush-every N] [--start S] [--no-close]
It prints one JSON line per event on stdout: {"event": "open", "key": ...}, then
{"event": "flush", "step": s} after each flush (all steps <= s are in the object), then
{"event": "closed"} (or "abandoned" with --no-close: exits without closing, like a crashed
trainer); each line also has "t", the writer's time.time(). INTERVAL is the sleep between flushes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.abspath(__file__)
KINDS = ("tbx", "torch")


def value_of(tag_index: int, step: int) -> float:
    """The scalar written for the tag_index-th tag at `step`: exact in float32."""
    return step * 0.25 + tag_index


def expected_scalars(steps: int, tags=("loss",), start: int = 0) -> set[tuple[str, int, float]]:
    """{(tag, step, value)} a writer run with these arguments puts in its file."""
    return {(tag, step, value_of(i, step))
            for step in range(start, start + steps) for i, tag in enumerate(tags)}


def split_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix")."""
    assert url.startswith("s3://"), url
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key.strip("/")


# -- the writers (run inside the subprocess) ----------------------------------------------------------
def _emit(**event) -> None:
    event["t"] = time.time()  # when it happened in the writer (the pipe may be read much later)
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _flush_tbx(writer) -> None:
    """SummaryWriter.flush() uploads what the worker thread has put in the buffer so far; wait for
    the queue to drain first so the flush holds every event added before it."""
    ev = writer._get_file_writer().event_writer
    deadline = time.monotonic() + 30
    while not ev._event_queue.empty() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # the worker may hold an item it has dequeued but not written yet
    writer.flush()


def run_writer(kind: str, url: str, steps: int, interval: float = 0.0, tags=("loss",), flush_every: int = 1,
               start: int = 0, close: bool = True) -> None:
    if kind == "tbx":
        from tensorboardX import SummaryWriter

        # flush_secs: the writer's own periodic flush stays out of the way (its worker's first check
        # runs before any event is queued, so it never uploads on its own); we flush explicitly
        writer = SummaryWriter(url, flush_secs=3600, max_queue=1000)
        key = writer._get_file_writer().event_writer._ev_writer._file_name

        def flush() -> None:
            _flush_tbx(writer)
    elif kind == "torch":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(url, flush_secs=3600, max_queue=1000)
        key = writer._get_file_writer().event_writer._file_name
        flush = writer.flush
    else:
        raise ValueError(f"unknown writer {kind!r}")
    _emit(event="open", key=key, pid=os.getpid())
    last = start + steps - 1
    for step in range(start, start + steps):
        for i, tag in enumerate(tags):
            writer.add_scalar(tag, value_of(i, step), step)
        if (step - start + 1) % flush_every == 0 or step == last:
            flush()
            _emit(event="flush", step=step)
            if interval and step != last:
                time.sleep(interval)
    if close:
        writer.close()
        _emit(event="closed")
    else:  # leave like a crashed trainer: whatever was flushed is all there is
        _emit(event="abandoned")
        os._exit(0)


# -- the parent side ---------------------------------------------------------------------------------
def writer_cmd(kind: str, url: str, steps: int, interval: float = 0.0, tags=("loss",), flush_every: int = 1,
               start: int = 0, close: bool = True) -> list[str]:
    cmd = [sys.executable, HERE, kind, url, str(steps), str(interval), "--tags", ",".join(tags),
           "--flush-every", str(flush_every), "--start", str(start)]
    return cmd + ([] if close else ["--no-close"])


def spawn(kind: str, url: str, steps: int, interval: float = 0.0, env: dict | None = None, tags=("loss",),
          flush_every: int = 1, start: int = 0, close: bool = True, stderr=None) -> subprocess.Popen:
    """Start a writer in the background (its own process group; stdout = the JSON event lines)."""
    return subprocess.Popen(writer_cmd(kind, url, steps, interval, tags, flush_every, start, close),
                            stdout=subprocess.PIPE, stderr=stderr if stderr is not None else subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env, text=True, start_new_session=True)


def read_event(proc: subprocess.Popen) -> dict | None:
    """The next JSON event line of a spawned writer (None at EOF)."""
    line = proc.stdout.readline()
    return json.loads(line) if line else None


def wait_for_flush(proc: subprocess.Popen, step: int) -> list[dict]:
    """Read a spawned writer's events until it reports the flush of `step` (or later); returns them."""
    seen = []
    while True:
        ev = read_event(proc)
        if ev is None:
            raise RuntimeError(f"writer exited ({proc.wait()}) before flushing step {step}: {seen}; "
                               f"{proc.stderr.read() if proc.stderr else ''}")
        seen.append(ev)
        if ev["event"] == "flush" and ev["step"] >= step:
            return seen


@dataclass
class WriteResult:
    key: str  # the object key (without the bucket)
    url: str  # s3://bucket/key of the event file
    events: list[dict] = field(default_factory=list)
    stderr: str = ""


def _write(kind: str, url: str, steps: int, tags, flush_every: int, interval: float, env, start: int,
           timeout: float) -> WriteResult:
    proc = subprocess.run(writer_cmd(kind, url, steps, interval, tags, flush_every, start),
                          capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} writer failed ({proc.returncode}): {proc.stderr[-3000:]}")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    opened = next(e for e in events if e["event"] == "open")
    assert events[-1]["event"] == "closed", events
    key = split_url(opened["key"])[1]
    return WriteResult(key=key, url=opened["key"], events=events, stderr=proc.stderr)


def write_tbx(url: str, steps: int, tags=("loss",), flush_every: int = 1, interval: float = 0.0,
              env: dict | None = None, start: int = 0, timeout: float = 120) -> WriteResult:
    """tensorboardX SummaryWriter(url) writes `steps` steps of `tags`, flushing every `flush_every`
    steps (sleeping `interval` after each flush), then closes. `env`: MotoServer.subprocess_env()."""
    return _write("tbx", url, steps, tags, flush_every, interval, env, start, timeout)


def write_torch(url: str, steps: int, tags=("loss",), flush_every: int = 1, interval: float = 0.0,
                env: dict | None = None, start: int = 0, timeout: float = 180) -> WriteResult:
    """torch.utils.tensorboard SummaryWriter(url), through tensorboard's stub gfile S3 filesystem."""
    return _write("torch", url, steps, tags, flush_every, interval, env, start, timeout)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("url")
    p.add_argument("steps", type=int)
    p.add_argument("interval", type=float, nargs="?", default=0.0)
    p.add_argument("--tags", default="loss")
    p.add_argument("--flush-every", type=int, default=1)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--no-close", action="store_true")
    a = p.parse_args(argv)
    run_writer(a.kind, a.url, a.steps, a.interval, tuple(a.tags.split(",")), a.flush_every, a.start,
               close=not a.no_close)


if __name__ == "__main__":
    main()
