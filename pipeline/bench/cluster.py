"""The pipeline side of the benchmarks: a real Cluster (sink, broker, W workers as separate
processes over ipc://), fed through the public Producer API.

Every run starts its own cluster in a fresh run directory and stops it in a `finally`
block; the run directory (journal included) is removed afterwards. The decisions are counted
by status: a benchmark whose tasks were not all committed raises instead of printing a figure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.api import Decision, Status
from pipeline.producer import Producer, TaskHandle
from pipeline.runner import Cluster

APP = "pipeline.bench.apps"
CHUNK = 500  # tasks per submit_many
WINDOW_CHUNKS = 40  # chunks in flight before the producer collects the oldest one's decisions


class BenchError(RuntimeError):
    """A benchmark run went wrong (a task not committed, a process that died)."""


@contextmanager
def running(workers: int, *, env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A cluster of the bench app, every role with its default settings (workers' credit
    included: it follows their pace, pipeline/credit.py)."""
    run_dir = tempfile.mkdtemp(prefix="plb-")
    cluster = Cluster(app=APP, workers=workers, run_dir=run_dir, fsync="interval",
                      env=dict(env or {}))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def _check(decisions: list[Decision]) -> None:
    statuses = Counter(d.status for d in decisions)
    if statuses != Counter({Status.COMMITTED: len(decisions)}):
        raise BenchError(f"not every task committed: {dict(statuses)}")


class RssSampler:
    """Samples VmRSS of some processes from /proc every `period_s`; keeps the maximum (MB)."""

    def __init__(self, pids: dict[str, int], period_s: float = 0.05) -> None:
        self.pids = pids
        self.max_mb = dict.fromkeys(pids, 0.0)
        self._period = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            self.sample()

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.max_mb[name] = max(self.max_mb[name], rss_mb(pid))


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def submit_all(producer: Producer, process: str, args: dict[str, Any], tasks: int
               ) -> list[Decision]:
    """Submit `tasks` tasks in chunks (one SUBMIT each), keeping a window of chunks in flight,
    and wait for every decision."""
    window: list[list[TaskHandle]] = []
    decisions: list[Decision] = []
    for start in range(0, tasks, CHUNK):
        n = min(CHUNK, tasks - start)
        window.append(producer.submit_many(process, [args] * n))
        if len(window) > WINDOW_CHUNKS:
            decisions += producer.results(window.pop(0), timeout=120)
    for handles in window:
        decisions += producer.results(handles, timeout=120)
    return decisions


def throughput(cluster: Cluster, process: str, args: dict[str, Any], tasks: int,
               warmup: int = 2000, cpu: dict[str, float] | None = None) -> float:
    """Tasks per second, submit of the first to the decision of the last (all committed).
    With `cpu`, fill it with each role's CPU time per task in microseconds (user + system,
    from /proc; the producer is this process)."""
    with Producer(cluster.endpoints.frontend) as producer:
        _check(submit_all(producer, process, args, warmup))
        before = _cpu_times(cluster)
        t0 = time.perf_counter()
        decisions = submit_all(producer, process, args, tasks)
        elapsed = time.perf_counter() - t0
        after = _cpu_times(cluster)
    _check(decisions)
    if cpu is not None:
        cpu.update({role: round((after[role] - before[role]) / tasks * 1e6, 2)
                    for role in before})
    return tasks / elapsed


def _cpu_times(cluster: Cluster) -> dict[str, float]:
    """CPU seconds (user + system) per role; workers summed."""
    out = {"producer": time.process_time()}
    for child in cluster.children():
        out[child.role] = out.get(child.role, 0.0) + cpu_seconds(child.pid)
    return out


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latencies(cluster: Cluster, process: str, tasks: int, warmup: int = 200) -> list[float]:
    """Seconds from submit to the committed decision, one task at a time."""
    out = []
    with Producer(cluster.endpoints.frontend) as producer:
        _check([producer.submit(process).result(timeout=30) for _ in range(warmup)])
        decisions = []
        for _ in range(tasks):
            t0 = time.perf_counter()
            decisions.append(producer.submit(process).result(timeout=30))
            out.append(time.perf_counter() - t0)
    _check(decisions)
    return out
