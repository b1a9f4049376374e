"""Run one role (broker, sink, worker) from its `Settings`: what `pipeline ROLE` calls.

Each function builds the role's configuration, starts what surrounds the loop (a metrics
endpoint, CurveZMQ and its ZAP handler when configured), runs the loop until `stop` is set,
and tears everything down in reverse order. Imports stay lazy: the worker path must never
import the Rust extension.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pipeline.config import Settings

log = logging.getLogger(__name__)

Ready = Callable[[], None]


def serve_broker(settings: Settings, ready: Ready, stop: threading.Event) -> int:
    from brokers.broker import serve

    return serve(settings.broker(), ready=ready, stop=stop)


def serve_sink(settings: Settings, ready: Ready, stop: threading.Event) -> int:
    from pipeline.sink import Sink

    sink = Sink(settings.sink())
    try:
        return sink.run(ready=ready, stop=stop)
    finally:
        sink.close()


def serve_worker(settings: Settings, ready: Ready, stop: threading.Event) -> int:
    from pipeline.worker import Worker

    worker = Worker(settings.worker())
    try:
        return worker.run(ready=ready, stop=stop)
    finally:
        worker.close()
