"""The transactional outbox: signals and follow-up tasks are released only after their
update commits, exactly once, even when the sink dies between journal and publish."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import Producer, Status, Subscriber
from pipeline.errors import TaskTimeout

pytestmark = pytest.mark.timeout(120)


def _changes_until(sub: Subscriber, done: Any, timeout: float = 30) -> list[Any]:
    seen = []
    while not done(seen):
        seen.append(sub.next(timeout=timeout))
    return seen


def test_signal_and_follow_up_arrive_once_after_commit(cluster_factory):
    cluster = cluster_factory(workers=1).start()
    with Subscriber(cluster.endpoints.events, cluster.endpoints.sync) as sub:
        sub.wait_connected()
        with Producer(cluster.endpoints.frontend) as producer:
            assert producer.submit("chain", n=7).result(timeout=20).committed
        changes = _changes_until(sub, lambda c: len(c) == 2)
        with pytest.raises(TaskTimeout):
            sub.next(timeout=1.0)  # nothing more: the follow-up ran once
    first, follow_up = changes
    assert first.process == "chain" and first.signals == [{"topic": "chained", "payload": b"7"}]
    assert follow_up.process == "increment" and follow_up.task.endswith("/0")
    assert follow_up.values == {"count": 101}


def test_rejected_update_releases_nothing(cluster_factory):
    cluster = cluster_factory(workers=1).start()
    with Subscriber(cluster.endpoints.events, cluster.endpoints.sync) as sub:
        sub.wait_connected()
        with Producer(cluster.endpoints.frontend) as producer:
            decision = producer.submit("chain_rejected").result(timeout=20)
        assert decision.status is Status.REJECTED
        with pytest.raises(TaskTimeout):
            sub.next(timeout=1.5)
    assert cluster.state().get("count", 0) == 0


def test_sink_killed_between_journal_and_publish_releases_exactly_once(cluster_factory):
    cluster = cluster_factory(workers=1, env={"PIPELINE_FAULT": "crash-after-journal"}).start()
    assert cluster.sink_child is not None
    with Producer(cluster.endpoints.frontend) as producer:
        handle = producer.submit("chain", n=1)
        assert cluster.sink_child.proc.wait(timeout=30) == 70  # journaled, nothing published
        cluster.env = {k: v for k, v in cluster.env.items() if k != "PIPELINE_FAULT"}
        with Subscriber(cluster.endpoints.events, cluster.endpoints.sync) as sub:
            cluster.start_sink()  # re-releases the journaled commit's outbox
            decision = handle.result(timeout=30)
            assert decision.status in (Status.COMMITTED, Status.DUPLICATE)
            sub.wait_connected()
            changes = _changes_until(sub, lambda c: any(
                x.values.get("count") == 101 for x in c))
    assert cluster.state().get("count", 0) == 101  # the follow-up committed once, not twice
    assert changes[-1].process == "increment"
