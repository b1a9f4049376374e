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

from pipeline import config
from pipeline.errors import ConfigError
from pipeline.runner import READY_LINE

log = logging.getLogger("pipeline")

# Modules that add sub-commands: each defines `register(subparsers)` and keeps its own
# imports lazy (the worker path must never import the Rust extension).
COMMAND_MODULES: list[str] = [
    "pipeline.cli_ops", "pipeline.cli_dlq", "pipeline.bench.cli", "pipeline.cli_audit"]


def setup_logging(level: str = "INFO", json_format: bool = False) -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    formatter = {"()": "pipeline.logs.JsonFormatter"} if json_format else {"format": fmt}
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
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
    """Endpoint flags; like every setting flag, dest is "section.key" and None means unset."""
    g = p.add_argument_group("endpoints (default: ipc:// under --run-dir)")
    g.add_argument("--run-dir", dest="endpoints.run_dir")
    for name in config.ENDPOINT_NAMES:
        g.add_argument(f"--{name}", dest=f"endpoints.{name}")
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                   help="pipeline.toml (also accepted before the command)")


def settings_from(args: argparse.Namespace) -> config.Settings:
    """Defaults < --config FILE < PIPELINE_<SECTION>_<KEY> < flags."""
    flags = {k: v for k, v in vars(args).items() if "." in k}
    return config.load(args.config, os.environ, flags)


# -- roles -------------------------------------------------------------------------------------
def cmd_broker(args: argparse.Namespace) -> int:
    from pipeline.roles import serve_broker
    return serve_broker(args.settings, announce_ready, stop_on_signals())


def cmd_sink(args: argparse.Namespace) -> int:
    from pipeline.roles import serve_sink
    return serve_sink(args.settings, announce_ready, stop_on_signals())


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.roles import serve_worker
    return serve_worker(args.settings, announce_ready, stop_on_signals())


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import Cluster
    env = {"PIPELINE_CONFIG": str(args.config)} if args.config else {}
    cluster = Cluster(app=args.app, workers=args.workers, recipes=args.recipes,
                      run_dir=args.run_dir, journal_dir=args.journal, fsync=args.fsync,
                      namespace=args.namespace, env=env)
    stop = stop_on_signals()
    cluster.start()
    ep = cluster.endpoints
    print(f"pipeline running: {args.workers} workers, journal {cluster.journal_dir}\n"
          f"  producers -> {ep.frontend}\n  subscribers -> {ep.events} (snapshots: "
          f"{ep.sync})\n  status: pipeline status --run-dir {args.run_dir}\nCtrl-C to stop.",
          flush=True)
    dead: list[str] = []
    try:
        while not stop.wait(0.5) and not dead:
            dead = [f"{c.role} (pid {c.pid}) exited with {c.proc.returncode}"
                    for c in cluster.children() if not c.alive()]
    finally:
        cluster.stop()
    for line in dead:
        hint = " (an S-level audit rule stopped the pipeline)" if "sink" in line and \
            line.endswith(" 3") else ""
        print(f"pipeline stopped: {line}{hint}; the rest were stopped in order",
              file=sys.stderr)
    return 1 if dead else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo
    return run_demo(tasks=args.tasks, workers=args.workers)


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="pipeline.toml for every role (default: $PIPELINE_CONFIG)")
    parser.add_argument("--log-level", dest="log.level")
    parser.add_argument("--log-json", dest="log.json", action="store_true", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_roles(sub)
    _add_embedded(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _add_roles(sub: Any) -> None:
    # Setting flags default to None (unset): the file and the environment fill the rest.
    p = sub.add_parser("broker", help="run the broker")
    _endpoint_args(p)
    p.add_argument("--heartbeat-ms", type=int, dest="broker.heartbeat_interval_ms")
    p.add_argument("--journal", dest="broker.journal_dir",
                   help="task journal directory (durable intake, dead letters)")
    p.add_argument("--max-attempts", type=int, dest="broker.max_attempts")
    p.add_argument("--metrics-port", type=int, dest="metrics.broker_port", help="0: off")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("sink", help="run the sink supervisor (the only writer of the state)")
    _endpoint_args(p)
    p.add_argument("--app", dest="sink.app", help="module declaring the processes")
    p.add_argument("--journal", dest="sink.journal_dir", help="journal directory")
    p.add_argument("--fsync", choices=["always", "interval", "never"], dest="sink.fsync")
    p.add_argument("--strict", action="store_true", default=None, dest="sink.strict",
                   help="strict compare-and-swap mode")
    p.add_argument("--recipes", dest="sink.recipes", help="audit recipe file (TOML or YAML)")
    p.add_argument("--namespace", dest="heavy.namespace", help="heavy-zone namespace")
    p.add_argument("--metrics-port", type=int, dest="metrics.sink_port", help="0: off")
    p.set_defaults(func=cmd_sink)

    p = sub.add_parser("worker", help="run one worker")
    _endpoint_args(p)
    p.add_argument("--app", dest="worker.app", help="module declaring the processes")
    p.add_argument("--credit", type=int, dest="worker.credit",
                   help="the least credit: tasks it may be sent ahead of running them")
    p.add_argument("--max-credit", type=int, dest="worker.max_credit",
                   help="the most credit; between the two it follows the pace")
    p.add_argument("--name", dest="worker.name")
    p.add_argument("--namespace", dest="heavy.namespace", help="heavy-zone namespace")
    p.add_argument("--heartbeat-ms", type=int, dest="worker.heartbeat_interval_ms")
    p.add_argument("--heavy-remote", choices=["auto", "on", "off"], dest="worker.heavy_remote",
                   help="heavy arrays as frames over the wire (a worker on another host than "
                        "the sink); auto: when `updates` is tcp:// to another host")
    p.add_argument("--metrics-port", type=int, dest="metrics.worker_port", help="0: off")
    p.set_defaults(func=cmd_worker)


def _add_embedded(sub: Any) -> None:
    p = sub.add_parser("run", help="run broker, sink and N workers on this machine")
    p.add_argument("--app", required=True)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--recipes", default=None, help="audit recipe file (TOML or YAML)")
    p.add_argument("--run-dir", default=".pipeline",
                   help="ipc:// sockets and, by default, the journals live here")
    p.add_argument("--journal", default=None, help="the sink's journal (default RUN_DIR/journal)")
    p.add_argument("--namespace", default=os.environ.get("PIPELINE_NAMESPACE", "default"),
                   help="heavy-zone namespace (producers use the same; default 'default')")
    p.add_argument("--fsync", choices=["always", "interval", "never"], default="interval")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run the built-in demo end to end")
    p.add_argument("--tasks", type=int, default=3000)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.settings = settings_from(args)
        setup_logging(args.settings.get("log", "level").upper(), args.settings.get("log", "json"))
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except ConfigError as exc:
        print(f"pipeline: configuration error: {exc}", file=sys.stderr)
        return 2
