"""A worker's credit follows its pace (pipeline/credit.py): it grows under a stream of small
tasks, never past `max_credit`, and falls back toward the configured `credit` when the pace
drops. The window on its own (explicit clocks), then real broker, sink and workers."""

from __future__ import annotations

import time
from typing import Any

import pytest
import zmq

from pipeline import Producer, Status, process
from pipeline.api import spec_of
from pipeline.cli_ops import request
from pipeline.credit import MEASURE_S, WINDOW_S, CreditWindow
from pipeline.protocol import Cmd, decode, encode
from pipeline.runner import Cluster
from pipeline.worker import RUN_BUDGET_S
from tests.test_worker_liveness import Fakes, _cmd, _ready

pytestmark = pytest.mark.timeout(120)


def run(window: CreditWindow, tasks: int, seconds: float, start: float, batch: int = 50,
        busy: float = 1.0) -> tuple[float, int]:
    """`tasks` tasks run in batches spread evenly over `seconds`, busy running them for the
    fraction `busy` of that time, credit taken back each time `ran` says so, or else at each
    whole second (the worker's heartbeat). Returns the clock at the end and the credit sent
    back."""
    sent, now, step = 0, start, seconds * batch / tasks
    for _ in range(tasks // batch):
        beat = int(now + step) > int(now)
        now += step
        if window.ran(batch, now, step * busy) or (beat and window.owed):
            sent += window.take()
    return now, sent


def test_credit_grows_to_the_pace_within_the_ceiling_and_falls_back() -> None:
    w = CreditWindow(64, 2048, now=0.0)
    assert (w.granted, w.register(0.0)) == (64, 64)
    now, _ = run(w, 5_000, 0.2, 0.0)  # 25,000 tasks/s: 20 ms of it is 500
    assert w.target == pytest.approx(25_000 * WINDOW_S, abs=5)
    now, _ = run(w, 2_000, 0.01, now)  # a burst far past the ceiling's pace
    now, _ = run(w, 400, 0.15, now)  # then slow again
    assert w.granted <= 2048
    # 50 tasks/s: back to the floor, as fast as tasks run (credit the broker holds
    # cannot be taken back; the window shrinks by returning less than ran)
    now, _ = run(w, 500, 10.0, now, batch=1)
    assert (w.target, w.granted) == (64, 64)


def test_credit_is_conserved_and_never_negative() -> None:
    """Whatever the pace, what the broker was given minus the tasks that ran is the credit
    the window says is granted, less what is owed; no READY carries a negative credit."""
    w = CreditWindow(16, 512, now=0.0)
    given, ran, now = w.register(0.0), 0, 0.0
    for tasks, seconds in ((4_000, 0.2), (100, 0.5), (9_000, 0.3), (30, 2.0), (700, 0.1)):
        now, sent = run(w, tasks, seconds, now, batch=10)
        given, ran = given + sent, ran + tasks
        assert sent >= 0
        assert given - ran == w.granted - w.owed
        assert 16 <= w.granted <= 512


def test_a_slow_worker_keeps_its_configured_credit() -> None:
    w = CreditWindow(64, 2048, now=0.0)
    run(w, 200, 2.0, 0.0, batch=1)  # 100 tasks/s: 2 in 20 ms
    assert (w.target, w.granted) == (64, 64)


def test_a_ceiling_below_the_floor_is_a_fixed_credit() -> None:
    w = CreditWindow(256, 100, now=0.0)
    _, sent = run(w, 50_000, 0.5, 0.0)
    assert (w.floor, w.ceiling, w.granted) == (256, 256, 256)
    assert sent == 50_000 - w.owed


def test_the_pace_is_measured_over_whole_periods_of_busy_time() -> None:
    w = CreditWindow(8, 4096, now=0.0)
    assert w.ran(8, MEASURE_S / 2, 0.001) and w.target == 8  # a quarter owed; no period yet
    w.ran(2_000, MEASURE_S, 0.099)  # 2,008 tasks in 0.1 s of work: 20,080 a second
    assert w.target == round(2_008 / 0.1 * WINDOW_S)


def test_a_worker_starved_of_credit_still_grows_it() -> None:
    """Run dry nine tenths of the time (its credit gone, the broker late to send more), a
    worker still measures what it can do: the credit grows, where a wall-clock pace would
    have kept it small."""
    w = CreditWindow(64, 2048, now=0.0)
    run(w, 3_000, 1.0, 0.0, busy=0.1)  # 3,000 tasks a second, in 0.1 s of work a second
    assert w.target == 30_000 * WINDOW_S


def test_an_idle_worker_keeps_its_credit_until_its_tasks_get_slower() -> None:
    w = CreditWindow(64, 2048, now=0.0)
    now, _ = run(w, 10_000, 0.5, 0.0)  # 20,000 tasks/s: 400
    assert w.target == 400
    now, _ = run(w, 100, 0.2, now + 60.0, batch=1, busy=0.025)  # idle a minute; a trickle
    assert w.target == 400  # each task as fast as before: 20 ms of them is still 400
    run(w, 1_000, 10.0, now, batch=1)  # 10 ms tasks: 20 ms of them is 2
    assert (w.target, w.granted) == (64, 64)


def test_a_worker_returns_the_credit_of_tasks_it_dropped_unrun(tmp_path: Any) -> None:
    """Malformed tasks in a DISPATCH are dropped, and their credit still goes back: else the
    window would count credit the broker does not hold."""
    fakes = Fakes(tmp_path, liveness=1000)  # the fake broker never speaks otherwise
    try:
        ident, header = _ready(fakes)
        assert header["credit"] == 8
        bad = [{"id": f"t{i}", "args": {}} for i in range(3)]  # no process
        fakes.backend.send_multipart([ident, *encode(Cmd.DISPATCH, {"tasks": bad})])
        frames = fakes.step_until(fakes.backend, lambda f: _cmd(f) is Cmd.READY)
        assert decode(frames[1:]).header == {"credit": 3}
        assert fakes.worker.counters["malformed"] == 3
    finally:
        fakes.close()


@process(inputs=[], outputs=[])
def slow(ctx: Any) -> dict[str, Any]:
    time.sleep(0.005)
    return {}


def test_a_worker_holding_many_slow_tasks_sends_updates_as_it_goes(tmp_path: Any) -> None:
    """A large credit can fill a worker with tasks that turned slow: it runs them in batches
    of about RUN_BUDGET_S, each UPDATE sent (and the sockets read, heartbeats included)
    before the next, instead of falling silent until all of them have run."""
    fakes = Fakes(tmp_path, liveness=1000, specs={"slow": spec_of(slow)})  # type: ignore[dict-item]
    try:
        ident, _ = _ready(fakes)
        tasks = [{"id": f"t{i}", "process": "slow", "args": {}} for i in range(40)]
        fakes.backend.send_multipart([ident, *encode(Cmd.DISPATCH, {"tasks": tasks})])
        sizes: list[int] = []
        while sum(sizes) < len(tasks):
            frames = fakes.step_until(fakes.updates)
            sizes.append(len(decode(frames).header["updates"]))
        most = int(RUN_BUDGET_S / 0.005) + 1  # the task that crosses the budget ends it
        assert len(sizes) >= 40 // most and max(sizes) <= most, sizes
    finally:
        fakes.close()


def _broker_credit(cluster: Cluster) -> list[int]:
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        status = request(ctx, cluster.endpoints.control, Cmd.STATUS_REQ, {}, 10.0)
    finally:
        ctx.term()
    return sorted(w["credit"] for w in status["workers"])


@pytest.mark.parametrize(("max_credit", "grows"), [(None, True), (16, False)])
def test_workers_grant_more_credit_under_a_stream_of_small_tasks(
        cluster_factory: Any, max_credit: int | None, grows: bool) -> None:
    env = {} if max_credit is None else {"PIPELINE_WORKER_MAX_CREDIT": str(max_credit)}
    cluster = cluster_factory(app="tests.apps.stateless", workers=2, credit=16, env=env)
    cluster.start()
    assert _broker_credit(cluster) == [16, 16]
    with Producer(cluster.endpoints.frontend) as producer:
        for _ in range(4):
            handles = producer.submit_many("tick", [{}] * 5_000)
            decisions = producer.results(handles, timeout=60)
            assert {d.status for d in decisions} == {Status.COMMITTED}
    # nothing in flight: each worker's whole credit, once what it still owes (less than a
    # quarter) has gone back with its next heartbeat
    deadline = time.monotonic() + 5
    while (credit := _broker_credit(cluster)) != [16, 16] and not grows:
        assert time.monotonic() < deadline, credit
        time.sleep(0.1)
    if grows:
        assert max(credit) > 16 and max(credit) <= 2048
    else:
        assert credit == [16, 16]


def test_a_broker_cap_below_the_workers_credit_never_starves_them(cluster_factory: Any) -> None:
    """The broker's `max_worker_credit` bounds the tasks in flight to one worker; the credit
    a worker grants beyond it is kept, not dropped, so the worker's own count of its credit
    stays true and shrinking it can never leave the broker without any (a starved worker)."""
    env = {"PIPELINE_BROKER_MAX_WORKER_CREDIT": "40"}
    cluster = cluster_factory(app="tests.apps.stateless", workers=2, credit=16, env=env)
    cluster.start()
    with Producer(cluster.endpoints.frontend) as producer:
        for n in (20_000, 50, 20_000, 50):  # bursts grow the credit; the lulls shrink it
            handles = producer.submit_many("tick", [{}] * n)
            decisions = producer.results(handles, timeout=30)
            assert {d.status for d in decisions} == {Status.COMMITTED}
