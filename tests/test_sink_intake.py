"""The sink's intake, stepped in-process with `run_once`: a lone UPDATE is decided at once,
alone; the UPDATEs waiting together are decided as one batch; the COMMIT and the DECISION
carry the engine's index frames. UPDATEs come over inproc:// (same context as the sink),
so a message is in the sink's queue as soon as it is sent: no timing in these tests."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from pipeline import protocol as proto
from pipeline.config import Endpoints, SinkConfig
from pipeline.heavy.names import namespace_dir
from pipeline.protocol import Cmd
from pipeline.sink import Sink


class Rig:
    """A sink, the broker's ROUTERs it connects to, a worker's PUSH and a subscriber."""

    def __init__(self, run_dir: Path) -> None:
        ep = Endpoints.embedded(str(run_dir / "ep"))
        ep = dataclasses.replace(ep, updates=f"inproc://updates-{id(self)}")
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.control = self._socket(zmq.ROUTER, ep.control, bind=True)
        self.frontend = self._socket(zmq.ROUTER, ep.frontend, bind=True)
        self.namespace = f"t-{os.getpid()}-intake"
        config = SinkConfig(endpoints=ep, app="tests.apps.counter", fsync="never",
                            journal_dir=str(run_dir / "journal"), namespace=self.namespace)
        try:
            self.sink = Sink(config, ctx=self.ctx)
        except BaseException:
            self._close_sockets()
            raise
        try:
            self.sub = self._socket(zmq.SUB, ep.events, bind=False)
            self.sub.setsockopt(zmq.SUBSCRIBE, b"")
            self.push = self._socket(zmq.PUSH, ep.updates, bind=False)
            assert proto.decode(self.received(self.control)).cmd is Cmd.HELLO
        except BaseException:
            self.close()
            raise
        self.n = 0

    def _socket(self, kind: int, endpoint: str, *, bind: bool) -> zmq.Socket[Any]:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
        return sock

    def send(self, updates: int = 1) -> None:
        """One UPDATE message of `updates` updates (process `boom`, writing nothing)."""
        batch = []
        for _ in range(updates):
            self.n += 1
            batch.append({"task": f"t{self.n}", "process": "boom", "attempt": 1,
                          "worker": "w", "reads": {}, "data": {}, "args": {}})
        self.push.send_multipart(proto.encode(Cmd.UPDATE, {"updates": batch}))

    def received(self, sock: zmq.Socket[Any]) -> list[bytes]:
        """The next message on `sock` (without the ROUTER's envelope)."""
        assert sock.poll(5000), "nothing received"
        frames = sock.recv_multipart()
        return frames[1:] if sock.type == zmq.ROUTER else frames

    def close(self) -> None:
        self.sink.close()
        self._close_sockets()

    def _close_sockets(self) -> None:
        for name in ("control", "frontend", "sub", "push"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(0)
        self.ctx.term()
        shutil.rmtree(namespace_dir(self.namespace), ignore_errors=True)


@pytest.fixture
def rig(run_dir: Path) -> Iterator[Rig]:
    r = Rig(run_dir)
    yield r
    r.close()


def _subscribed(rig: Rig) -> None:
    """Commit until the subscriber gets COMMITs (a PUB drops what it sends before the
    subscription arrives); drain the decisions."""
    while True:
        rig.send()
        rig.sink.run_once(0)
        rig.received(rig.control)
        if rig.sub.poll(100):
            rig.sub.recv_multipart()
            return


def test_a_lone_update_is_decided_alone_and_at_once(rig: Rig) -> None:
    _subscribed(rig)
    for _ in range(3):
        batches = rig.sink.counters["batches"]
        rig.send()
        rig.sink.run_once(0)
        assert rig.sink.counters["batches"] == batches + 1
        commit, decision = rig.received(rig.sub), rig.received(rig.control)
        assert proto.decode_prefix(commit[0]) is Cmd.COMMIT
        assert proto.event_index(commit[2]) == (rig.n, 1, ["slot"])
        assert proto.decode_prefix(decision[0]) is Cmd.DECISION
        assert proto.commit_index(decision[2]) == ([f"t{rig.n}"], [1], rig.n)


def test_updates_waiting_together_are_one_batch(rig: Rig) -> None:
    _subscribed(rig)
    batches, updates, first = (rig.sink.counters["batches"], rig.sink.counters["updates"],
                               rig.n + 1)
    for count in (1, 3, 2):
        rig.send(count)
    rig.push.send_multipart(proto.encode(Cmd.READY, {"credit": 1}))  # dropped: malformed
    rig.send()
    rig.sink.run_once(0)
    assert rig.sink.counters["batches"] == batches + 1
    assert rig.sink.counters["updates"] == updates + 7
    assert rig.sink.malformed == {"unexpected-command": 1}
    commit, decision = rig.received(rig.sub), rig.received(rig.control)
    assert proto.event_index(commit[2]) == (first, 7, ["slot"])
    assert proto.commit_index(decision[2]) == ([f"t{i}" for i in range(first, first + 7)],
                                                [1] * 7, first)
