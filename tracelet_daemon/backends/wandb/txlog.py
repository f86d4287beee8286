"""Reader for wandb's ``.wandb`` transaction log (wandb 0.31 ships none).

Format: a 7-byte header (``:W&B``, u16 LE 0xBEE1, u8 version 0), then 32 KiB blocks of
leveldb-log records ``crc32 u32 LE | length u16 LE | type u8 | data``; types 1 FULL, 2 FIRST,
3 MIDDLE, 4 LAST; a block tail shorter than 7 bytes is zero padding. The checksum is zlib's
CRC-32 of the data seeded with the CRC-32 of the type byte. Each reassembled payload is a
``wandb_internal_pb2.Record``.

The reader is incremental: a live run's file grows in whole blocks and its tail can be torn
(a killed wandb-core leaves a partial block). Reading stops at the first incomplete or damaged
fragment and resumes from the last whole record on the next call.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from wandb.proto import wandb_internal_pb2

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
_FRAG = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (_FULL, _FIRST, _MIDDLE, _LAST)}


class TxlogError(ValueError):
    """Not a wandb transaction log."""


class TxlogReader:
    """Yields ``Record`` protobufs from a .wandb file, resumable across calls as it grows."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0  # start of the next unread fragment (file position)
        self.damaged = False  # a checksum failed before the end: the rest is not trusted

    def read_new(self) -> Iterator[wandb_internal_pb2.Record]:
        for payload in self._payloads():
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(payload)
            yield rec

    def _payloads(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        base = self.offset
        pos = 0
        if base == 0:
            if len(data) < len(HEADER):
                return
            if data[: len(HEADER)] != HEADER:
                raise TxlogError(f"{self.path}: not a wandb transaction log")
            pos = len(HEADER)
            self.offset = len(HEADER)
        parts: list[bytes] = []
        while not self.damaged:
            abs_pos = base + pos
            left_in_block = BLOCK_SIZE - abs_pos % BLOCK_SIZE
            if left_in_block < _FRAG.size:
                if len(data) - pos < left_in_block:
                    return
                pos += left_in_block  # zero padding
                continue
            if len(data) - pos < _FRAG.size:
                return
            crc, length, kind = _FRAG.unpack_from(data, pos)
            if crc == 0 and length == 0 and kind == 0:
                return  # preallocated or not-yet-written space
            end = pos + _FRAG.size + length
            if end > len(data) or length > left_in_block - _FRAG.size:
                if end > len(data):
                    return
                self.damaged = True
                return
            chunk = data[pos + _FRAG.size : end]
            if kind not in _TYPE_CRC or zlib.crc32(chunk, _TYPE_CRC[kind]) != crc:
                self.damaged = True
                return
            pos = end
            if kind == _FULL:
                parts = []
                self.offset = base + pos
                yield chunk
            elif kind == _FIRST:
                parts = [chunk]
            elif kind == _MIDDLE:
                parts.append(chunk)
            else:
                parts.append(chunk)
                payload = b"".join(parts)
                parts = []
                self.offset = base + pos
                yield payload


def read_records(path: str) -> list[wandb_internal_pb2.Record]:
    """All whole records of a .wandb file."""
    return list(TxlogReader(path).read_new())


@dataclass
class OfflineRun:
    """What one .wandb file holds, in a form tests and ``tracelet inspect`` can use."""

    path: str
    run_id: str = ""
    display_name: str = ""
    project: str = ""
    config: dict[str, object] = field(default_factory=dict)
    history: list[dict[str, object]] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)
    exit_code: int | None = None
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    group: str = ""
    job_type: str = ""
    artifacts: list[dict[str, object]] = field(default_factory=list)  # name, type, aliases, files
    files: list[str] = field(default_factory=list)  # paths saved under the run's files/
    record_counts: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.exit_code is not None


def _nested_row(items) -> dict[str, object]:
    """History items as a row; media objects (nested keys) become nested dicts again."""
    row: dict[str, object] = {}
    for item in items:
        value = json.loads(item.value_json)
        if len(item.nested_key) > 1:
            node = row
            for part in item.nested_key[:-1]:
                node = node.setdefault(part, {})  # type: ignore[assignment]
            node[item.nested_key[-1]] = value  # type: ignore[index]
        else:
            row[item.nested_key[0] if item.nested_key else item.key] = value
    return row


def _item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def load_offline_run(path: str) -> OfflineRun:
    """Decode a .wandb file: run info, config, history rows, summary, exit record."""
    out = OfflineRun(path)
    for rec in TxlogReader(path).read_new():
        kind = rec.WhichOneof("record_type") or "?"
        out.record_counts[kind] = out.record_counts.get(kind, 0) + 1
        if kind == "run":
            out.run_id = rec.run.run_id
            out.display_name = rec.run.display_name
            out.project = rec.run.project
            out.tags = list(rec.run.tags)
            out.notes = rec.run.notes
            out.group = rec.run.run_group
            out.job_type = rec.run.job_type
            for item in rec.run.config.update:
                out.config[_item_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out.config[_item_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            out.history.append(_nested_row(rec.history.item))
        elif kind == "summary":
            for item in rec.summary.update:
                out.summary[_item_key(item)] = json.loads(item.value_json)
        elif kind == "exit":
            out.exit_code = rec.exit.exit_code
        elif kind == "artifact":
            art = rec.artifact
            out.artifacts.append({
                "name": art.name, "type": art.type, "aliases": list(art.aliases), "digest": art.digest,
                "files": sorted(c.path for c in art.manifest.contents),
                "digests": {c.path: c.digest for c in art.manifest.contents},
            })
        elif kind == "files":
            out.files.extend(f.path for f in rec.files.files)
    return out


def max_history_step(path: str) -> int:
    """Largest ``_step`` among the whole history records of a .wandb file (-1 if none)."""
    best = -1
    try:
        for rec in TxlogReader(path).read_new():
            if rec.WhichOneof("record_type") == "history":
                best = max(best, _history_step(rec))
    except (OSError, TxlogError):
        return best
    return best


def _history_step(rec) -> int:
    if rec.history.HasField("step"):
        return rec.history.step.num
    for item in rec.history.item:
        if item.key == "_step":
            return int(json.loads(item.value_json))
    return -1


def find_run_files(wandb_dir: str, run_id: str) -> list[str]:
    """The .wandb files of every local folder (offline or online) of `run_id`, oldest first."""
    root = os.path.join(wandb_dir, "wandb")
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    # folder names: [offline-]run-YYYYMMDD_HHMMSS-<id>[-N] (N when two start in one second)
    pattern = re.compile(r"(?:offline-)?run-\d{8}_\d{6}-" + re.escape(run_id) + r"(?:-(\d+))?")
    found = []
    for name in names:
        m = pattern.fullmatch(name)
        path = os.path.join(root, name, f"run-{run_id}.wandb")
        if m and os.path.isfile(path):
            found.append((name[: m.start(1) if m.group(1) else len(name)], int(m.group(1) or 0), path))
    return [p for _, _, p in sorted(found)]


CHECKPOINT_KEY = "_tracelet"


def last_checkpoint(paths: list[str], upto_seq: int) -> dict | None:
    """The newest replica checkpoint (see the W&B sink) whose row number is at most `upto_seq`."""
    best = None
    for path in paths:
        try:
            for rec in TxlogReader(path).read_new():
                if rec.WhichOneof("record_type") != "summary":
                    continue
                for item in rec.summary.update:
                    if item.key == CHECKPOINT_KEY or list(item.nested_key) == [CHECKPOINT_KEY]:
                        cp = json.loads(item.value_json)
                        if isinstance(cp, dict) and isinstance(cp.get("seq"), int) and cp["seq"] <= upto_seq:
                            if best is None or cp["seq"] >= best["seq"]:
                                best = cp
        except (OSError, TxlogError, ValueError):
            continue
    return best
