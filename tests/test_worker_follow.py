"""A worker follows the commit stream only when it needs it: a worker whose processes
declare no state key does not subscribe to COMMIT (the sink's PUB then sends it nothing),
until a task retried after a conflict on the global version (`after`) shows that it needs
a current version; from then on it follows, as a worker with keys always does."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import zmq

from pipeline import Producer, StateUpdate, Status, process
from pipeline.api import spec_of
from pipeline.protocol import Cmd, decode, encode, pack_event_index
from tests.test_worker_liveness import DEADLINE_S, Fakes, _ready

pytestmark = pytest.mark.timeout(120)


@process(inputs=[], outputs=[])
def tick(ctx: Any) -> dict[str, Any]:
    return {}


@process(inputs=[], outputs=[])
def stamp(ctx: Any) -> StateUpdate:
    return StateUpdate(assert_version=ctx.version)


def _commit(version: int) -> list[bytes]:
    event = {"version": version, "task": f"c{version}", "process": "elsewhere",
             "writes": {}, "signals": []}
    return [*encode(Cmd.COMMIT, {"events": [event]}), pack_event_index(version, 1, [])]


def _publish_until(fakes: Fakes, version: int, reached: bool, seconds: float) -> None:
    """Publish the COMMIT of `version` (again and again) while stepping the worker, answering
    its snapshot requests at `version - 1`; stop when its replica reaches `version` (or, with
    `reached` false, after `seconds`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fakes.events.send_multipart(_commit(version))
        fakes.worker.run_once(5)
        while fakes.sync.poll(0):
            ident, *_ = fakes.sync.recv_multipart()
            fakes.sync.send_multipart([ident, *encode(
                Cmd.SNAPSHOT, {"version": version - 1, "state": {}})])
        if reached and fakes.worker.replica.version == version:
            return
    assert not reached, f"the replica did not reach version {version}"


def test_a_worker_with_keys_follows_the_stream_from_the_start(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path, liveness=1000)  # the counter app: its processes declare keys
    try:
        _ready(fakes)
        assert fakes.worker.following
        _publish_until(fakes, 1, True, DEADLINE_S)
    finally:
        fakes.close()


def _keyless(tmp_path: Path) -> tuple[Fakes, bytes]:
    fakes = Fakes(tmp_path, liveness=1000,  # the fake broker never speaks
                  specs={"tick": spec_of(tick), "stamp": spec_of(stamp)})  # type: ignore[dict-item]
    ident, _ = _ready(fakes)
    assert not fakes.worker.following
    return fakes, ident


def _run(fakes: Fakes, ident: bytes, task: dict[str, Any], version: int = 0) -> dict[str, Any]:
    fakes.backend.send_multipart([ident, *encode(Cmd.DISPATCH, {"tasks": [task]})])
    (update,) = decode(fakes.step_until(fakes.updates, version=version)).header["updates"]
    assert update["task"] == task["id"]
    return update  # type: ignore[no-any-return]


def test_a_worker_without_keys_follows_once_a_process_reads_the_version(
        tmp_path: Path) -> None:
    fakes, ident = _keyless(tmp_path)
    try:
        # Not subscribed: the PUB sends it nothing, so nothing wakes it.
        _publish_until(fakes, 1, False, 0.3)
        assert fakes.worker.replica.version == 0 and not fakes.worker.events.poll(0)
        # Built on no version (it read none): the sink checks none, even in strict mode.
        task = {"id": "t1", "process": "tick", "args": {}, "attempt": 1, "after": 0}
        assert _run(fakes, ident, task)["base"] is None
        assert not fakes.worker.following
        # ctx.version read: the update says which (the snapshot's), and from now on the
        # worker keeps it current.
        task = {"id": "t2", "process": "stamp", "args": {}, "attempt": 1, "after": 0}
        update = _run(fakes, ident, task)
        assert (update["base"], update["expect"]) == (0, 0)
        assert fakes.worker.following and fakes.worker.counters["follow"] == 1
        _publish_until(fakes, 1, True, DEADLINE_S)
        task = {"id": "t3", "process": "tick", "args": {}, "attempt": 1, "after": 0}
        assert _run(fakes, ident, task, version=1)["base"] == 1
    finally:
        fakes.close()


def test_a_worker_without_keys_follows_once_a_task_waits_for_a_version(
        tmp_path: Path) -> None:
    fakes, ident = _keyless(tmp_path)
    try:
        # A retry after a conflict on the global version waits for version 3: the worker
        # takes a snapshot and follows the stream from then on.
        task = {"id": "t1", "process": "tick", "args": {}, "attempt": 2, "after": 3}
        assert _run(fakes, ident, task, version=3)["base"] == 3
        assert fakes.worker.following and fakes.worker.counters["follow"] == 1
        _publish_until(fakes, 4, True, DEADLINE_S)
    finally:
        fakes.close()


def test_strict_mode_costs_a_keyless_worker_at_most_one_conflict(cluster_factory: Any) -> None:
    """In strict mode an update conflicts unless built on the sink's current version. Keyless
    workers build `tick`'s updates on no version (they read none), and `stamp`'s on the one
    they read: a worker's first `stamp` may conflict (its version is its snapshot's), then
    it follows the stream. Had they sent their stale versions, or kept not following,
    most tasks here would conflict once."""
    cluster = cluster_factory(app="tests.apps.stateless", workers=2,
                              env={"PIPELINE_SINK_STRICT": "1"}).start()
    with Producer(cluster.endpoints.frontend) as producer:
        decisions = [producer.submit("stamp").result(timeout=30) for _ in range(30)]
        decisions += [producer.submit("tick").result(timeout=30) for _ in range(30)]
    assert Counter(d.status for d in decisions) == {Status.COMMITTED: 60}
    retried = sum(d.attempt - 1 for d in decisions)
    assert retried <= 6, f"{retried} retries: the workers do not follow the stream"
    assert [d.version for d in decisions] == list(range(1, 61))


def test_keyless_workers_receive_no_commit(cluster_factory: Any, tmp_path: Path) -> None:
    """The sink's PUB sends a COMMIT only to subscribers of it: a plain SUB subscribed to
    nothing, like a keyless worker, gets nothing while tasks commit."""
    cluster = cluster_factory(app="tests.apps.stateless", workers=1).start()
    ctx: zmq.Context[Any] = zmq.Context()
    quiet, loud = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
    try:
        quiet.connect(cluster.endpoints.events)
        loud.connect(cluster.endpoints.events)
        loud.setsockopt(zmq.SUBSCRIBE, b"")
        time.sleep(0.2)  # the subscription reaches the PUB
        with Producer(cluster.endpoints.frontend) as producer:
            assert all(producer.submit("tick").result(timeout=30).committed for _ in range(5))
        assert loud.poll(2000) and not quiet.poll(200)
    finally:
        quiet.close(linger=0)
        loud.close(linger=0)
        ctx.term()
