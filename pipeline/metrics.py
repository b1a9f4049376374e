"""Prometheus metrics for the broker, the sink and the workers.

Each process keeps its own `CollectorRegistry` (never the global default one, so tests that
build several roles in one interpreter do not leak into each other) and serves it on
`--metrics-port` (`[metrics] <role>_port`; 0 = off) from a daemon HTTP thread.

The hot paths stay cheap: the sink counts a batch's decisions in one pass only when the
batch holds something other than commits, a worker hands over each batch of updates once,
and the broker's figures are read from its STATUS map once a second by the broker's own
thread. Figures that other threads may read safely (a directory's size, an int) are read
at scrape time by small collectors.

Metric names (all prefixed `pipeline_`):

    broker_tasks_total{event}                accepted, dispatched, redelivered, dead_lettered
    broker_decisions_total{status}           decisions the broker applied
    broker_queue_depth{process}              queued tasks per process
    broker_tasks_held / in_flight / parked / delayed / dead_letters / workers   gauges
    broker_worker_in_flight{worker}, broker_worker_credit{worker}
    broker_process_blocked{process}, broker_blocked_processes
    sink_updates_total, sink_commits_total, sink_batches_total
    sink_decisions_total{status,level,rule}  audit decisions
    sink_batch_seconds, sink_batch_size      histograms: engine.apply_batch time and size
    sink_journal_sync_seconds                histogram: engine.tick/flush after appends
                                             (the fsync when the policy makes one due)
    sink_state_version, sink_blocked_processes, sink_journal_bytes
    worker_tasks_total{process}, worker_errors_total, worker_task_seconds (histogram)
    heavy_segments, heavy_bytes              segments and bytes in the namespace's /dev/shm
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
REFRESH_S = 1.0


class MetricsServer:
    """A registry served over HTTP on one port until `close()`."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.httpd, self.thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self.httpd.server_port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class BatchHistogram(Collector):
    """A histogram fed a batch at a time (one lock per batch, a bisect per value)."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...],
                 registry: CollectorRegistry) -> None:
        self.name, self.doc, self.bounds = name, doc, buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, total, local = self.bounds, 0.0, Tally[int]()
        for v in values:
            local[bisect.bisect_left(bounds, v)] += 1
            total += v
        with self._lock:
            for i, n in local.items():
                self._counts[i] += n
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, n in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=total)


class ReadAtScrape(Collector):
    """Gauges computed when scraped, from functions that are safe to call from any thread."""

    def __init__(self, registry: CollectorRegistry,
                 gauges: dict[str, tuple[str, Callable[[], float]]]) -> None:
        self.gauges = gauges
        registry.register(self)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (doc, read) in self.gauges.items():
            try:
                value = float(read())
            except OSError:
                continue
            yield GaugeMetricFamily(name, doc, value=value)


def heavy_usage(namespace: str, root: Path = Path("/dev/shm")) -> tuple[int, int]:
    """(segments, bytes) under the namespace's directory in /dev/shm (pool included)."""
    base = root / f"pipeline-{namespace}"
    count = total = 0
    for directory in (base, base / "pool"):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                count += 1
                total += entry.stat(follow_symlinks=False).st_blocks * 512
    return count, total


def _heavy_gauges(namespace: str) -> dict[str, tuple[str, Callable[[], float]]]:
    return {
        "pipeline_heavy_segments": ("shared-memory segments in this deployment's namespace",
                                    lambda: heavy_usage(namespace)[0]),
        "pipeline_heavy_bytes": ("bytes of /dev/shm those segments occupy",
                                 lambda: heavy_usage(namespace)[1]),
    }


# -- broker ------------------------------------------------------------------------------------
BROKER_EVENTS = {"accepted": "accepted", "dispatched": "dispatched",
                 "redelivered": "redelivered", "dead_lettered": "dead_lettered"}


class BrokerMetrics:
    """Refreshed from `Broker.status()` by the broker's own thread, at most once a second."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.tasks = Counter("pipeline_broker_tasks", "tasks by event", ["event"], registry=r)
        self.decisions = Counter("pipeline_broker_decisions", "decisions applied by status",
                                 ["status"], registry=r)
        self.malformed = Counter("pipeline_broker_malformed", "malformed messages dropped",
                                 registry=r)
        self.depth = Gauge("pipeline_broker_queue_depth", "queued tasks", ["process"],
                           registry=r)
        self.figures = {k: Gauge(f"pipeline_broker_{k}", doc, registry=r) for k, doc in (
            ("tasks_held", "tasks held"), ("in_flight", "tasks dispatched and undecided"),
            ("parked", "tasks of blocked processes"), ("delayed", "retries waiting"),
            ("dead_letters", "dead letters kept"), ("workers", "workers registered"),
            ("blocked_processes", "processes blocked"))}
        self.worker_in_flight = Gauge("pipeline_broker_worker_in_flight", "per worker",
                                      ["worker"], registry=r)
        self.worker_credit = Gauge("pipeline_broker_worker_credit", "per worker", ["worker"],
                                   registry=r)
        self.blocked = Gauge("pipeline_broker_process_blocked", "1 while blocked",
                             ["process"], registry=r)
        self._seen: dict[str, int] = {}
        self._next = 0.0

    def maybe_refresh(self, status: Callable[[], dict[str, Any]]) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + REFRESH_S
            self.refresh(status())

    def refresh(self, st: dict[str, Any]) -> None:
        counters = st.get("counters", {})
        for key, event in BROKER_EVENTS.items():
            self.tasks.labels(event).inc(self._delta(key, counters))
        for key in counters:
            if key.startswith("decided."):
                self.decisions.labels(key[8:]).inc(self._delta(key, counters))
        self.malformed.inc(self._delta("malformed", counters))
        self._gauges(st)

    def _delta(self, key: str, counters: dict[str, int]) -> int:
        value = int(counters.get(key, 0))
        delta = max(0, value - self._seen.get(key, 0))
        self._seen[key] = value
        return delta

    def _gauges(self, st: dict[str, Any]) -> None:
        self.figures["tasks_held"].set(st.get("tasks", 0))
        for key in ("in_flight", "parked", "delayed", "dead_letters"):
            self.figures[key].set(st.get(key, 0))
        self.figures["workers"].set(len(st["workers"]))
        self.figures["blocked_processes"].set(len(st["blocked"]))
        _relabel(self.depth, st["queues"].items())
        _relabel(self.worker_in_flight, ((w["name"], w["in_flight"]) for w in st["workers"]))
        _relabel(self.worker_credit, ((w["name"], w["credit"]) for w in st["workers"]))
        _relabel(self.blocked, ((b["process"], 1) for b in st["blocked"]))


def _relabel(gauge: Gauge, items: Iterable[tuple[str, float]]) -> None:
    """Set a one-label gauge to exactly these label values (gone labels disappear)."""
    gauge.clear()
    for label, value in items:
        gauge.labels(label).set(value)


# -- sink --------------------------------------------------------------------------------------
class SinkMetrics:
    """Wraps the sink's engine: times apply_batch and the journal's tick/flush."""

    def __init__(self, journal_dir: str, namespace: str) -> None:
        self.registry = r = CollectorRegistry()
        self.updates = Counter("pipeline_sink_updates", "updates decided", registry=r)
        self.commits = Counter("pipeline_sink_commits", "updates committed", registry=r)
        self.batches = Counter("pipeline_sink_batches", "engine batches", registry=r)
        self.decisions = Counter("pipeline_sink_decisions", "audit decisions",
                                 ["status", "level", "rule"], registry=r)
        self.batch_seconds = Histogram("pipeline_sink_batch_seconds", "engine.apply_batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("pipeline_sink_batch_size", "updates per batch",
                                    buckets=SIZE_BUCKETS, registry=r)
        self.sync_seconds = Histogram("pipeline_sink_journal_sync_seconds",
                                      "engine.tick/flush after appends (fsync when due)",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.version = Gauge("pipeline_sink_state_version", "global version", registry=r)
        self.blocked = Gauge("pipeline_sink_blocked_processes", "processes blocked",
                             registry=r)
        gauges = _heavy_gauges(namespace)
        gauges["pipeline_sink_journal_bytes"] = ("journal size on disk",
                                                 lambda: _dir_bytes(journal_dir))
        ReadAtScrape(r, gauges)

    def wrap(self, engine: Any) -> TimedEngine:
        stats = engine.dedup_stats
        ReadAtScrape(self.registry, {
            "pipeline_sink_dedup_entries": ("decisions the de-duplication table remembers",
                                            lambda: stats()["entries"]),
            "pipeline_sink_dedup_horizon_ms": ("tasks born at or before this broker time "
                                               "(ms) are refused as expired",
                                               lambda: stats()["horizon_ms"]),
        })
        return TimedEngine(engine, self)

    def batch(self, batch: Any, seconds: float) -> None:
        n = len(batch)
        self.batches.inc()
        self.updates.inc(n)
        self.commits.inc(batch.commits)
        self.batch_seconds.observe(seconds)
        self.batch_size.observe(n)
        if batch.commits == n:  # the common case: nothing to look at one by one
            if n:
                self.decisions.labels("committed", "", "").inc(n)
            return
        tally = Tally((d.status, d.level or "", d.rule or "") for d in _items(batch))
        for (status, level, rule), count in tally.items():
            self.decisions.labels(status, level, rule).inc(count)


def _items(batch: Any) -> Iterator[Any]:
    for i in range(len(batch)):
        yield batch[i]


class TimedEngine:
    """The sink's engine with timing around the calls metrics care about."""

    def __init__(self, engine: Any, metrics: SinkMetrics) -> None:
        self._engine = engine
        self._metrics = metrics
        self._dirty = False
        self._next = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def apply_batch(self, frames: Any, vetted: Any = None) -> Any:
        started = time.perf_counter()
        batch = self._engine.apply_batch(frames, vetted)
        self._metrics.batch(batch, time.perf_counter() - started)
        self._dirty = self._dirty or batch.commits > 0
        return batch

    def tick(self) -> None:
        self._timed(self._engine.tick)
        now = time.monotonic()
        if now >= self._next:
            self._next = now + REFRESH_S
            self._metrics.version.set(self._engine.version)
            self._metrics.blocked.set(len(self._engine.blocked()))

    def flush(self) -> None:
        self._timed(self._engine.flush)

    def _timed(self, call: Callable[[], None]) -> None:
        if not self._dirty:
            call()
            return
        started = time.perf_counter()
        call()
        self._metrics.sync_seconds.observe(time.perf_counter() - started)
        self._dirty = False


def _dir_bytes(path: str) -> int:
    with os.scandir(path) as entries:
        return sum(e.stat(follow_symlinks=False).st_size for e in entries
                   if e.is_file(follow_symlinks=False))


# -- worker ------------------------------------------------------------------------------------
class WorkerMetrics:
    """Fed one batch of wire updates at a time by the worker loop."""

    def __init__(self, namespace: str, counters: dict[str, int]) -> None:
        self.registry = r = CollectorRegistry()
        self.tasks = Counter("pipeline_worker_tasks", "tasks run", ["process"], registry=r)
        self.errors = Counter("pipeline_worker_errors", "tasks whose process raised",
                              registry=r)
        self.seconds = BatchHistogram("pipeline_worker_task_seconds", "a process's run time",
                                      LATENCY_BUCKETS, r)
        gauges = _heavy_gauges(namespace)
        gauges["pipeline_worker_resyncs"] = ("state replica resyncs",
                                             lambda: counters.get("resyncs", 0))
        ReadAtScrape(r, gauges)

    def on_batch(self, updates: list[dict[str, Any]]) -> None:
        by_process = Tally(u["process"] for u in updates)
        for process, n in by_process.items():
            self.tasks.labels(process).inc(n)
        errors = sum(1 for u in updates if u.get("error") is not None)
        if errors:
            self.errors.inc(errors)
        self.seconds.observe_many(u["run_us"] / 1e6 for u in updates)
