"""The worker's side of liveness and its graceful drain, against fake broker and sink
sockets owned by the test (real ipc:// sockets; the worker is stepped with run_once)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from pipeline.api import ProcessSpec
from pipeline.config import Endpoints, WorkerConfig
from pipeline.protocol import Cmd, decode, encode, error
from pipeline.worker import Worker

DEADLINE_S = 5.0


class NoHeavy:
    """The counter app uses no heavy arrays: a backend that refuses everything."""

    def open(self, desc: Any) -> Any:
        raise AssertionError("no heavy input expected")

    alloc = export = open

    def seal(self) -> None:
        """Nothing was exported, so there is nothing to make read-only."""


class Fakes:
    """A broker backend ROUTER and a sink (sync ROUTER, updates PULL, events PUB)."""

    def __init__(self, tmp_path: Path, liveness: int = 3,
                 specs: dict[str, ProcessSpec] | None = None) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.ep = Endpoints.embedded(tmp_path)
        self.backend = self._bind(zmq.ROUTER, self.ep.backend)
        self.sync = self._bind(zmq.ROUTER, self.ep.sync)
        self.updates = self._bind(zmq.PULL, self.ep.updates)
        self.events = self._bind(zmq.PUB, self.ep.events)
        config = WorkerConfig(endpoints=self.ep, app="tests.apps.counter", credit=8,
                              heartbeat_interval_ms=50, liveness=liveness, name="w")
        self.worker = Worker(config, specs, heavy=NoHeavy(), ctx=self.ctx)
        self.worker.request_snapshot()

    def _bind(self, kind: int, endpoint: str) -> zmq.Socket[Any]:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        return sock

    def step_until(self, sock: zmq.Socket[Any], cond: Callable[[list[bytes]], bool] | None = None,
                   version: int = 0) -> list[bytes]:
        """Step the worker (answering snapshots, at `version`) until sock has a message that
        passes cond."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            self.worker.run_once(5)
            if self.sync.poll(0):
                ident, *_ = self.sync.recv_multipart()
                self.sync.send_multipart([ident, *encode(Cmd.SNAPSHOT,
                                                         {"version": version, "state": {}})])
            if sock.poll(0):
                frames = sock.recv_multipart()
                if cond is None or cond(frames):
                    return frames
        raise AssertionError("no such message before the deadline")

    def close(self) -> None:
        if not self.worker.backend.closed:
            self.worker.close()
        for sock in (self.backend, self.sync, self.updates, self.events):
            sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[Fakes]:
    f = Fakes(tmp_path)
    yield f
    f.close()


def _cmd(frames: list[bytes], start: int = 1) -> Cmd:
    return decode(frames[start:]).cmd


def _ready(fakes: Fakes) -> tuple[bytes, dict[str, Any]]:
    frames = fakes.step_until(fakes.backend, lambda f: _cmd(f) is Cmd.READY)
    return frames[0], decode(frames[1:]).header


def test_a_silent_broker_is_left_and_the_worker_registers_again(fakes: Fakes) -> None:
    first, header = _ready(fakes)
    assert header["credit"] == 8 and header["processes"]
    task = {"id": "t1", "process": "increment", "args": {}, "attempt": 1, "after": 99}
    fakes.backend.send_multipart([first, *encode(Cmd.DISPATCH, {"tasks": [task]})])
    started = time.monotonic()
    second, again = _ready(fakes)  # nothing but heartbeats from the worker until then
    assert time.monotonic() - started >= 0.15 - 0.01  # liveness 3 x 50 ms
    assert second != first, "a new connection"
    assert (again["credit"], again["processes"]) == (8, header["processes"])
    assert fakes.worker.counters["reconnects"] == 1
    assert fakes.worker.counters["dropped"] == 1  # t1 waited for version 99: dropped


def test_unknown_worker_and_disconnect_make_it_register_again(fakes: Fakes) -> None:
    ident, _ = _ready(fakes)
    fakes.backend.send_multipart([ident, *error("unknown-worker", "register first")])
    assert _ready(fakes)[0] == ident
    fakes.backend.send_multipart([ident, *encode(Cmd.DISCONNECT)])
    assert _ready(fakes)[1]["credit"] == 8


def test_drain_runs_held_tasks_returns_no_credit_then_disconnects(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path, liveness=1000)  # the fake broker never speaks
    try:
        _drain_and_check(fakes)
    finally:
        fakes.close()


def _drain_and_check(fakes: Fakes) -> None:
    ident, _ = _ready(fakes)
    tasks = [{"id": f"t{i}", "process": "append", "args": {"item": str(i)}, "attempt": 1,
              "after": 0} for i in range(3)]
    fakes.backend.send_multipart([ident, *encode(Cmd.DISPATCH, {"tasks": tasks})])
    deadline = time.monotonic() + DEADLINE_S
    while not (fakes.worker.pending or fakes.worker.counters["tasks"]):
        assert time.monotonic() < deadline
        fakes.worker.run_once(5)
    # What the worker said before the stop, credit for tasks it already ran included: a
    # message sent is not yet a message received, so wait for stragglers, not poll(0).
    while fakes.backend.poll(200):
        fakes.backend.recv_multipart()
    fakes.worker.drain(timeout_s=DEADLINE_S)
    assert not fakes.worker.pending
    seen = []
    while fakes.updates.poll(100):
        seen += [u["task"] for u in decode(fakes.updates.recv_multipart()).header["updates"]]
    assert sorted(seen) == ["t0", "t1", "t2"]
    fakes.worker.close()
    cmds = []
    while fakes.backend.poll(200):
        cmds.append(_cmd(fakes.backend.recv_multipart()))
    assert Cmd.READY not in cmds and cmds[-1] is Cmd.DISCONNECT


def test_snapshot_requests_do_not_pile_up_while_the_sink_is_down(tmp_path: Path) -> None:
    """Asked again every snapshot timeout while the sink is away, the worker must not have
    queued one request per timeout: the sink coming back answers one, not a pile."""
    fakes = Fakes(tmp_path)
    try:
        fakes.sync.close(linger=0)  # the sink goes away (its endpoint is gone)
        fakes.worker.config = dataclasses.replace(fakes.worker.config, snapshot_timeout_ms=20)
        fakes.worker.request_snapshot()
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            fakes.worker.run_once(5)
        assert fakes.worker.counters["snapshot.unsent"] >= 5
        fakes.sync = fakes._bind(zmq.ROUTER, fakes.ep.sync)  # the sink is back
        requests = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not fakes.worker.replica.synced:
            fakes.worker.run_once(5)
            while fakes.sync.poll(0):
                ident, *_ = fakes.sync.recv_multipart()
                requests += 1
                fakes.sync.send_multipart([ident, *encode(Cmd.SNAPSHOT,
                                                         {"version": 0, "state": {}})])
        assert fakes.worker.replica.synced
        while fakes.sync.poll(100):  # nothing else was queued behind the one answered
            fakes.sync.recv_multipart()
            requests += 1
        assert requests == 1
    finally:
        fakes.close()


def test_a_snapshot_during_the_reconnect_back_off_does_not_register_early(
        tmp_path: Path) -> None:
    """A SNAPSHOT that arrives while the worker waits out its back-off leaves registering
    to the back-off's end: registering at once (without having heard the broker) made it
    reconnect again straight away, leaving a second registration at the broker."""
    fakes = Fakes(tmp_path, liveness=3)  # the fake broker stays silent: a reconnect
    try:
        w = fakes.worker
        _ready(fakes)
        deadline = time.monotonic() + DEADLINE_S
        while not w.counters.get("reconnects"):
            assert time.monotonic() < deadline
            w.run_once(5)
            while fakes.backend.poll(0):
                fakes.backend.recv_multipart()
        w.request_snapshot()  # its reply lands during the back-off
        registrations: list[bytes] = []
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            w.run_once(5)
            if fakes.sync.poll(0):
                ident, *_ = fakes.sync.recv_multipart()
                fakes.sync.send_multipart([ident, *encode(Cmd.SNAPSHOT,
                                                          {"version": 0, "state": {}})])
            while fakes.backend.poll(0):
                frames = fakes.backend.recv_multipart()
                if "processes" in decode(frames[1:]).header:
                    registrations.append(frames[0])
                fakes.backend.send_multipart([frames[0], *encode(Cmd.HEARTBEAT)])  # alive
        assert (w.counters["reconnects"], len(registrations)) == (1, 1)
    finally:
        fakes.close()
