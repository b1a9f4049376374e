"""The broker's bookkeeping, free of sockets: tasks, per-process queues, workers.

`TaskQueues` holds every task that waits for a worker: one FIFO deque per process, a set of
blocked processes whose queues are parked (kept, never dispatched), a heap of delayed retries,
and a round-robin ring so that no process starves the others. Tasks stay the decoded dicts
the producer sent; the broker sets `attempt` and `after` on them in place.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Collection, Iterable
from typing import Any


def wall_ms() -> int:
    """The broker's wall clock in ms: the `born_ms` stamp (the sink's de-duplication
    horizon compares stamps of this clock only)."""
    return time.time_ns() // 1_000_000


class Entry:
    """One task the broker holds, from SUBMIT to the sink's final decision."""

    __slots__ = ("conflicts", "failures", "fresh", "id", "process", "producer", "sent_at",
                 "task", "worker")

    def __init__(self, task: dict[str, Any], producer: bytes, fresh: bool = False) -> None:
        self.task = task
        self.id: str = task["id"]
        self.process: str = task["process"]
        self.producer = producer
        self.worker: bytes | None = None  # set while in flight
        self.sent_at = 0.0
        self.failures = 0  # dispatches that ended with a lost worker or an expired lease
        self.conflicts = 0  # dispatches the sink refused as stale (compare-and-swap)
        # Never dispatched by anyone: its first dispatch may stamp a new `born_ms` (no
        # attempt can have run, so no decision the sink might have forgotten exists).
        self.fresh = fresh

    @property
    def attempt(self) -> int:
        return int(self.task["attempt"])

    def next_attempt(self) -> None:
        self.task["attempt"] += 1


class Worker:
    """A registered worker: what it runs, how much more it may take, when it was last heard."""

    __slots__ = ("beat_at", "credit", "expires_at", "identity", "inflight", "name", "processes")

    def __init__(self, identity: bytes, name: str, processes: frozenset[str]) -> None:
        self.identity = identity
        self.name = name
        self.processes = processes
        self.credit = 0
        # Undecided task ids dispatched to this worker, in dispatch order.
        self.inflight: dict[str, None] = {}
        self.expires_at = 0.0  # evicted when silent past this
        self.beat_at = 0.0  # the broker sends a HEARTBEAT when it has said nothing until this

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "credit": self.credit, "in_flight": len(self.inflight),
                "processes": sorted(self.processes)}


class TaskQueues:
    """Per-process FIFO queues with blocking, delayed retries and round-robin selection."""

    def __init__(self) -> None:
        self.queues: dict[str, deque[Entry]] = {}
        self.blocked: dict[str, str] = {}  # process -> reason
        self._ring: deque[str] = deque()  # processes in round-robin order
        self._delayed: list[tuple[float, int, Entry]] = []
        self._seq = itertools.count()
        self.size = 0  # tasks in the queues (delayed ones not included)

    # -- adding -------------------------------------------------------------------------
    def push(self, entry: Entry) -> None:
        """Append a new task at the back of its process's queue."""
        self._queue(entry.process).append(entry)
        self.size += 1

    def push_front(self, entries: Iterable[Entry]) -> None:
        """Put tasks back at the front of their queues, keeping their relative order."""
        for entry in reversed(list(entries)):
            self._queue(entry.process).appendleft(entry)
            self.size += 1

    def delay(self, entry: Entry, due: float) -> None:
        heapq.heappush(self._delayed, (due, next(self._seq), entry))

    def release_due(self, now: float) -> int:
        """Move delayed tasks whose time has come to the front of their queues."""
        heap, released = self._delayed, []
        while heap and heap[0][0] <= now:
            released.append(heapq.heappop(heap)[2])
        if released:
            self.push_front(released)
        return len(released)

    def next_due(self) -> float | None:
        return self._delayed[0][0] if self._delayed else None

    # -- taking -------------------------------------------------------------------------
    def take(self, processes: frozenset[str], n: int) -> list[Entry]:
        """Up to n tasks of the given processes, round robin across processes, FIFO within."""
        blocked, queues = self.blocked, self.queues
        eligible = [p for p in self._ring if queues[p] and p in processes and p not in blocked]
        if not eligible or n <= 0:
            return []
        out: list[Entry]
        if len(eligible) == 1:
            q = queues[eligible[0]]
            if n >= len(q):
                out = list(q)
                q.clear()
            else:
                out = [q.popleft() for _ in range(n)]
            last = eligible[0]
        else:
            out = []
            last = self._round_robin(eligible, n, out)
        self.size -= len(out)
        self._ring.rotate(-(self._ring.index(last) + 1))
        return out

    def _round_robin(self, eligible: list[str], n: int, out: list[Entry]) -> str:
        queues, last = self.queues, eligible[0]
        while eligible:
            still: list[str] = []
            for p in eligible:
                q = queues[p]
                out.append(q.popleft())
                last = p
                if len(out) >= n:
                    return last
                if q:
                    still.append(p)
            eligible = still
        return last

    def has_work(self) -> bool:
        """Whether some task waits in a queue that is not blocked."""
        return self.size > self.parked()

    # -- blocking -----------------------------------------------------------------------
    def block(self, process: str, reason: str) -> bool:
        """Park a process's tasks; False when it was already blocked."""
        fresh = process not in self.blocked
        self.blocked[process] = reason
        return fresh

    def unblock(self, process: str) -> bool:
        return self.blocked.pop(process, None) is not None

    # -- figures and housekeeping -------------------------------------------------------
    def parked(self) -> int:
        queues = self.queues
        return sum(len(queues[p]) for p in self.blocked if p in queues)

    def delayed(self) -> int:
        return len(self._delayed)

    def counts(self) -> dict[str, int]:
        return {p: len(q) for p, q in self.queues.items() if q}

    def prune(self) -> None:
        """Forget processes whose queues are empty (hostile names must not pile up)."""
        empty = [p for p, q in self.queues.items() if not q]
        if empty:
            for p in empty:
                del self.queues[p]
            self._ring = deque(p for p in self._ring if p in self.queues)

    def queue(self, process: str) -> deque[Entry]:
        """The queue of a process (made when new). A caller that appends to it adds the
        count of what it appended to `size`."""
        return self._queue(process)

    def _queue(self, process: str) -> deque[Entry]:
        q = self.queues.get(process)
        if q is None:
            q = self.queues[process] = deque()
            self._ring.append(process)
        return q


class RecentDecisions:
    """The last `limit` final decisions by task id, so that a resubmit of a decided task is
    answered with its decision. Most are plain commits: those are kept as a tuple (process,
    attempt, version), about a third of the memory of the decision map (the table holds
    100,000 of them by default); any other decision is kept whole."""

    __slots__ = ("_items", "_names", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[str, tuple[str, int, int] | dict[str, Any]] = OrderedDict()
        self._names: dict[str, str] = {}  # one copy of each process name

    def __len__(self) -> int:
        return len(self._items)

    def add(self, task_id: str, d: dict[str, Any]) -> None:
        items = self._items
        if (d["status"] == "committed" and not d.get("reason") and d.get("rule") is None
                and d.get("level") is None and not d.get("blocked")
                and not d.get("retry_after_ms") and d.get("error") is None):
            process = d["process"]
            items[task_id] = (self._names.setdefault(process, process), d["attempt"],
                              d["version"])
        else:
            items[task_id] = d
        if len(items) > self.limit:
            items.popitem(last=False)

    def add_commits(self, entries: list[Entry], version: int) -> None:
        """Plain commits of these tasks, versions `version`, `version + 1`, ... in order
        (from a commit index), kept as `add` keeps a plain commit."""
        items, names, last, name = self._items, self._names, None, ""
        for e in entries:
            process = e.process
            if process != last:
                last = process
                name = names.setdefault(process, process)
            items[e.id] = (name, e.task["attempt"], version)
            version += 1
        for _ in range(len(items) - self.limit):
            items.popitem(last=False)

    def ids(self) -> Collection[str]:
        """The task ids held (a live view: `in` tests it at dict speed)."""
        return self._items.keys()

    def get(self, task_id: str) -> dict[str, Any] | None:
        d = self._items.get(task_id)
        if not isinstance(d, tuple):  # narrows for the type checker too
            return d
        process, attempt, version = d
        return {"task": task_id, "status": "committed", "process": process, "attempt": attempt,
                "version": version, "reason": "", "rule": None, "level": None,
                "retry_after_ms": 0, "error": None, "blocked": False}

    def pop(self, task_id: str) -> None:
        self._items.pop(task_id, None)
