"""Start and stop a deployment's processes on one machine: sink, broker, N workers.

Each child is a fresh interpreter (`python -m pipeline ROLE ...`: no inherited ZeroMQ
context), prints one line `READY` on stdout when it is ready, logs to stderr, and is stopped
by its PID: SIGTERM first (it drains), SIGKILL if it has not exited in time. Stages start in
order (sink, broker, workers), each only after the previous one reported ready.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Endpoints

log = logging.getLogger(__name__)

READY_LINE = b"READY"
# A worker started with this prelude cannot import the Rust extension (tests prove it runs).
NO_ENGINE_PRELUDE = "import sys; sys.modules['pipeline._engine'] = None; "


class StartError(RuntimeError):
    """A child process exited or did not report ready in time."""


@dataclass
class Child:
    role: str
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *paths])
    env.update(extra or {})
    return env


def spawn(role: str, args: list[str], *, env: dict[str, str] | None = None,
          prelude: str = "", log_path: str | None = None, stderr: int | None = None,
          ready_timeout_s: float = 30.0) -> Child:
    """Start `pipeline ROLE ARGS...` and wait for its READY line."""
    code = f"{prelude}from pipeline.cli import main; raise SystemExit(main())"
    cmd = [sys.executable, "-c", code, role, *args]
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 (the child owns it)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log or stderr,
                                env=_child_env(env),
                                start_new_session=True)
    finally:
        if log is not None:
            log.close()
    child = Child(role, proc)
    try:
        _await_ready(child, ready_timeout_s)
    except BaseException:
        stop_children([child], timeout_s=2.0)
        raise
    return child


def _await_ready(child: Child, timeout_s: float) -> None:
    """Wait for the child's READY line. Stdout is read unbuffered (os.read on the pipe), so
    lines printed before READY, or READY arriving with them in one read, are never left in a
    buffer that `select` cannot see."""
    out = child.proc.stdout
    if out is None:
        raise StartError(f"{child.role}: no stdout pipe")
    deadline = time.monotonic() + timeout_s
    pending = b""
    with selectors.DefaultSelector() as sel:
        sel.register(out, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(out.fileno(), 4096)
            if not chunk:
                raise StartError(f"{child.role} exited with {child.proc.wait()} before ready")
            *lines, pending = (pending + chunk).split(b"\n")
            if any(line.strip() == READY_LINE for line in lines):
                out.close()
                return
    raise StartError(f"{child.role} (pid {child.pid}) not ready after {timeout_s}s")


def stop_children(children: list[Child], timeout_s: float = 10.0) -> dict[int, int]:
    """SIGTERM each child, wait, SIGKILL stragglers; return {pid: exit code}."""
    for child in children:
        if child.alive():
            _signal(child, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    codes: dict[int, int] = {}
    for child in children:
        try:
            codes[child.pid] = child.proc.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) did not stop in time; killing it", child.role, child.pid)
            _signal(child, signal.SIGKILL)
            codes[child.pid] = child.proc.wait()
        if child.proc.stdout is not None and not child.proc.stdout.closed:
            child.proc.stdout.close()
    return codes


def _signal(child: Child, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.proc.send_signal(sig)


@dataclass
class Cluster:
    """An embedded deployment: one sink, one broker, N workers, over `ipc://`."""

    app: str
    workers: int = 2
    run_dir: str | None = None
    journal_dir: str | None = None
    recipes: str | None = None
    namespace: str | None = None
    fsync: str = "interval"
    credit: int = 64
    heartbeat_interval_ms: int = 1000
    # The broker's task journal (durable intake); default: <run_dir>/broker-journal.
    broker_journal_dir: str | None = None
    broker_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log_dir: str | None = None  # each child's stderr goes to LOG_DIR/ROLE.log, else to:
    stderr: int | None = None  # a file descriptor (or subprocess.DEVNULL); None: inherited
    sink_child: Child | None = None
    broker_child: Child | None = None
    worker_children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._own_run_dir = self.run_dir is None
        if self.run_dir is None:
            self.run_dir = tempfile.mkdtemp(prefix="pipeline-")
        self.endpoints = Endpoints.embedded(self.run_dir)
        if self.journal_dir is None:
            self.journal_dir = str(Path(self.run_dir) / "journal")
        if self.broker_journal_dir is None:
            self.broker_journal_dir = str(Path(self.run_dir) / "broker-journal")
        self._own_namespace = self.namespace is None
        if self.namespace is None:
            self.namespace = f"p{os.getpid()}-{Path(self.run_dir).name[-8:]}"
        self.env = {**self.env, "PIPELINE_NAMESPACE": str(self.namespace)}

    def _ep_args(self) -> list[str]:
        ep = self.endpoints
        return ["--frontend", ep.frontend, "--backend", ep.backend, "--control", ep.control,
                "--updates", ep.updates, "--events", ep.events, "--sync", ep.sync]

    def start(self) -> Cluster:
        try:
            self.start_sink()
            self.start_broker()
            for _ in range(self.workers):
                self.add_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def start_sink(self) -> Child:
        args = ["--app", self.app, "--journal", str(self.journal_dir), "--fsync", self.fsync,
                "--namespace", str(self.namespace), *self._ep_args()]
        if self.recipes:
            args += ["--recipes", self.recipes]
        self.sink_child = spawn("sink", args, env=self.env, log_path=self._log("sink"),
                            stderr=self.stderr)
        return self.sink_child

    def start_broker(self) -> Child:
        args = [*self._ep_args(), "--heartbeat-ms", str(self.heartbeat_interval_ms),
                "--journal", str(self.broker_journal_dir), *self.broker_args]
        self.broker_child = spawn("broker", args, env=self.env, log_path=self._log("broker"),
                              stderr=self.stderr)
        return self.broker_child

    def add_worker(self, *, prelude: str = "") -> Child:
        args = ["--app", self.app, "--credit", str(self.credit), "--namespace",
                str(self.namespace), "--heartbeat-ms", str(self.heartbeat_interval_ms),
                *self._ep_args()]
        child = spawn("worker", args, env=self.env, prelude=prelude,
                      log_path=self._log("worker"), stderr=self.stderr)
        self.worker_children.append(child)
        return child

    def _log(self, role: str) -> str | None:
        if self.log_dir is None:
            return None
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        return str(Path(self.log_dir) / f"{role}.log")

    def state(self, timeout: float = 10.0) -> dict[str, Any]:
        """The sink's committed state now (one snapshot through its sync socket)."""
        from pipeline.subscriber import Subscriber

        with Subscriber(self.endpoints.events, self.endpoints.sync, from_version=0,
                        namespace=self.namespace) as sub:
            return sub.next(timeout=timeout).values

    def children(self) -> list[Child]:
        parts = [*self.worker_children, self.broker_child, self.sink_child]
        return [c for c in parts if c is not None]

    def stop(self, timeout_s: float = 10.0) -> dict[int, int]:
        """Stop workers, then the broker, then the sink (each drains on SIGTERM)."""
        codes = stop_children(self.worker_children, timeout_s)
        for child in (self.broker_child, self.sink_child):
            if child is not None:
                codes.update(stop_children([child], timeout_s))
        if self._own_namespace:
            from pipeline.heavy import purge_namespace
            from pipeline.heavy.names import namespace_dir

            purge_namespace(namespace_dir(str(self.namespace)))
        if self._own_run_dir:  # a temporary deployment: its journals and sockets go too
            shutil.rmtree(str(self.run_dir), ignore_errors=True)
        return codes

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
