"""The asyncio producer end to end: real sink, broker and workers over ipc:// sockets."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from pipeline import Status
from pipeline.aio import AsyncProducer
from pipeline.api import Decision
from pipeline.errors import PipelineError, SubmitRejected, TaskTimeout

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")


def _run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(make(), 90))


def test_submit_and_await_one_decision(cluster_factory):
    cluster = cluster_factory(workers=1).start()

    async def main() -> Decision:
        async with AsyncProducer(cluster.endpoints.frontend) as producer:
            handle = await producer.submit("increment", by=5)
            return await handle.result(timeout=30)

    decision = _run(main)
    assert decision.status is Status.COMMITTED and decision.version == 1
    assert cluster.state()["count"] == 5


def test_many_concurrent_awaits_each_get_their_own_decision(cluster_factory):
    cluster = cluster_factory(workers=2).start()
    n = 1500

    async def one(producer: AsyncProducer, i: int) -> tuple[str, Decision]:
        handle = await producer.submit("append", item=f"t{i}")
        return handle.id, await handle.result(timeout=80)

    async def main() -> list[tuple[str, Decision]]:
        async with AsyncProducer(cluster.endpoints.frontend) as producer:
            return await asyncio.gather(*(one(producer, i) for i in range(n)))

    results = _run(main)
    assert all(tid == d.task for tid, d in results), "a handle got another task's decision"
    assert Counter(d.status for _, d in results) == {Status.COMMITTED: n}
    assert len({d.version for _, d in results}) == n
    assert sorted(cluster.state()["ledger"]) == sorted(f"t{i}" for i in range(n))


def test_submit_many_rejected_write_and_invalid_task(cluster_factory):
    cluster = cluster_factory(workers=2).start()

    async def main() -> tuple[list[Decision], Decision, BaseException | None]:
        async with AsyncProducer(cluster.endpoints.frontend) as producer:
            handles = await producer.submit_many("increment", [{"by": i} for i in range(300)])
            decisions = await asyncio.gather(*(h.result(timeout=60) for h in handles))
            bad = await (await producer.submit("put", key="secret", value=1)).result(30)
            invalid = await producer.submit("")
            try:
                await invalid.result(timeout=30)
            except SubmitRejected as exc:
                return decisions, bad, exc
            return decisions, bad, None

    decisions, bad, rejected = _run(main)
    assert all(d.committed for d in decisions)
    assert cluster.state()["count"] == sum(range(300))
    assert bad.status is Status.REJECTED and bad.rule == "contract"
    assert isinstance(rejected, SubmitRejected) and rejected.code == "invalid"


def test_timeout_keeps_the_task_and_close_fails_waiters(cluster_factory):
    cluster = cluster_factory(workers=1).start()

    async def main() -> tuple[Decision, BaseException | None]:
        async with AsyncProducer(cluster.endpoints.frontend) as producer:
            handle = await producer.submit("slow", seconds=0.5, tag="a")
            with pytest.raises(TaskTimeout):
                await handle.result(timeout=0.01)
            decision = await handle.result(timeout=30)
            pending = await producer.submit("slow", seconds=0.5, tag="b")
        try:
            await pending.result(timeout=5)
        except PipelineError as exc:
            return decision, exc
        return decision, None

    decision, closed = _run(main)
    assert decision.committed
    assert isinstance(closed, PipelineError) and "closed" in str(closed)


def test_not_started_refuses_to_submit():
    async def main() -> None:
        producer = AsyncProducer("ipc:///nonexistent/frontend.sock")
        try:
            with pytest.raises(PipelineError, match="not started"):
                await producer.submit("increment")
        finally:
            await producer.close()

    _run(main)


def test_broker_restart_undecided_tasks_are_resent(cluster_factory):
    # No worker until the broker has restarted: no task can be decided before, and the
    # results reach the producer only if it resends its undecided tasks on reconnect (the
    # restarted broker sees a new connection).
    cluster = cluster_factory(workers=0).start()

    async def main() -> tuple[list[Decision], int]:
        async with AsyncProducer(cluster.endpoints.frontend) as producer:
            handles = await producer.submit_many("increment", [{"by": 1}] * 40)
            await producer.wait_accepted(timeout=30)
            assert len(producer.undecided) == 40
            await asyncio.to_thread(_restart_broker, cluster)
            await asyncio.to_thread(cluster.add_worker)
            out = await asyncio.gather(*(h.result(timeout=60) for h in handles))
            return out, producer.resent

    decisions, resent = _run(main)
    assert resent == 40
    assert Counter(d.status for d in decisions) == {Status.COMMITTED: 40}
    assert cluster.state()["count"] == 40


def _restart_broker(cluster: Any) -> None:
    broker = cluster.broker_child
    os.kill(broker.pid, signal.SIGKILL)
    broker.proc.wait()
    cluster.start_broker()
