"""The `pipeline` command: roles (broker, sink, worker), the embedded `run`, and tools.

The CLI owns logging set-up (one small dictConfig); library modules only get loggers.
Signals only set a flag: the first SIGTERM/SIGINT drains, a second one exits at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging.config
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.config import Endpoints, SinkConfig, WorkerConfig
from pipeline.runner import READY_LINE

log = logging.getLogger("pipeline")

# Modules that add sub-commands: each defines `register(subparsers)` and keeps its own
# imports lazy (the worker path must never import the Rust extension).
COMMAND_MODULES: list[str] = []


def setup_logging(level: str = "INFO", json_format: bool = False) -> None:
    fmt = ('{"t":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s",'
           '"pid":%(process)d,"msg":"%(message)s"}' if json_format else
           "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"format": fmt}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default",
                                "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
    })


def stop_on_signals() -> threading.Event:
    """A flag set by the first SIGTERM/SIGINT; the second exits at once."""
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def announce_ready() -> None:
    sys.stdout.buffer.write(READY_LINE + b"\n")
    sys.stdout.flush()


def _endpoint_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("endpoints (default: ipc:// under --run-dir)")
    g.add_argument("--run-dir", default=os.environ.get("PIPELINE_RUN_DIR", ".pipeline"))
    for name in ("frontend", "backend", "control", "updates", "events", "sync"):
        g.add_argument(f"--{name}", default=None)


def endpoints_from(args: argparse.Namespace) -> Endpoints:
    base = Endpoints.embedded(args.run_dir) if any(
        getattr(args, n) is None for n in ("frontend", "backend", "control", "updates",
                                           "events", "sync")) else None
    pick = {n: getattr(args, n) or getattr(base, n)
            for n in ("frontend", "backend", "control", "updates", "events", "sync")}
    return Endpoints(**pick)


# -- roles -------------------------------------------------------------------------------------
def cmd_broker(args: argparse.Namespace) -> int:
    from brokers.broker import serve
    from brokers.config import BrokerConfig
    ep = endpoints_from(args)
    config = BrokerConfig(frontend=ep.frontend, backend=ep.backend, control=ep.control,
                          heartbeat_interval_ms=args.heartbeat_ms)
    return serve(config, ready=announce_ready, stop=stop_on_signals())


def cmd_sink(args: argparse.Namespace) -> int:
    from pipeline.sink import Sink
    config = SinkConfig(endpoints=endpoints_from(args), app=args.app, journal_dir=args.journal,
                        fsync=args.fsync, strict=args.strict, recipes=args.recipes,
                        namespace=args.namespace)
    stop = stop_on_signals()
    sink = Sink(config)
    try:
        return sink.run(ready=announce_ready, stop=stop)
    finally:
        sink.close()


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.worker import Worker
    kwargs: dict[str, Any] = {"name": args.name} if args.name else {}
    config = WorkerConfig(endpoints=endpoints_from(args), app=args.app, credit=args.credit,
                          namespace=args.namespace, heartbeat_interval_ms=args.heartbeat_ms,
                          **kwargs)
    stop = stop_on_signals()
    worker = Worker(config)
    try:
        return worker.run(ready=announce_ready, stop=stop)
    finally:
        worker.close()


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import Cluster
    cluster = Cluster(app=args.app, workers=args.workers, recipes=args.recipes,
                      journal_dir=args.journal, fsync=args.fsync)
    stop = stop_on_signals()
    cluster.start()
    ep = cluster.endpoints
    print(f"pipeline running: {args.workers} workers\n  producers -> {ep.frontend}\n"
          f"  subscribers -> {ep.events} (snapshots: {ep.sync})\nCtrl-C to stop.", flush=True)
    try:
        while not stop.wait(0.5):
            if any(not c.alive() for c in cluster.children()):
                log.error("a pipeline process exited; stopping the rest")
                break
    finally:
        cluster.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo
    return run_demo(tasks=args.tasks, workers=args.workers)


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=os.environ.get("PIPELINE_LOG_LEVEL", "WARNING"))
    parser.add_argument("--log-json", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_roles(sub)
    _add_embedded(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _add_roles(sub: Any) -> None:
    p = sub.add_parser("broker", help="run the broker")
    _endpoint_args(p)
    p.add_argument("--heartbeat-ms", type=int, default=1000)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("sink", help="run the sink supervisor (the only writer of the state)")
    _endpoint_args(p)
    p.add_argument("--app", required=True, help="module declaring the processes")
    p.add_argument("--journal", default="journal", help="journal directory")
    p.add_argument("--fsync", choices=["always", "interval", "never"], default="interval")
    p.add_argument("--strict", action="store_true", help="strict compare-and-swap mode")
    p.add_argument("--recipes", default=None, help="audit recipe file (TOML or YAML)")
    p.add_argument("--namespace", default="default", help="heavy-zone namespace")
    p.set_defaults(func=cmd_sink)

    p = sub.add_parser("worker", help="run one worker")
    _endpoint_args(p)
    p.add_argument("--app", required=True, help="module declaring the processes")
    p.add_argument("--credit", type=int, default=64, help="tasks this worker may hold")
    p.add_argument("--name", default=None)
    p.add_argument("--namespace", default="default", help="heavy-zone namespace")
    p.add_argument("--heartbeat-ms", type=int, default=1000)
    p.set_defaults(func=cmd_worker)


def _add_embedded(sub: Any) -> None:
    p = sub.add_parser("run", help="run broker, sink and N workers on this machine")
    p.add_argument("--app", required=True)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--recipes", default=None)
    p.add_argument("--journal", default=None)
    p.add_argument("--fsync", choices=["always", "interval", "never"], default="interval")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run the built-in demo end to end")
    p.add_argument("--tasks", type=int, default=3000)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level.upper(), args.log_json)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)
