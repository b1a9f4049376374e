"""`pipeline bench soak`: many small tasks through a real cluster, watching the resident
memory (VmRSS) of the broker and the sink.

The RSS of both is read from /proc at start (cluster up, before the first task), after a
warm-up (the first 5 % of the tasks), at half way, about every `period_s` seconds, and at
the end. Bounded structures (allocator pools, socket buffers, the broker's table of recent
decisions) fill up in the first half; so memory is *flat* when neither process grew over
the second half (half way to the end) by more than `FLAT_SLACK_MB` or
`FLAT_SLACK_FRACTION` of its size at half way, whichever is larger.
Every decision is counted by status: a soak whose tasks did not all commit raises.

The sink remembers decided task ids for exactly-once, in a table bounded by the
de-duplication horizon (`[sink] dedup_max_entries`, `dedup_window_s`). Its default bound
(5 million) is larger than a soak; the soak sets `dedup_max_entries` (default
`SOAK_DEDUP_MAX_ENTRIES`) so that the table reaches its bound within the first half, and
reports the table's figures at the end: memory is flat once the bound is reached.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

import zmq

from pipeline.api import Status
from pipeline.bench.cluster import CHUNK, WINDOW_CHUNKS, BenchError, rss_mb, running
from pipeline.cli_ops import request
from pipeline.producer import Producer, TaskHandle
from pipeline.protocol import Cmd

MARKS = {"warm": 0.05, "mid": 0.5}
FLAT_SLACK_MB = 16.0
FLAT_SLACK_FRACTION = 0.10
ROLES = ("broker", "sink")
SOAK_DEDUP_MAX_ENTRIES = 100_000


class Samples:
    """RSS samples of the broker and the sink: (tasks decided, MB per role)."""

    def __init__(self, pids: dict[str, int], period_s: float) -> None:
        self.pids = pids
        self.period_s = period_s
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.marks: dict[str, dict[str, float]] = {}
        self._last = 0.0

    def take(self, done: int) -> dict[str, float]:
        row = {role: round(rss_mb(pid), 1) for role, pid in self.pids.items()}
        self.rows.append((done, row))
        self._last = time.monotonic()
        return row

    def maybe(self, done: int, total: int) -> None:
        """Sample when the period has passed, and at each mark (kept by name)."""
        for name, fraction in MARKS.items():
            if name not in self.marks and done >= total * fraction:
                self.marks[name] = self.take(done)
                return
        if time.monotonic() - self._last >= self.period_s:
            self.take(done)


def run_soak(tasks: int, workers: int, *, period_s: float = 1.0,
             dedup_max_entries: int = SOAK_DEDUP_MAX_ENTRIES) -> dict[str, Any]:
    env = {"PIPELINE_SINK_DEDUP_MAX_ENTRIES": str(dedup_max_entries)}
    with running(workers, env=env) as cluster:
        if cluster.broker_child is None or cluster.sink_child is None:
            raise BenchError("the cluster has no broker or no sink")
        pids = {"broker": cluster.broker_child.pid, "sink": cluster.sink_child.pid}
        samples = Samples(pids, period_s)
        samples.take(0)
        with Producer(cluster.endpoints.frontend) as producer:
            t0 = time.perf_counter()
            statuses = _drive(producer, tasks, samples)
            elapsed = time.perf_counter() - t0
        samples.take(tasks)
        with zmq.Context() as ctx:
            dedup = request(ctx, cluster.endpoints.sync, Cmd.STATUS_REQ, {}, 10.0)["dedup"]
    if statuses != Counter({Status.COMMITTED: tasks}):
        raise BenchError(f"not every task committed: {dict(statuses)}")
    out = _report(tasks, workers, elapsed, samples)
    out.update({"dedup_max_entries": dedup_max_entries, "dedup_entries": dedup["entries"],
                "dedup_forgotten": dedup["forgotten"]})
    return out


def _drive(producer: Producer, tasks: int, samples: Samples) -> Counter[Status]:
    """Submit in chunks with a window of chunks in flight; count decisions, keep none."""
    window: deque[list[TaskHandle]] = deque()
    statuses: Counter[Status] = Counter()
    done = 0
    for start in range(0, tasks, CHUNK):
        window.append(producer.submit_many("small", [{}] * min(CHUNK, tasks - start)))
        if len(window) > WINDOW_CHUNKS:
            done += _collect(producer, window.popleft(), statuses)
            samples.maybe(done, tasks)
    while window:
        done += _collect(producer, window.popleft(), statuses)
        samples.maybe(done, tasks)
    return statuses


def _collect(producer: Producer, handles: list[TaskHandle], statuses: Counter[Status]) -> int:
    statuses.update(d.status for d in producer.results(handles, timeout=120))
    return len(handles)


def _report(tasks: int, workers: int, elapsed: float, samples: Samples) -> dict[str, Any]:
    start, end = samples.rows[0][1], samples.rows[-1][1]
    warm, mid = samples.marks.get("warm", start), samples.marks.get("mid", start)
    out: dict[str, Any] = {"tasks": tasks, "workers": workers,
                           "tasks_per_s": round(tasks / elapsed, 1)}
    flat = True
    for role in ROLES:
        series = [row[role] for _, row in samples.rows]
        growth = end[role] - mid[role]
        out.update({f"{role}_rss_mb_start": start[role], f"{role}_rss_mb_warm": warm[role],
                    f"{role}_rss_mb_mid": mid[role], f"{role}_rss_mb_end": end[role],
                    f"{role}_rss_mb_max": max(series),
                    f"{role}_growth_2nd_half_mb": round(growth, 1)})
        flat = flat and growth <= max(FLAT_SLACK_MB, FLAT_SLACK_FRACTION * mid[role])
    out["flat"] = flat
    out["samples"] = _thin(samples.rows, 20)
    return out


def _thin(rows: list[tuple[int, dict[str, float]]], n: int) -> list[list[float]]:
    """At most about n rows [tasks, broker MB, sink MB], first and last always kept."""
    step = max(1, len(rows) // n)
    kept = [*rows[:-1:step], rows[-1]]
    return [[done, row["broker"], row["sink"]] for done, row in kept]
