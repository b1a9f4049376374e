"""Subscriber resume and resync, end to end against a real cluster.

A subscriber started with `from_version` after some commits gets a snapshot first, then the
stream. To force a gap, its commit stream goes through a lossy link (a thread forwarding the
sink's PUB to a PUB of its own, dropping the messages it is told to drop): the subscriber
must notice the missing version, take a new snapshot, and end with the sink's state.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import zmq

from pipeline import Change, Producer, Subscriber
from pipeline.errors import TaskTimeout

pytestmark = pytest.mark.timeout(120)


class LossyLink:
    """Forwards every message from `upstream` (SUB) to its own PUB, dropping one message
    each time `drop_next()` is called. Owns its context and sockets in its own thread."""

    def __init__(self, upstream: str, downstream: str) -> None:
        self.upstream, self.endpoint = upstream, downstream
        self.forwarded = self.dropped = 0
        self._to_drop = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LossyLink:
        self._thread.start()
        assert self._bound.wait(10), "the link did not bind"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def drop_next(self) -> None:
        with self._lock:
            self._to_drop += 1

    def _run(self) -> None:
        ctx = zmq.Context()
        sub, pub = ctx.socket(zmq.SUB), ctx.socket(zmq.PUB)
        try:
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(self.upstream)
            pub.bind(self.endpoint)
            self._bound.set()
            while not self._stop.is_set():
                if sub.poll(50):
                    self._forward(pub, sub.recv_multipart())
        finally:
            sub.close(linger=0)
            pub.close(linger=0)
            ctx.term()

    def _forward(self, pub: zmq.Socket[Any], frames: list[bytes]) -> None:
        with self._lock:
            drop = self._to_drop > 0
            self._to_drop -= drop
        if drop:
            self.dropped += 1
        else:
            pub.send_multipart(frames)
            self.forwarded += 1


class View:
    """What a subscriber's user builds: the state, from resync snapshots and changes."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.version = -1
        self.resyncs: list[int] = []

    def apply(self, change: Change) -> None:
        if change.resync:
            self.state = dict(change.values)
            self.resyncs.append(change.version)
        else:
            assert change.version == self.version + 1, "a gap reached the user"
            self.state.update(change.values)
        self.version = change.version

    def follow(self, sub: Subscriber, version: int, timeout: float = 10) -> None:
        while self.version < version:
            self.apply(sub.next(timeout=timeout))


def _commit(producer: Producer, n: int = 1) -> int:
    decisions = producer.results([producer.submit("increment") for _ in range(n)], timeout=30)
    assert all(d.committed for d in decisions)
    return max(d.version for d in decisions)


def _join(sub: Subscriber, producer: Producer, view: View) -> None:
    """PUB/SUB joins are asynchronous: commit probes until one arrives as a stream change."""
    for _ in range(100):
        version = _commit(producer)
        try:
            while True:
                change = sub.next(timeout=0.3)
                view.apply(change)
                if not change.resync and change.version >= version:
                    return
        except TaskTimeout:
            continue
    raise AssertionError("the subscriber never joined the commit stream")


def _sink_state(cluster: Any) -> tuple[int, dict[str, Any]]:
    with Subscriber(cluster.endpoints.events, cluster.endpoints.sync, from_version=0) as sub:
        snap = sub.next(timeout=10)
    return snap.version, snap.values


def test_resume_from_version_gets_snapshot_then_stream(cluster_factory):
    cluster = cluster_factory(workers=1).start()
    view = View()
    with Producer(cluster.endpoints.frontend) as producer:
        assert _commit(producer, 30) == 30
        with Subscriber(cluster.endpoints.events, cluster.endpoints.sync,
                        from_version=10) as sub:
            first = sub.next(timeout=10)
            assert first.resync and first.version == 30 and first.values == {"count": 30}
            view.apply(first)
            _join(sub, producer, view)
            joined = view.version
            last = _commit(producer, 20)
            streamed = []
            while view.version < last:
                change = sub.next(timeout=10)
                view.apply(change)
                streamed.append(change)
    assert [c.version for c in streamed] == list(range(joined + 1, last + 1))
    assert not any(c.resync for c in streamed)
    assert (view.version, view.state) == _sink_state(cluster)


def test_gap_in_the_stream_triggers_a_resync(cluster_factory, run_dir: Path):
    cluster = cluster_factory(workers=1).start()
    view = View()
    with Producer(cluster.endpoints.frontend) as producer, \
            LossyLink(cluster.endpoints.events, f"ipc://{run_dir}/lossy.sock") as link:
        _commit(producer, 5)
        with Subscriber(link.endpoint, cluster.endpoints.sync, from_version=0) as sub:
            _join(sub, producer, view)
            resyncs_before = len(view.resyncs)
            link.drop_next()
            lost = _commit(producer)  # its COMMIT message never reaches the subscriber
            last = _commit(producer, 10)
            view.follow(sub, last)
    assert link.dropped == 1
    assert len(view.resyncs) == resyncs_before + 1 and view.resyncs[-1] >= lost
    assert (view.version, view.state) == _sink_state(cluster)
    assert view.state["count"] == last

