"""Run one role (broker, sink, worker) from its `Settings`: what `pipeline ROLE` calls.

Each function builds the role's configuration, starts what surrounds the loop (a metrics
endpoint, CurveZMQ and its ZAP handler when configured), runs the loop until `stop` is set,
and tears everything down in reverse order. Imports stay lazy: the worker path must never
import the Rust extension.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.config import Settings

log = logging.getLogger(__name__)

Ready = Callable[[], None]

# A role's loop allocates a few small containers per task (decoded maps, the broker's
# entries) and frees nearly all of them soon, without cycles. At CPython's default gen0
# threshold (700) the collector then ran about once per 200 tasks and scanned the role's
# whole young heap each time: 0.5-0.9 us of CPU per task in the broker and in each worker.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Before a role's loop: move what start-up made (modules, configuration, sockets) out of
    the collector's sight (`gc.freeze`), and collect young objects less often. Cycles are
    still collected, only later."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@contextlib.contextmanager
def metrics_endpoint(settings: Settings, role: str, registry: Any) -> Iterator[int]:
    """Serve `registry` on `[metrics] <role>_port` (0: off); yields the port or 0."""
    port = settings.get("metrics", f"{role}_port")
    if not port:
        yield 0
        return
    from pipeline.metrics import MetricsServer

    server = MetricsServer(registry, settings.get("metrics", "host"), port)
    try:
        yield server.port
    finally:
        server.close()


def serve_broker(settings: Settings, ready: Ready, stop: threading.Event) -> int:
    from brokers.broker import Broker, serve
    from pipeline.metrics import BrokerMetrics
    from pipeline.security import apply_curve, server_context, server_keys

    metrics = BrokerMetrics()
    config = settings.broker()
    keys = server_keys(settings) if settings.get("security", "curve") else None
    with server_context(settings, "broker") as ctx, \
            metrics_endpoint(settings, "broker", metrics.registry) as port:
        broker = Broker(config, ctx=ctx)
        for sock in (broker.frontend, broker.backend, broker.control):
            apply_curve(sock, keys, server=True)
        on_pass = (lambda: metrics.maybe_refresh(broker.status)) if port else None
        tune_gc()
        try:
            return serve(config, ready, stop, broker=broker, on_pass=on_pass)
        finally:
            broker.close()


def serve_sink(settings: Settings, ready: Ready, stop: threading.Event) -> int:
    from pipeline.metrics import SinkMetrics
    from pipeline.security import server_context, server_keys
    from pipeline.sink import Sink

    config = settings.sink(server_keys(settings) if settings.get("security", "curve") else None)
    metrics = SinkMetrics(config.journal_dir, config.namespace)
    with server_context(settings, "sink") as ctx, \
            metrics_endpoint(settings, "sink", metrics.registry) as port:
        sink = Sink(config, ctx=ctx)
        if port:
            sink.engine = metrics.wrap(sink.engine)
        tune_gc()
        try:
            return sink.run(ready=ready, stop=stop)
        finally:
            sink.close()


def serve_worker(settings: Settings, ready: Ready, stop: threading.Event) -> int:
    from pipeline.metrics import WorkerMetrics
    from pipeline.security import client_context
    from pipeline.worker import Worker

    config = settings.worker()
    with client_context(settings) as ctx:
        worker = Worker(config, ctx=ctx)
        metrics = WorkerMetrics(config.namespace, worker.counters)
        with metrics_endpoint(settings, "worker", metrics.registry) as port:
            if port:
                worker.on_batch = metrics.on_batch
            tune_gc()
            try:
                return worker.run(ready=ready, stop=stop)
            finally:
                worker.close()
