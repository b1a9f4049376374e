"""The broker's task journal: durable intake, dead letters, replay and compaction.

One append-only file, `tasks.journal`, in the broker's journal directory. Each record is

    u32 length (little endian) | u32 crc32 of the payload | payload (msgpack map)

with `k` naming the kind:

    {k: "s", t: Task}                      submitted (the producer's task, no attempt)
    {k: "d", d: Decision}                  decided: final, the task leaves the broker
    {k: "l", t: Task, x: DeadLetter}       dead-lettered (final for the producer; kept in the DLQ)
    {k: "r", id: str}                      requeued from the dead-letter queue
    {k: "p", id: str}                      purged from the dead-letter queue

Records are buffered during a broker pass and written by `commit` in one write (group
commit); the file is fsynced when the buffer holds a record someone waits on (a submit, a
DLQ change), so an ACCEPTED is only sent for tasks already on disk. Decisions alone are
written but not fsynced: losing one costs a re-run that the sink answers `duplicate`.

`replay` reads the file back (a torn or corrupt tail is cut off) and returns the tasks still
pending, the dead letters and the recent decisions. `compact` rewrites the file with only
the live records when it has grown well past them.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger(__name__)

FILE_NAME = "tasks.journal"
_HEAD = struct.Struct("<II")
MAX_RECORD_BYTES = 64 * 1024 * 1024
_packer = msgpack.Packer(use_bin_type=True)


@dataclass
class Replayed:
    """What a journal holds: undecided tasks (in submit order), dead letters, decisions."""

    pending: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    dead: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    decided: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    records: int = 0
    truncated_bytes: int = 0

    def apply(self, rec: dict[str, Any]) -> None:
        kind = rec.get("k")
        if kind == "s":
            tid = rec["t"]["id"]
            if tid not in self.dead and tid not in self.decided:
                self.pending[tid] = rec["t"]
        elif kind == "d":
            tid = rec["d"]["task"]
            self.pending.pop(tid, None)
            self.decided[tid] = rec["d"]
        elif kind == "l":
            tid = rec["t"]["id"]
            self.pending.pop(tid, None)
            self.dead[tid] = rec["x"]
        elif kind == "r":
            letter = self.dead.pop(rec["id"], None)
            if letter is not None:
                self.decided.pop(rec["id"], None)
                self.pending[rec["id"]] = letter["task"]
        elif kind == "p":
            self.dead.pop(rec["id"], None)


def _frame(record: dict[str, Any]) -> bytes:
    payload = _packer.pack(record)
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Every intact record in order, and the byte offset where the intact part ends."""
    data = path.read_bytes() if path.exists() else b""
    out, pos = [], 0
    while pos + _HEAD.size <= len(data):
        length, crc = _HEAD.unpack_from(data, pos)
        start, end = pos + _HEAD.size, pos + _HEAD.size + length
        if length > MAX_RECORD_BYTES or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        try:
            rec = msgpack.unpackb(data[start:end], raw=False, strict_map_key=True)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            break
        if not isinstance(rec, dict):
            break
        out.append(rec)
        pos = end
    return out, pos


class TaskJournal:
    """Append-only task journal with group commit (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True,
                 compact_min_records: int = 10_000, compact_ratio: int = 4) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / FILE_NAME
        self.fsync = fsync
        self.compact_min_records = compact_min_records
        self.compact_ratio = compact_ratio
        self._buf: list[bytes] = []
        self._must_sync = False
        self._file: Any = None
        self.records = 0  # records in the file (after replay or compaction, plus appends)
        self.counters = {"writes": 0, "fsyncs": 0, "compactions": 0, "records": 0}

    # -- reading ------------------------------------------------------------------------
    def replay(self) -> Replayed:
        """Read the file, cut off a torn tail, and open it for appending."""
        records, good = read_records(self.path)
        state = Replayed()
        for rec in records:
            try:
                state.apply(rec)
            except (KeyError, TypeError):
                log.warning("task journal: skipped a record of an unknown shape")
        size = self.path.stat().st_size if self.path.exists() else 0
        state.records, state.truncated_bytes = len(records), size - good
        if state.truncated_bytes:
            log.warning("task journal: cut %d bytes of torn tail", state.truncated_bytes)
            with self.path.open("r+b") as f:
                f.truncate(good)
        self.records = len(records)
        self._file = self.path.open("ab")
        return state

    # -- appending ----------------------------------------------------------------------
    def submitted(self, task: dict[str, Any]) -> None:
        self._add({"k": "s", "t": task}, sync=True)

    def decided(self, decision: dict[str, Any]) -> None:
        self._add({"k": "d", "d": decision}, sync=False)

    def dead_lettered(self, task: dict[str, Any], letter: dict[str, Any]) -> None:
        self._add({"k": "l", "t": task, "x": letter}, sync=True)

    def requeued(self, task_id: str) -> None:
        self._add({"k": "r", "id": task_id}, sync=True)

    def purged(self, task_id: str) -> None:
        self._add({"k": "p", "id": task_id}, sync=True)

    def _add(self, record: dict[str, Any], *, sync: bool) -> None:
        self._buf.append(_frame(record))
        self._must_sync = self._must_sync or sync

    def pending_records(self) -> int:
        return len(self._buf)

    def commit(self) -> int:
        """Write the buffered records in one write (fsync if one needs it); records written."""
        if not self._buf:
            return 0
        if self._file is None:
            raise RuntimeError("task journal: replay() must run before commit()")
        n, data = len(self._buf), b"".join(self._buf)
        self._buf.clear()
        self._file.write(data)
        self._file.flush()
        self.counters["writes"] += 1
        if self._must_sync and self.fsync:
            os.fsync(self._file.fileno())
            self.counters["fsyncs"] += 1
        self._must_sync = False
        self.records += n
        self.counters["records"] += n
        return n

    # -- compaction ---------------------------------------------------------------------
    def should_compact(self, live: int) -> bool:
        return self.records > max(self.compact_min_records, self.compact_ratio * live)

    def compact(self, pending: list[dict[str, Any]], dead: list[tuple[dict[str, Any],
                dict[str, Any]]]) -> None:
        """Rewrite the file with only the live records (pending tasks, dead letters)."""
        self.commit()
        tmp = self.path.with_suffix(".compact")
        with tmp.open("wb") as f:
            f.write(b"".join(_frame({"k": "s", "t": t}) for t in pending))
            f.write(b"".join(_frame({"k": "l", "t": t, "x": x}) for t, x in dead))
            f.flush()
            os.fsync(f.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        self._sync_dir()
        self._file = self.path.open("ab")
        before, self.records = self.records, len(pending) + len(dead)
        self.counters["compactions"] += 1
        log.info("task journal compacted: %d records -> %d", before, self.records)

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._file is not None:
            self.commit()
            if self.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
