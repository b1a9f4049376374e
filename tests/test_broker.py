"""The broker over real ipc:// sockets, stepped with run_once from the test thread.

Fake producer, worker, sink and admin DEALERs are made by the `net` fixture, which owns and
closes every socket and terminates the context. Time-driven behaviour (heartbeats, eviction,
back-off) runs on a fake clock, so nothing sleeps; every receive has a deadline.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from brokers import Broker, BrokerConfig, serve
from brokers.state import Entry, TaskQueues
from pipeline.errors import ConfigError
from pipeline.protocol import SCHEMA, Cmd, Message, decode, encode, pack_commit_index

DEADLINE_S = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Net:
    """A broker plus the test's DEALER sockets; `pump` steps the broker until a condition."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sockets: list[zmq.Socket[Any]] = []
        self.clock = FakeClock()
        settings: dict[str, Any] = {
            "frontend": f"ipc://{tmp_path}/f", "backend": f"ipc://{tmp_path}/b",
            "control": f"ipc://{tmp_path}/c", "heartbeat_interval_ms": 100,
            "liveness": 3, "retry_jitter_pct": 0, "accepted_delay_ms": 0, **overrides}
        self.config = BrokerConfig(**settings)
        self.broker = Broker(self.config, self.ctx, clock=self.clock)
        self.broker.bind()

    def dealer(self, endpoint: str) -> zmq.Socket[Any]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        self.sockets.append(sock)
        return sock

    def producer(self) -> zmq.Socket[Any]:
        return self.dealer(self.config.frontend)

    def worker(self, processes: list[str], credit: int = 0, name: str = "w") -> zmq.Socket[Any]:
        sock = self.dealer(self.config.backend)
        before = len(self.broker.status()["workers"])
        sock.send_multipart(encode(Cmd.READY, {"credit": credit, "processes": processes,
                                               "name": name, "versions": [1]}))
        self.pump(lambda: len(self.broker.status()["workers"]) > before)
        return sock

    def sink(self) -> zmq.Socket[Any]:
        sock = self.dealer(self.config.control)
        sock.send_multipart(encode(Cmd.HELLO, {"role": "sink", "versions": [1]}))
        self.pump(lambda: self.broker.status()["sink"])
        return sock

    def pump(self, cond: Callable[[], Any]) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached before the deadline")
            self.broker.run_once(5)

    def recv(self, sock: zmq.Socket[Any]) -> Message:
        """Step the broker until sock has a message; decode it."""
        self.pump(lambda: sock.poll(0))
        return decode(sock.recv_multipart())

    def expect(self, sock: zmq.Socket[Any], cmd: Cmd) -> dict[str, Any]:
        msg = self.recv(sock)
        assert msg.cmd == cmd, (msg.cmd, msg.header)
        return msg.header

    def submit(self, producer: zmq.Socket[Any], *tasks: dict[str, Any]) -> dict[str, Any]:
        producer.send_multipart(encode(Cmd.SUBMIT, {"tasks": list(tasks)}))
        return self.expect(producer, Cmd.ACCEPTED)

    def ready(self, worker: zmq.Socket[Any], credit: int) -> None:
        worker.send_multipart(encode(Cmd.READY, {"credit": credit}))

    def decide(self, sink: zmq.Socket[Any], *decisions: dict[str, Any]) -> None:
        sink.send_multipart(encode(Cmd.DECISION, {"decisions": list(decisions)}))

    def counter(self, name: str) -> int:
        return self.broker.counters[name]

    def restart(self) -> None:
        """Close the broker and start a new one on the same endpoints and journal."""
        self.broker.close()
        self.broker = Broker(self.config, self.ctx, clock=self.clock)
        self.broker.bind()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        self.broker.close()
        self.ctx.term()


@pytest.fixture
def make_net(tmp_path: Path) -> Iterator[Callable[..., Net]]:
    nets: list[Net] = []

    def make(**overrides: Any) -> Net:
        nets.append(Net(tmp_path, **overrides))
        return nets[-1]

    yield make
    for net in nets:
        net.close()


@pytest.fixture
def net(make_net: Callable[..., Net]) -> Net:
    return make_net()


def task(tid: str, process: str = "p", **args: Any) -> dict[str, Any]:
    return {"id": tid, "process": process, "args": args}


def decision(tid: str, status: str = "committed", attempt: int = 1, version: int = 0,
             process: str = "p", **extra: Any) -> dict[str, Any]:
    return {"task": tid, "status": status, "process": process, "attempt": attempt,
            "version": version, "reason": "", "rule": None, "level": None,
            "retry_after_ms": 0, "error": None, "blocked": False, **extra}


def ids(header: dict[str, Any]) -> list[str]:
    return [t["id"] for t in header["tasks"]]


# -- the happy path -----------------------------------------------------------------------
def test_submit_dispatch_decide_result(net: Net) -> None:
    prod, sink = net.producer(), net.sink()
    assert net.submit(prod, task("t1", x=1), task("t2"))["ids"] == ["t1", "t2"]
    worker = net.worker(["p"], credit=10)
    dispatched = net.expect(worker, Cmd.DISPATCH)["tasks"]
    assert [(t["id"], t["attempt"], t["after"], t["args"]) for t in dispatched] == [
        ("t1", 1, 0, {"x": 1}), ("t2", 1, 0, {})]
    assert net.broker.status()["in_flight"] == 2
    net.decide(sink, decision("t1", version=1), decision("t2", "rejected", reason="rule"))
    result = net.expect(prod, Cmd.RESULT)["decisions"]
    assert [(d["task"], d["status"]) for d in result] == [("t1", "committed"), ("t2", "rejected")]
    status = net.broker.status()
    assert (status["tasks"], status["in_flight"], status["queues"]) == (0, 0, {})
    assert status["workers"][0]["in_flight"] == 0
    assert status["counters"]["decided.committed"] == 1


def test_credit_is_respected_and_batched(make_net: Callable[..., Net]) -> None:
    net = make_net(max_dispatch_batch=3)
    prod = net.producer()
    net.submit(prod, *(task(f"t{i}") for i in range(8)))
    worker = net.worker(["p"], credit=5)
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["t0", "t1", "t2"]
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["t3", "t4"]
    assert net.broker.status()["workers"][0]["credit"] == 0
    net.ready(worker, 1)  # had the broker over-sent, the extra DISPATCH would come first
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["t5"]
    assert net.broker.status()["queues"] == {"p": 2}


def test_max_worker_credit_bounds_tasks_in_flight_and_keeps_the_credit(
        make_net: Callable[..., Net]) -> None:
    """Credit past the bound is kept, not dropped (a worker's count of its credit must stay
    true, pipeline/credit.py): the worker gets more tasks as its in-flight ones are decided."""
    net = make_net(max_worker_credit=3)
    prod = net.producer()
    sink = net.sink()
    net.submit(prod, *(task(f"t{i}") for i in range(8)))
    worker = net.worker(["p"], credit=10)
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["t0", "t1", "t2"]
    assert net.broker.status()["workers"][0] == {
        "name": "w", "credit": 7, "in_flight": 3, "processes": ["p"]}
    net.decide(sink, decision("t0"), decision("t1"))
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["t3", "t4"]
    net.decide(sink, *(decision(f"t{i}") for i in range(2, 5)))
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["t5", "t6", "t7"]
    assert net.broker.status()["workers"][0]["credit"] == 2


def test_a_ready_past_the_credit_limit_is_refused_and_status_still_answers(net: Net) -> None:
    worker = net.worker(["p"], credit=5)
    for credit in (2**64 - 1, -1):
        net.ready(worker, credit)
        assert net.expect(worker, Cmd.ERROR)["code"] == "malformed"
    net.ready(worker, 2**31)
    net.ready(worker, 2**31)  # each is within the limit; the total is held at it
    net.pump(lambda: net.broker.status()["workers"][0]["credit"] == 2**31)
    control = net.dealer(net.config.control)
    control.send_multipart(encode(Cmd.STATUS_REQ, {}))
    assert net.expect(control, Cmd.STATUS)["workers"][0]["credit"] == 2**31


def test_tasks_go_only_to_workers_declaring_their_process(net: Net) -> None:
    prod = net.producer()
    net.submit(prod, task("a1", "a"), task("b1", "b"), task("a2", "a"))
    wb = net.worker(["b"], credit=5, name="wb")
    assert ids(net.expect(wb, Cmd.DISPATCH)) == ["b1"]
    wa = net.worker(["a"], credit=5, name="wa")
    assert ids(net.expect(wa, Cmd.DISPATCH)) == ["a1", "a2"]
    net.submit(prod, task("c1", "c"))
    net.ready(wb, 1)
    net.pump(lambda: net.broker.status()["workers"][0]["credit"] == 5)
    assert net.broker.status()["queues"] == {"c": 1}
    assert not wa.poll(0) and not wb.poll(0)


def test_round_robin_across_processes(net: Net) -> None:
    prod = net.producer()
    net.submit(prod, task("a1", "a"), task("a2", "a"), task("a3", "a"), task("b1", "b"),
               task("b2", "b"))
    worker = net.worker(["a", "b"], credit=4)
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["a1", "b1", "a2", "b2"]


# -- decisions that send a task back --------------------------------------------------------
def test_conflict_dispatches_again_with_next_attempt_and_after(net: Net) -> None:
    prod, sink = net.producer(), net.sink()
    net.submit(prod, task("t1"))
    worker = net.worker(["p"], credit=5)
    net.expect(worker, Cmd.DISPATCH)
    net.decide(sink, decision("t1", "conflict", version=7, retry_after_ms=0))
    again = net.expect(worker, Cmd.DISPATCH)["tasks"]
    assert [(t["id"], t["attempt"], t["after"]) for t in again] == [("t1", 2, 7)]
    net.decide(sink, decision("t1", "conflict", attempt=2, version=9, retry_after_ms=15))
    net.pump(lambda: net.broker.status()["delayed"] == 1)
    net.clock.advance(0.014)  # jitter only stretches the 15 ms delay
    net.broker.run_once(0)
    assert net.broker.status()["delayed"] == 1
    net.clock.advance(0.020)
    again = net.expect(worker, Cmd.DISPATCH)["tasks"]
    assert [(t["attempt"], t["after"]) for t in again] == [(3, 9)]
    net.decide(sink, decision("t1", attempt=2))  # an older attempt: counted, ignored
    net.decide(sink, decision("t1", attempt=3, version=10))
    assert net.expect(prod, Cmd.RESULT)["decisions"][0]["attempt"] == 3
    assert net.counter("decision.stale") == 1


def test_a_decision_repeated_in_one_message_counts_once(net: Net) -> None:
    """The general path finishes a DECISION's final decisions together: a task decided
    twice in one message (a final and a stale copy, mixed with a conflict) is finished
    once, and the plain-commit path (commit index) is not fooled by repeated ids."""
    prod, sink = net.producer(), net.sink()
    net.submit(prod, task("t1"), task("t2"), task("t3"))
    worker = net.worker(["p"], credit=5)
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["t1", "t2", "t3"]
    net.decide(sink, decision("t1", version=1), decision("t2", "conflict", version=1),
               decision("t1", "rejected"))
    result = net.expect(prod, Cmd.RESULT)["decisions"]
    assert [(d["task"], d["status"]) for d in result] == [("t1", "committed")]
    assert net.counter("decision.stale") == 1
    frames = encode(Cmd.DECISION, {"decisions": [decision("t3", version=2)] * 2})
    sink.send_multipart([*frames, pack_commit_index(["t3", "t3"], [1, 1], 2)])
    assert [d["task"] for d in net.expect(prod, Cmd.RESULT)["decisions"]] == ["t3"]
    assert [(t["id"], t["attempt"]) for t in net.expect(worker, Cmd.DISPATCH)["tasks"]] \
        == [("t2", 2)]  # the conflict, dispatched again
    assert net.broker.status()["tasks"] == 1
    assert net.counter("decision.stale") == 2
    assert net.counter("decided.committed") == 2


def test_conflicts_past_their_budget_go_to_dead_letters(make_net: Callable[..., Net]) -> None:
    net = make_net(max_conflicts=2)
    prod, sink = net.producer(), net.sink()
    net.submit(prod, task("t1"))
    worker = net.worker(["p"], credit=5)
    net.expect(worker, Cmd.DISPATCH)
    net.decide(sink, decision("t1", "conflict", version=3))
    net.expect(worker, Cmd.DISPATCH)
    net.decide(sink, decision("t1", "conflict", attempt=2, version=4))
    (dead,) = net.expect(prod, Cmd.RESULT)["decisions"]
    assert (dead["status"], dead["rule"], dead["attempt"]) == ("failed", "max_conflicts", 2)
    assert net.broker.status()["dead_letters"] == 1


def test_blocked_process_is_parked_until_unblocked(net: Net) -> None:
    prod, sink = net.producer(), net.sink()
    sink.send_multipart(encode(Cmd.BLOCKED, {"process": "p", "reason": "too many failures"}))
    net.pump(lambda: net.broker.status()["blocked"])
    net.submit(prod, task("t1"), task("t2"), task("q1", "q"))
    worker = net.worker(["p", "q"], credit=5)
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["q1"]
    status = net.broker.status()
    assert status["parked"] == 2
    assert status["blocked"] == [{"process": "p", "reason": "too many failures"}]
    sink.send_multipart(encode(Cmd.UNBLOCKED, {"process": "p"}))
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["t1", "t2"]
    assert net.broker.status()["parked"] == 0


def test_blocked_decision_parks_the_task_with_next_attempt(net: Net) -> None:
    prod, sink = net.producer(), net.sink()
    net.submit(prod, task("t1"))
    worker = net.worker(["p"], credit=5)
    net.expect(worker, Cmd.DISPATCH)
    net.decide(sink, decision("t1", "blocked", reason="threshold", blocked=True))
    net.pump(lambda: net.broker.status()["parked"] == 1)
    assert net.broker.status()["blocked"] == [{"process": "p", "reason": "threshold"}]
    sink.send_multipart(encode(Cmd.UNBLOCKED, {"process": "p"}))
    assert [t["attempt"] for t in net.expect(worker, Cmd.DISPATCH)["tasks"]] == [2]


# -- liveness -------------------------------------------------------------------------------
def test_idle_worker_gets_heartbeats_and_a_silent_one_is_evicted(net: Net) -> None:
    prod, sink = net.producer(), net.sink()
    net.submit(prod, task("t1"), task("t2"))
    dead = net.worker(["p"], credit=2, name="dead")
    assert ids(net.expect(dead, Cmd.DISPATCH)) == ["t1", "t2"]
    net.clock.advance(0.11)
    net.broker.run_once(0)
    assert net.recv(dead).cmd == Cmd.HEARTBEAT
    net.clock.advance(0.24)  # 0.35 s silent > liveness 3 * 100 ms
    net.broker.run_once(0)
    assert net.broker.status()["workers"] == []
    assert net.recv(dead).cmd == Cmd.DISCONNECT
    assert net.counter("worker.expired") == 1
    fresh = net.worker(["p"], credit=5, name="fresh")
    again = net.expect(fresh, Cmd.DISPATCH)["tasks"]
    assert [(t["id"], t["attempt"]) for t in again] == [("t1", 2), ("t2", 2)]
    net.decide(sink, decision("t1"))  # the dead worker's attempt: stale
    net.decide(sink, decision("t1", attempt=2), decision("t2", attempt=2))
    assert len(net.expect(prod, Cmd.RESULT)["decisions"]) == 2
    assert net.counter("decision.stale") == 1


def test_a_worker_that_keeps_talking_stays(net: Net) -> None:
    worker = net.worker(["p"])
    for _ in range(5):
        net.clock.advance(0.2)
        worker.send_multipart(encode(Cmd.HEARTBEAT))
        assert net.recv(worker).cmd == Cmd.HEARTBEAT
    assert len(net.broker.status()["workers"]) == 1


def test_disconnect_requeues_at_once(net: Net) -> None:
    prod = net.producer()
    net.submit(prod, task("t1"), task("t2"), task("t3"))
    leaving = net.worker(["p"], credit=2, name="leaving")
    assert ids(net.expect(leaving, Cmd.DISPATCH)) == ["t1", "t2"]
    leaving.send_multipart(encode(Cmd.DISCONNECT))
    net.pump(lambda: net.broker.status()["workers"] == [])
    assert net.broker.status()["queues"] == {"p": 3}
    other = net.worker(["p"], credit=3, name="other")
    again = net.expect(other, Cmd.DISPATCH)["tasks"]
    assert [(t["id"], t["attempt"]) for t in again] == [("t1", 2), ("t2", 2), ("t3", 1)]
    assert net.counter("worker.disconnect") == 1


# -- producers ------------------------------------------------------------------------------
def test_resubmit_is_accepted_but_not_queued_twice(net: Net) -> None:
    prod, sink = net.producer(), net.sink()
    net.submit(prod, task("t1"))
    assert net.submit(prod, task("t1"), task("t1"))["ids"] == ["t1", "t1"]
    assert net.broker.status()["queues"] == {"p": 1}
    worker = net.worker(["p"], credit=5)
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["t1"]
    net.submit(prod, task("t1"))  # in flight
    net.decide(sink, decision("t1", version=4))
    assert net.expect(prod, Cmd.RESULT)["decisions"][0]["version"] == 4
    again = net.producer()  # a reconnected producer resubmits a decided task
    again.send_multipart(encode(Cmd.SUBMIT, {"tasks": [task("t1")]}))
    assert net.expect(again, Cmd.RESULT)["decisions"][0]["version"] == 4
    assert net.expect(again, Cmd.ACCEPTED)["ids"] == ["t1"]  # always, after the RESULT
    assert net.broker.status()["tasks"] == 0
    assert net.counter("resubmitted") == 4
    assert net.counter("dispatched") == 1


def test_a_full_queue_answers_busy(make_net: Callable[..., Net]) -> None:
    net = make_net(max_queue=3, busy_retry_after_ms=250)
    prod = net.producer()
    prod.send_multipart(encode(Cmd.SUBMIT, {"tasks": [task(f"t{i}") for i in range(5)]}))
    busy = net.expect(prod, Cmd.REJECTED)  # at once; the ACCEPTED waits for its hand-off
    assert net.expect(prod, Cmd.ACCEPTED)["ids"] == ["t0", "t1", "t2"]
    assert (busy["ids"], busy["code"], busy["retry_after_ms"]) == (["t3", "t4"], "busy", 250)
    assert net.submit(prod, task("t0"))["ids"] == ["t0"]  # known ids still fit
    assert net.counter("rejected.busy") == 2


def test_invalid_tasks_are_rejected_and_the_rest_accepted(net: Net) -> None:
    prod = net.producer()
    bad = [{"id": "x1", "process": "p"}, {"id": 5, "process": "p", "args": {}}, "nope",
           {"id": "", "process": "p", "args": {}}, {"id": "x2", "process": "p", "args": {},
                                                     "heavy": 3}]
    prod.send_multipart(encode(Cmd.SUBMIT, {"tasks": [task("ok"), *bad]}))
    rejected = [net.expect(prod, Cmd.REJECTED) for _ in range(4)]  # one per reason
    assert net.expect(prod, Cmd.ACCEPTED)["ids"] == ["ok"]
    assert {r["code"] for r in rejected} == {"invalid"}
    assert {r["reason"]: r["ids"] for r in rejected} == {
        "task-field:args": ["x1"], "task-field:id": [], "task-not-map": [],
        "task-field:heavy": ["x2"]}
    assert net.counter("rejected.task-field:id") == 2


# -- hostile input --------------------------------------------------------------------------
def _expect_error(net: Net, sock: zmq.Socket[Any], frames: list[Any], code: str) -> str:
    sock.send_multipart(frames)
    header = net.expect(sock, Cmd.ERROR)
    assert header["code"] == code, header
    assert header["supported"] == [1]
    return str(header["reason"])


def _still_works(net: Net) -> None:
    prod, sink = net.producer(), net.sink()
    worker = net.worker(["alive"], credit=1, name="alive")
    net.submit(prod, task("alive-1", "alive"))
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["alive-1"]
    net.decide(sink, decision("alive-1", process="alive"))
    assert net.expect(prod, Cmd.RESULT)["decisions"][0]["task"] == "alive-1"


def test_malformed_messages_are_counted_answered_and_survived(net: Net) -> None:
    prod = net.producer()
    admin = net.dealer(net.config.control)
    stranger = net.dealer(net.config.backend)
    junk: list[tuple[zmq.Socket[Any], list[Any], str]] = [
        (prod, [b"\x01\x01"], "malformed"),  # too few frames
        (prod, [b"\x01", b"\x80"], "malformed"),  # bad prefix
        (prod, [b"\x02\x01", b"\x80"], "version"),
        (prod, [b"\x01\x66", b"\x80"], "malformed"),  # unknown command
        (prod, [b"\x01\x01", b"\xc1"], "malformed"),  # not msgpack
        (prod, [b"\x01\x01", msgpack.packb([1, 2])], "malformed"),  # header not a map
        (prod, [b"\x01\x01", msgpack.packb({"tasks": "x"})], "malformed"),
        (prod, [b"\x01\x01", msgpack.packb({1: 2})], "malformed"),  # non-string key
        (prod, encode(Cmd.READY, {"credit": 1}), "malformed"),  # wrong socket
        (prod, encode(Cmd.SUBMIT, {"tasks": []}, b"blob"), "unsupported"),
        (stranger, encode(Cmd.READY, {"credit": 1}), "unknown-worker"),
        (stranger, encode(Cmd.READY, {"credit": 1, "processes": [1]}), "unknown-worker"),
        (stranger, encode(Cmd.READY, {"credit": 1, "processes": []}), "unknown-worker"),
        (stranger, encode(Cmd.READY, {"credit": True, "processes": ["p"]}), "malformed"),
        (stranger, encode(Cmd.READY, {"credit": -1, "processes": ["p"]}), "malformed"),
        (stranger, encode(Cmd.READY, {"credit": 1, "processes": ["p"], "versions": [9]}),
         "version"),
        (stranger, encode(Cmd.READY, {"credit": 1, "processes": ["p"], "name": 3}),
         "malformed"),
        (stranger, encode(Cmd.HEARTBEAT), "unknown-worker"),
        (stranger, encode(Cmd.SUBMIT, {"tasks": []}), "malformed"),
        (admin, encode(Cmd.DECISION, {"decisions": [1, {"task": "t"}, {"task": "t",
                                      "status": ["x"], "attempt": 1}]}), "malformed"),
        (admin, encode(Cmd.BLOCKED, {"process": "p"}), "malformed"),
        (admin, encode(Cmd.HELLO, {"role": "sink", "versions": [7]}), "version"),
        (admin, [b"\x01\x45", msgpack.packb({"role": 3})], "malformed"),
    ]
    for sock, frames, code in junk:
        _expect_error(net, sock, frames, code)
    counters = net.broker.status()["counters"]
    assert counters["malformed"] == len(junk) + 2  # the DECISION held three bad ones
    assert counters["frontend.version"] == 1
    assert counters["frontend.header-not-map"] == 1
    assert counters["backend.ready-without-processes"] == 3
    assert counters["control.decision-invalid"] == 3
    assert net.broker.status()["workers"] == []
    _still_works(net)


def test_decisions_for_unknown_tasks_and_peer_errors_are_counted(net: Net) -> None:
    sink = net.sink()
    net.decide(sink, decision("ghost"))
    sink.send_multipart(encode(Cmd.ERROR, {"code": "x", "reason": "y"}))
    sink.send_multipart(encode(Cmd.UNBLOCKED, {"process": "never"}))
    net.pump(lambda: net.counter("control.unblock-not-blocked") == 1)
    assert net.counter("decision.unknown") == 1
    assert net.counter("peer-error") == 1
    assert not sink.poll(0)


def test_status_request(net: Net) -> None:
    prod, admin = net.producer(), net.dealer(net.config.control)
    net.submit(prod, task("t1"), task("q1", "q"))
    net.worker(["q"], credit=1, name="wq")
    net.pump(lambda: net.counter("dispatched") == 1)
    admin.send_multipart(encode(Cmd.STATUS_REQ))
    status = net.expect(admin, Cmd.STATUS)
    assert status["role"] == "broker"
    assert (status["queues"], status["in_flight"], status["parked"]) == ({"p": 1}, 1, 0)
    assert status["workers"] == [{"name": "wq", "credit": 0, "in_flight": 1,
                                  "processes": ["q"]}]
    assert status["counters"]["accepted"] == 2


# -- the loop, the entry point, the pieces ----------------------------------------------------
def test_serve_runs_until_stopped(tmp_path: Path) -> None:
    config = BrokerConfig(frontend=f"ipc://{tmp_path}/f", backend=f"ipc://{tmp_path}/b",
                          control=f"ipc://{tmp_path}/c")
    ready, stop, codes = threading.Event(), threading.Event(), []
    thread = threading.Thread(target=lambda: codes.append(serve(config, ready.set, stop)))
    thread.start()
    try:
        assert ready.wait(DEADLINE_S)
        ctx: zmq.Context[Any] = zmq.Context()
        admin = ctx.socket(zmq.DEALER)
        try:
            admin.connect(config.control)
            admin.send_multipart(encode(Cmd.STATUS_REQ))
            assert admin.poll(int(DEADLINE_S * 1000))
            assert decode(admin.recv_multipart()).header["role"] == "broker"
        finally:
            admin.close(linger=0)
            ctx.term()
    finally:
        stop.set()
        thread.join(DEADLINE_S)
    assert codes == [0]


def test_next_timeout_follows_the_nearest_deadline(net: Net) -> None:
    net.broker.run_once(0)
    assert 0 < net.broker.next_timeout_ms() <= 51  # half a heartbeat interval
    net.clock.advance(1)
    assert net.broker.next_timeout_ms() == 0


def test_task_queues_round_robin_front_and_prune() -> None:
    q = TaskQueues()
    entries = {n: Entry(task(n, n[0]), b"p") for n in ("a1", "a2", "b1", "c1")}
    for e in entries.values():
        q.push(e)
    assert [e.id for e in q.take(frozenset("ab"), 1)] == ["a1"]
    assert [e.id for e in q.take(frozenset("abc"), 2)] == ["b1", "c1"]
    q.push_front([entries["b1"], entries["c1"]])
    assert q.size == 3 and q.counts() == {"a": 1, "b": 1, "c": 1}
    q.block("a", "x")
    assert q.parked() == 1 and q.has_work()
    assert [e.id for e in q.take(frozenset("abc"), 5)] == ["b1", "c1"]
    assert not q.has_work()
    q.prune()
    assert list(q.queues) == ["a"]


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        BrokerConfig(liveness=0)
    with pytest.raises(ConfigError):
        BrokerConfig(heartbeat_interval_ms="1000")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        BrokerConfig.from_mapping({"heartbeat_ms": 5})
    for delay in (-1, 1001):  # an ACCEPTED must come long before producers resend
        with pytest.raises(ConfigError, match="accepted_delay_ms"):
            BrokerConfig(accepted_delay_ms=delay)
    config = BrokerConfig.from_mapping({"retry_base_backoff_ms": 10, "retry_max_backoff_ms": 50})
    assert [config.backoff_ms(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 50]
    assert config.expiry_ms == 3000


def test_random_messages_never_break_the_broker(net: Net) -> None:
    rng = random.Random(1234)
    values: list[Any] = [None, True, -1, 0, 2**40, 1.5, "", "fz", b"\x00", [], ["fz"], {},
                         {"id": "z"}, [{"id": "z", "process": "fz", "args": {}}]]
    fields = ["tasks", "credit", "processes", "name", "versions", "decisions", "role",
              "process", "reason", "code", "task", "status", "attempt"]
    good: dict[str, Any] = {
        "tasks": values[-1], "credit": 3, "processes": ["fz"], "role": "x", "process": "fz",
        "reason": "r", "code": "c", "ids": ["z"], "versions": [1], "name": "fuzz",
        "decisions": [decision("z", process="fz")]}
    socks = [net.producer(), net.dealer(net.config.backend), net.dealer(net.config.control)]
    for _ in range(300):
        cmd = rng.choice(list(Cmd))
        header = {f: good[f] if f in good and rng.random() < 0.6 else rng.choice(values)
                  for f in (*SCHEMA[cmd], *rng.sample(fields, 2))}
        if rng.random() < 0.3:
            header = {"decisions": [{"task": "z", "status": rng.choice(["committed", "x"]),
                                     "attempt": rng.choice([1, "1", None])}]}
        frames = [bytes((rng.choice([1, 1, 1, 2]), cmd.value)), msgpack.packb(header)]
        rng.choice(socks).send_multipart(frames)
    received, deadline = 0, time.monotonic() + DEADLINE_S
    while received < 300 and time.monotonic() < deadline:
        received += net.broker.run_once(5)
    assert received == 300, received
    assert "internal-error" not in net.broker.counters, net.broker.counters
    assert net.counter("malformed") > 0
    _still_works(net)


def test_recent_decisions_keep_commits_compact_and_give_back_the_same_decision() -> None:
    from brokers.state import RecentDecisions

    recent = RecentDecisions(limit=2)
    plain, odd = decision("a", version=4, attempt=2), decision("b", "rejected", reason="no")
    recent.add("a", plain)
    recent.add("b", odd)
    assert recent.get("a") == plain and recent.get("b") is odd and recent.get("c") is None
    recent.add("c", decision("c"))
    assert len(recent) == 2 and recent.get("a") is None  # the oldest went
    recent.pop("b")
    assert recent.get("b") is None and len(recent) == 1


def test_recv_frames_gives_what_recv_multipart_gives(tmp_path: Path) -> None:
    """The roles' own multipart receive (pipeline/sockets.py; frames say whether more
    follow), as the broker uses it: the same frames, empty and large ones included, and
    zmq.Again when nothing waits."""
    from pipeline.sockets import recv_frames

    def _recv_message(sock: zmq.Socket[Any]) -> list[bytes]:
        return [f.bytes for f in recv_frames(sock)]

    ctx: zmq.Context[Any] = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.setsockopt(zmq.RCVTIMEO, int(DEADLINE_S * 1000))  # recv_multipart below
        router.bind(f"ipc://{tmp_path}/r")
        dealer.connect(f"ipc://{tmp_path}/r")
        messages = [[b"\x01\x01"], [b"\x01\x21", b"", b"x" * 300_000, b"idx"]]
        for frames in messages * 2:
            dealer.send_multipart(frames)
        got = []
        for _ in messages:
            assert router.poll(int(DEADLINE_S * 1000))  # every receive waits for its message
            got.append(_recv_message(router))
        identity = got[0][0]
        assert got == [[identity, *frames] for frames in messages]
        assert [router.recv_multipart() for _ in messages] == got
        with pytest.raises(zmq.Again):
            _recv_message(router)
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()
