"""When the broker sends ACCEPTED, and what wakes it: an ACCEPTED waits for the fsync of its
tasks and for `accepted_delay_ms`, is left out when its tasks were decided meanwhile, and the
journal's fsync thread wakes the loop only for an answer that waits on it (see
brokers/answers.py). Real ipc:// sockets, a fake clock, the broker stepped by the test."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from brokers.journal import TaskJournal
from pipeline.protocol import Cmd, encode
from tests.test_broker import Net, decision, make_net, task
from tests.test_broker_journal import held_fsync

__all__ = ["make_net"]  # the fixture, re-exported for this module's tests

DELAY_MS = 50
QUIET_MS = 10_000  # the heartbeat: its own timer never comes near DELAY_MS


@pytest.fixture
def anet(make_net: Callable[..., Net], tmp_path: Path) -> Net:
    return make_net(journal_dir=str(tmp_path / "journal"), accepted_delay_ms=DELAY_MS,
                    heartbeat_interval_ms=QUIET_MS)


def _fsynced(net: Net) -> None:
    net.pump(lambda: net.broker.status()["journal"]["fsyncs"] >= 1)


def _wake_ups(net: Net, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the fsync thread's writes to the wake pipe."""
    syncer = net.broker._journal._syncer  # type: ignore[union-attr]
    assert syncer is not None
    calls: list[int] = []
    real = syncer._wake
    monkeypatch.setattr(syncer, "_wake", lambda: (calls.append(1), real())[1])
    return calls


def test_accepted_waits_for_its_delay_after_the_fsync(
        anet: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    wakes = _wake_ups(anet, monkeypatch)
    prod = anet.producer()
    prod.send_multipart(encode(Cmd.SUBMIT, {"tasks": [task("t1"), task("t2")]}))
    _fsynced(anet)
    for _ in range(5):
        anet.broker.run_once(1)
    assert not prod.poll(0), "ACCEPTED before its delay"
    assert 0 < anet.broker.next_timeout_ms() <= DELAY_MS  # the poll wakes for it
    anet.clock.advance(DELAY_MS / 1000)
    assert anet.expect(prod, Cmd.ACCEPTED)["ids"] == ["t1", "t2"]
    assert anet.broker.next_timeout_ms() > DELAY_MS  # nothing held any more
    assert wakes == [], "the fsync woke the loop although nothing was due"


def test_no_accepted_and_no_wake_up_for_a_task_decided_within_the_delay(
        anet: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone task's usual path: its RESULT ends it for the producer, and the broker is
    woken neither by the fsync nor by a timer for the ACCEPTED it leaves out."""
    wakes = _wake_ups(anet, monkeypatch)
    prod, sink = anet.producer(), anet.sink()
    worker = anet.worker(["p"], credit=5)
    prod.send_multipart(encode(Cmd.SUBMIT, {"tasks": [task("t1")]}))
    anet.expect(worker, Cmd.DISPATCH)
    _fsynced(anet)
    anet.decide(sink, decision("t1", version=1))
    assert anet.expect(prod, Cmd.RESULT)["decisions"][0]["task"] == "t1"
    assert anet.broker.next_timeout_ms() > DELAY_MS, "a timer left for a settled ACCEPTED"
    anet.clock.advance(DELAY_MS / 1000)
    for _ in range(5):
        anet.broker.run_once(1)
    assert not prod.poll(0), "an ACCEPTED for a task already decided"
    assert wakes == []


def test_a_due_accepted_waits_for_its_fsync_which_wakes_the_loop(
        anet: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, started = held_fsync(monkeypatch)
    prod = anet.producer()
    prod.send_multipart(encode(Cmd.SUBMIT, {"tasks": [task("t1")]}))
    anet.pump(started.is_set)
    anet.clock.advance(DELAY_MS / 1000)  # due, but not durable
    for _ in range(5):
        anet.broker.run_once(1)
    assert not prod.poll(0), "ACCEPTED before the fsync that covers its task"
    gate.set()
    t0 = time.monotonic()
    anet.broker.run_once(5000)  # the fsync thread's byte on the wake pipe ends the poll
    assert time.monotonic() - t0 < 4
    assert prod.poll(1000), "the fsync did not wake the loop"
    assert anet.expect(prod, Cmd.ACCEPTED)["ids"] == ["t1"]


def test_the_fsync_is_asked_for_after_the_dispatch_left(
        make_net: Callable[..., Net], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatch stamp is written before the DISPATCH leaves (as before), but the fsync
    thread is woken only at the end of the pass: it never competes with the send."""
    net = make_net(journal_dir=str(tmp_path / "journal"))
    events: list[str] = []
    syncer = net.broker._journal._syncer  # type: ignore[union-attr]
    assert syncer is not None
    real_request, real_send = syncer.request, net.broker._send
    monkeypatch.setattr(syncer, "request", lambda seq, fd: (
        events.append("fsync"), real_request(seq, fd))[1])

    def send(sock: Any, identity: bytes, frames: list[Any]) -> str | None:
        events.append(Cmd(frames[0][1]).name)
        return real_send(sock, identity, frames)

    monkeypatch.setattr(net.broker, "_send", send)
    prod, worker = net.producer(), net.worker(["p"], credit=5)
    prod.send_multipart(encode(Cmd.SUBMIT, {"tasks": [task("t1")]}))
    net.expect(worker, Cmd.DISPATCH)
    assert events[:2] == ["DISPATCH", "fsync"]
    assert net.broker.status()["journal"]["writes"] == 1  # intake and stamp in one write


def test_write_asks_for_no_fsync_and_commit_asks_for_what_was_written(
        tmp_path: Path) -> None:
    journal = TaskJournal(tmp_path)
    journal.replay()
    journal.submitted(task("a"))  # must be durable
    assert journal.write() == 1 and journal.wanted == 0
    assert journal.commit() == 0 and journal.wanted == 1  # nothing left to write, one fsync
    assert journal.commit() == 0 and journal.wanted == 1  # nothing new to make durable
    journal.decided(decision("a"))  # needs no fsync
    assert journal.commit() == 1 and journal.wanted == 1
    deadline = time.monotonic() + 5
    while not journal.wake_when(1):
        assert time.monotonic() < deadline, "write 1 never became durable"
        time.sleep(0.001)
    journal.close()
    again = TaskJournal(tmp_path)
    assert list(again.replay().decided) == ["a"]
    again.close()
