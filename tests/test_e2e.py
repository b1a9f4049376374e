"""End to end: real sink, broker and worker processes over real ipc:// sockets."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

import pytest

from pipeline import Producer, Status, Subscriber
from pipeline.runner import NO_ENGINE_PRELUDE

pytestmark = pytest.mark.timeout(120)


def test_two_producers_commit_each_task_exactly_once(cluster_factory):
    cluster = cluster_factory(workers=2).start()
    results: dict[int, list] = {}

    def produce(pid: int) -> None:
        with Producer(cluster.endpoints.frontend) as producer:
            handles = []
            for i in range(500):
                if i % 2:
                    handles.append(producer.submit("increment", by=i))
                else:
                    handles.append(producer.submit("append", item=f"p{pid}-{i}"))
            results[pid] = producer.results(handles, timeout=90)

    threads = [threading.Thread(target=produce, args=(p,)) for p in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decisions = results[1] + results[2]
    assert len(decisions) == 1000
    assert Counter(d.status for d in decisions) == {Status.COMMITTED: 1000}
    versions = [d.version for d in decisions]
    assert len(set(versions)) == 1000, "each commit has its own global version"
    state = cluster.state()
    expected_count = 2 * sum(i for i in range(500) if i % 2)
    assert state["count"] == expected_count
    ledger = state["ledger"]
    assert len(ledger) == 500 and set(ledger) == {
        f"p{p}-{i}" for p in (1, 2) for i in range(500) if i % 2 == 0}


def test_worker_killed_mid_run_loses_nothing(cluster_factory):
    cluster = cluster_factory(workers=2, heartbeat_interval_ms=200).start()
    victim = cluster.worker_children[0]
    with Producer(cluster.endpoints.frontend) as producer:
        handles = [producer.submit("append", item=f"t{i}") for i in range(400)]
        first = list(producer.as_completed(handles[:50], timeout=60))
        assert len(first) == 50
        os.kill(victim.pid, signal.SIGKILL)
        victim.proc.wait()
        decisions = producer.results(handles[50:], timeout=60)
    assert all(d.committed for d in decisions)
    ledger = cluster.state()["ledger"]
    assert len(ledger) == 400, "a task was lost or committed twice"
    assert sorted(ledger) == sorted(f"t{i}" for i in range(400))


def test_undeclared_write_is_rejected_with_reason(cluster_factory):
    cluster = cluster_factory(workers=1).start()
    with Producer(cluster.endpoints.frontend) as producer:
        decision = producer.submit("put", key="secret", value=1).result(timeout=20)
    assert decision.status is Status.REJECTED
    assert decision.rule == "contract"
    assert "secret" in decision.reason


def test_process_exception_reaches_producer(cluster_factory):
    cluster = cluster_factory(workers=1).start()
    with Producer(cluster.endpoints.frontend) as producer:
        decision = producer.submit("boom", message="sensor offline").result(timeout=20)
    assert decision.status is Status.FAILED
    assert decision.error_type == "RuntimeError"
    assert decision.error_message == "sensor offline"
    assert "boom" in (decision.traceback or "")


def test_worker_without_the_engine_extension(cluster_factory):
    cluster = cluster_factory(workers=0)
    cluster.start()
    cluster.add_worker(prelude=NO_ENGINE_PRELUDE)
    with Producer(cluster.endpoints.frontend) as producer:
        decisions = producer.results(
            [producer.submit("increment", by=3) for _ in range(20)], timeout=30)
    assert all(d.committed for d in decisions)
    assert cluster.state()["count"] == 60


def test_subscriber_sees_each_commit_in_order(cluster_factory):
    cluster = cluster_factory(workers=2).start()
    with Subscriber(cluster.endpoints.events, cluster.endpoints.sync) as sub:
        sub.wait_connected()
        with Producer(cluster.endpoints.frontend) as producer:
            producer.results([producer.submit("increment") for _ in range(50)], timeout=30)
        changes = [sub.next(timeout=10) for _ in range(50)]
    versions = [c.version for c in changes]
    assert versions == sorted(versions) and len(set(versions)) == 50
    assert all(c.process == "increment" and c.keys == ["count"] for c in changes)
    assert changes[-1].values["count"] == 50


def test_fire_and_forget_producer_keeps_no_decisions(cluster_factory):
    cluster = cluster_factory(workers=1).start()
    with Producer(cluster.endpoints.frontend, keep_decisions=50) as producer:
        for _ in range(200):
            producer.submit("increment")  # never claimed
        last = producer.submit("increment")
        assert last.result(timeout=30).committed
        while producer.poll(200):
            pass
        assert len(producer._decisions) <= 50  # the oldest unclaimed ones were dropped
