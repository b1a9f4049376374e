"""The broker's task journal: durable intake, dead letters, replay and compaction.

One append-only file, `tasks.journal`, in the broker's journal directory. Each record is

    u32 length (little endian) | u32 crc32 of the payload | payload (msgpack map)

with `k` naming the kind:

    {k: "s", t: Task, n?: int, a?: int, x?: 1}
                                           submitted (the producer's task, no attempt, with
                                           the broker's `born_ms` stamp); a compacted one
                                           also has its failures `n`, next attempt `a`, and
                                           `x` when it was dispatched before
    {k: "x", ids: [str], ts: int}          first dispatch of these tasks, stamped `born_ms`
                                           = ts; written before the DISPATCH is sent, so a
                                           task without one never ran and may be stamped
                                           afresh after a restart
    {k: "f", id: str, n: int, a: int}      failed: an attempt was lost (worker, lease): `n`
                                           failures so far (a restart keeps counting), `a`
                                           the attempt that runs next
    {k: "d", d: Decision}                  decided: final, the task leaves the broker
    {k: "l", t: Task, x: DeadLetter}       dead-lettered (final for the producer; kept in the DLQ)
    {k: "r", id: str, born_ms?: int}       requeued from the dead-letter queue (a new
                                           `born_ms` when the requeue gave it one)
    {k: "p", id: str}                      purged from the dead-letter queue

    {k: "b", h: bin, ts: int}              submitted: a whole SUBMIT header `{tasks: [Task]}`
                                           as received (every task in it was accepted), and
                                           the `born_ms` the broker gave its tasks; written
                                           by a compaction without `ts` (each task keeps its
                                           own), followed by "x" records for those of its
                                           tasks that were dispatched
    {k: "e", h: bin}                       decided: a whole DECISION header `{decisions: [...]}`
                                           as received (every decision in it was final)

Records are buffered during a broker pass and written in one write (group commit), in the
loop: by `write` when something must be in the file at once (a dispatch stamp, before its
DISPATCH leaves), and by `commit` at the end of the pass. `commit` also asks the fsync
thread for an fsync when a record someone waits on (a submit, a DLQ change) was written
since the last request, and gives the pass a sequence number (`wanted`); `durable` is the
highest sequence number an fsync has covered, so the broker sends an ACCEPTED only once
`durable` reaches the pass that held its tasks. The request is made at the end of the pass,
after its messages were sent: the thread's wake-up never delays a DISPATCH or a RESULT. The
thread runs one fsync for every pass that asked while the previous one ran (group commit
across passes) and wakes the loop through a pipe (`wake_fd`, polled with the sockets) only
when the loop asked for it (`wake_when`: an answer waits on that fsync and nothing else).
Decisions alone are written but not fsynced: losing one costs a re-run that the sink
answers `duplicate`.

`replay` reads the file back (a torn or corrupt tail is cut off) and returns the tasks still
pending, the dead letters and the recent decisions. `compact` rewrites the file with only
the live records when it has grown well past them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from brokers.dlq import stored_task

log = logging.getLogger(__name__)

FILE_NAME = "tasks.journal"
_HEAD = struct.Struct("<II")
MAX_RECORD_BYTES = 64 * 1024 * 1024
RAW_RECORD_MAX = MAX_RECORD_BYTES // 2  # a bigger header is journaled record by record
_packer = msgpack.Packer(use_bin_type=True)
_FINAL = frozenset({"committed", "rejected", "failed", "duplicate"})
_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


@dataclass
class Replayed:
    """What a journal holds: undecided tasks (in submit order), dead letters, decisions."""

    pending: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    dead: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    decided: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    # (failures, next attempt) of pending tasks that lost an attempt
    failures: dict[str, tuple[int, int]] = field(default_factory=dict)
    # pending tasks dispatched at least once (the others never ran)
    started: set[str] = field(default_factory=set)
    records: int = 0
    truncated_bytes: int = 0

    def apply(self, rec: dict[str, Any]) -> int:
        """Apply one record; return the tasks and decisions it holds (1, or a batch's)."""
        kind = rec.get("k")
        if kind == "s":
            tid = rec["t"]["id"]
            if tid not in self.dead and tid not in self.decided:
                self.pending[tid] = rec["t"]
                if rec.get("n"):
                    self.failures[tid] = (rec["n"], rec.get("a", 1))
                if rec.get("x"):
                    self.started.add(tid)
        elif kind == "x":
            for tid in rec["ids"]:
                task = self.pending.get(tid)
                if task is not None:
                    task["born_ms"] = rec["ts"]
                    self.started.add(tid)
        elif kind == "f":
            if rec["id"] in self.pending:
                self.failures[rec["id"]] = (rec["n"], rec["a"])
        elif kind == "d":
            tid = rec["d"]["task"]
            self._gone(tid)
            self.decided[tid] = rec["d"]
        elif kind == "l":
            tid = rec["t"]["id"]
            self._gone(tid)
            self.dead[tid] = rec["x"]
        elif kind == "r":
            letter = self.dead.pop(rec["id"], None)
            if letter is not None:
                self.decided.pop(rec["id"], None)
                task = letter["task"]
                born = rec.get("born_ms", letter.get("born_ms"))
                if born is not None:
                    task["born_ms"] = born
                self.pending[rec["id"]] = task
                if "born_ms" not in rec:  # requeued as it was: it ran before
                    self.started.add(rec["id"])
        elif kind == "p":
            self.dead.pop(rec["id"], None)
        elif kind == "b":
            tasks = _unpack(rec["h"])["tasks"]
            born = rec.get("ts")
            for task in tasks:
                if born is not None:
                    task["born_ms"] = born
                self.apply({"k": "s", "t": task})
            return len(tasks)
        elif kind == "e":
            decisions = _unpack(rec["h"])["decisions"]
            for d in decisions:
                if d["status"] in _FINAL:
                    self.apply({"k": "d", "d": d})
            return len(decisions)
        return 1

    def _gone(self, tid: str) -> None:
        self.pending.pop(tid, None)
        self.failures.pop(tid, None)
        self.started.discard(tid)


def _pending_record(task: dict[str, Any], failures: int, attempt: int, started: bool
                    ) -> dict[str, Any]:
    rec: dict[str, Any] = {"k": "s", "t": task}
    if failures:
        rec.update(n=failures, a=attempt)
    if started:
        rec["x"] = 1
    return rec


COMPACT_BATCH_BYTES = 4 * 1024 * 1024  # the most task bytes one compacted "b" record holds


def _compacted(pending: list[tuple[dict[str, Any], int, int, bool]]) -> Iterator[bytes]:
    """The records of a compaction for the pending tasks, in order. A run of tasks that
    never lost an attempt is one "b" record (its tasks keep their own `born_ms`: no `ts`)
    and the dispatched ones among them one "x" record per stamp; any other task is an "s"
    record, as before. About a quarter of the CPU of one record per task."""
    run: list[bytes] = []
    size = 0
    stamps: dict[int, list[str]] = {}  # born_ms -> ids of dispatched tasks, in order
    for task, failures, attempt, started in pending:
        born = task.get("born_ms")
        if failures or (started and type(born) is not int):
            if run:
                yield _batch_record(run)
                run, size = [], 0
            yield _frame(_pending_record(task, failures, attempt, started))
            continue
        packed = _packer.pack(task)
        if size + len(packed) > COMPACT_BATCH_BYTES and run:
            yield _batch_record(run)
            run, size = [], 0
        run.append(packed)
        size += len(packed)
        if started:
            stamps.setdefault(born, []).append(task["id"])  # type: ignore[arg-type]
    if run:
        yield _batch_record(run)
    for born, ids in stamps.items():
        yield _frame({"k": "x", "ids": ids, "ts": born})


def _batch_record(packed_tasks: list[bytes]) -> bytes:
    """A "b" record (no `ts`) of tasks already packed one by one."""
    header = _TASKS_KEY + _packer.pack_array_header(len(packed_tasks)) + b"".join(packed_tasks)
    return _frame({"k": "b", "h": header})


_TASKS_KEY = _packer.pack_map_header(1) + _packer.pack("tasks")


def _unpack(data: bytes) -> dict[str, Any]:
    out = msgpack.unpackb(data, raw=False, strict_map_key=True)
    if not isinstance(out, dict):
        raise TypeError("a batch record's header is not a map")
    return out


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


class _Syncer:
    """The fsync thread: fsyncs the journal's file for every write that asks, several at
    once when they queue up, and writes a byte to a pipe after an fsync that reached the
    sequence number the loop waits for (`wake_when`), or failed. The loop only appends; it
    pauses the thread (`paused`) to swap the file."""

    def __init__(self, counters: dict[str, int]) -> None:
        self._cond = threading.Condition()
        self._counters = counters
        self._fd = -1
        self._wanted = 0  # the highest sequence number asked for
        self.durable = 0  # the highest sequence number an fsync has covered
        self._wake_at = 0  # wake the loop once durable reaches this (0: nobody waits)
        self._busy = self._closing = False
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._loop, name="journal-fsync", daemon=True)
        self._thread.start()

    def request(self, seq: int, fd: int) -> None:
        with self._cond:
            self._wanted, self._fd = seq, fd
            self._cond.notify()

    def wake_when(self, seq: int) -> bool:
        """Ask for a byte on the wake pipe once `seq` is durable; True (and no byte) when it
        is already."""
        with self._cond:
            if self.durable >= seq:
                return True
            self._wake_at = seq
            return False

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._wanted <= self.durable and not self._closing:
                    self._cond.wait()
                if self._wanted <= self.durable:
                    return
                target, fd, self._busy = self._wanted, self._fd, True
            try:
                _datasync(fd)  # releases the GIL: the loop goes on meanwhile
            except OSError as exc:  # `durable` raises it in the loop: nothing is acknowledged
                self.error = exc
            with self._cond:
                self._busy = False
                wake = self.error is not None  # the loop must hear of it
                if not wake:
                    self.durable = max(self.durable, target)
                    self._counters["fsyncs"] += 1
                    wake = 0 < self._wake_at <= self.durable
                if wake:
                    self._wake_at = 0
                self._cond.notify_all()
            if wake:
                self._wake()
            if self.error is not None:
                return

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: the loop is awake already
            os.write(self._wake_w, b"\0")

    def drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_fd, 4096):
                pass

    def paused(self) -> _Paused:
        return _Paused(self._cond, self)

    def wait_idle(self) -> None:
        """Called with the lock held: wait until no fsync runs."""
        while self._busy:
            self._cond.wait()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        os.close(self.wake_fd)
        os.close(self._wake_w)


class _Paused:
    """`with syncer.paused():` no fsync runs inside (the file may be replaced)."""

    def __init__(self, cond: threading.Condition, syncer: _Syncer) -> None:
        self._cond, self._syncer = cond, syncer

    def __enter__(self) -> None:
        self._cond.acquire()
        self._syncer.wait_idle()

    def __exit__(self, *exc: object) -> None:
        self._cond.release()


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
        self._buf_items = 0  # tasks and decisions in the buffered records
        self._must_sync = False
        self._file: Any = None
        # tasks and decisions in the file (a batch record counts each of its items): what
        # compaction weighs against the live ones
        self.records = 0
        self.counters = {"writes": 0, "fsyncs": 0, "compactions": 0, "records": 0}
        self._syncer: _Syncer | None = None
        self.wanted = 0  # sequence number of the last write that must be made durable

    # -- reading ------------------------------------------------------------------------
    def replay(self) -> Replayed:
        """Read the file, cut off a torn tail, and open it for appending."""
        records, good = read_records(self.path)
        state, items = Replayed(), 0
        for rec in records:
            try:
                items += state.apply(rec)
            except (KeyError, TypeError, ValueError):
                log.warning("task journal: skipped a record of an unknown shape")
        size = self.path.stat().st_size if self.path.exists() else 0
        state.records, state.truncated_bytes = len(records), size - good
        if state.truncated_bytes:
            log.warning("task journal: cut %d bytes of torn tail", state.truncated_bytes)
            with self.path.open("r+b") as f:
                f.truncate(good)
        self.records = items
        self._file = self.path.open("ab")
        if self.fsync and self._syncer is None:
            self._syncer = _Syncer(self.counters)
        return state

    # -- durability -----------------------------------------------------------------------
    @property
    def durable(self) -> int:
        """The highest write sequence number on disk (every write, without fsync)."""
        if self._syncer is None:
            return self.wanted
        if self._syncer.error is not None:
            raise self._syncer.error
        return self._syncer.durable

    @property
    def wake_fd(self) -> int | None:
        """A pipe the fsync thread writes to after each fsync (None without fsync)."""
        return None if self._syncer is None else self._syncer.wake_fd

    def drain_wakeups(self) -> None:
        if self._syncer is not None:
            self._syncer.drain_wakeups()

    def wake_when(self, seq: int) -> bool:
        """Have `wake_fd` woken once write `seq` is durable; True when it is already (an
        fsync error is raised here, as by `durable`)."""
        if self._syncer is None or self._syncer.wake_when(seq):
            return self.durable >= seq
        return False

    # -- appending ----------------------------------------------------------------------
    def submitted(self, task: dict[str, Any]) -> None:
        self._add({"k": "s", "t": task}, sync=True)

    def submitted_raw(self, header: bytes, count: int, born_ms: int) -> None:
        """A whole SUBMIT header of `count` tasks, as received, every task of it accepted
        and stamped `born_ms`."""
        self._add({"k": "b", "h": header, "ts": born_ms}, sync=True, items=count)

    def decided(self, decision: dict[str, Any]) -> None:
        self._add({"k": "d", "d": decision}, sync=False)

    def decided_raw(self, header: bytes, count: int) -> None:
        """A whole DECISION header of `count` decisions, as received, each final and applied."""
        self._add({"k": "e", "h": header}, sync=False, items=count)

    def submitted_batch(self, header: bytes, tasks: list[dict[str, Any]], whole: bool,
                        born_ms: int) -> None:
        """The new tasks of one SUBMIT: one record for the header as received when every
        task of it is new (`whole`) and it is not too big, else one record per task."""
        if whole and len(header) <= RAW_RECORD_MAX:
            self.submitted_raw(header, len(tasks), born_ms)
            return
        for task in tasks:
            self.submitted(stored_task(task))

    def decided_batch(self, header: bytes, decisions: list[dict[str, Any]],
                      whole: bool) -> None:
        """The final decisions of one DECISION: its header as received when they are all of
        it (`whole`, no re-encode) and it is not too big, else one record each."""
        if whole and len(header) <= RAW_RECORD_MAX:
            self.decided_raw(header, len(decisions))
            return
        for decision in decisions:
            self.decided(decision)

    def dispatched(self, ids: list[str], born_ms: int) -> None:
        """First dispatch of these tasks, stamped `born_ms` (call `write` before sending)."""
        self._add({"k": "x", "ids": ids, "ts": born_ms}, sync=False, items=0)

    def failed(self, task_id: str, failures: int, attempt: int) -> None:
        """An attempt was lost; not fsynced (a crash forgets at most the latest counts)."""
        self._add({"k": "f", "id": task_id, "n": failures, "a": attempt}, sync=False)

    def dead_lettered(self, task: dict[str, Any], letter: dict[str, Any]) -> None:
        self._add({"k": "l", "t": task, "x": letter}, sync=True)

    def requeued(self, task_id: str, born_ms: int | None = None) -> None:
        rec: dict[str, Any] = {"k": "r", "id": task_id}
        if born_ms is not None:
            rec["born_ms"] = born_ms
        self._add(rec, sync=True)

    def purged(self, task_id: str) -> None:
        self._add({"k": "p", "id": task_id}, sync=True)

    def _add(self, record: dict[str, Any], *, sync: bool, items: int = 1) -> None:
        self._buf.append(_frame(record))
        self._buf_items += items
        self._must_sync = self._must_sync or sync

    def pending_records(self) -> int:
        return len(self._buf)

    def write(self) -> int:
        """Write the buffered records in one write (they reach the kernel: a crash of the
        process keeps them), asking for no fsync: `commit` does. Items written."""
        if not self._buf:
            return 0
        if self._file is None:
            raise RuntimeError("task journal: replay() must run before write()")
        n, data = self._buf_items, b"".join(self._buf)
        self._buf.clear()
        self._buf_items = 0
        self._file.write(data)
        self._file.flush()
        self.counters["writes"] += 1
        self.records += n
        self.counters["records"] += n
        return n

    def commit(self) -> int:
        """`write`, then, when a record written since the last request must be durable, ask
        the fsync thread for an fsync (`wanted` grows; `durable` follows). Items written."""
        n = self.write()
        if self._must_sync:
            self._must_sync = False
            self.wanted += 1
            if self._syncer is not None:
                self._syncer.request(self.wanted, self._file.fileno())
        return n

    # -- compaction ---------------------------------------------------------------------
    def should_compact(self, live: int) -> bool:
        return self.records > max(self.compact_min_records, self.compact_ratio * live)

    def compact(self, pending: list[tuple[dict[str, Any], int, int, bool]],
                dead: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """Rewrite the file with only the live records: pending tasks (task, failures,
        attempt, dispatched before) and dead letters."""
        self.commit()
        if self._syncer is None:
            self._compact(pending, dead)
            return
        with self._syncer.paused():  # no fsync on the old file while it is replaced
            self._compact(pending, dead)
            self._syncer.durable = self.wanted  # the new file holds it all, fsynced

    def _compact(self, pending: list[tuple[dict[str, Any], int, int, bool]],
                 dead: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        tmp = self.path.with_suffix(".compact")
        with tmp.open("wb") as f:
            f.write(b"".join(_compacted(pending)))
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
        """Write what is buffered, stop the fsync thread, fsync, close: all durable."""
        if self._file is not None:
            self.commit()
            if self._syncer is not None:
                self._syncer.close()
                self._syncer = None
            if self.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
