"""The broker's durable intake, dead-letter queue, leases and retries, over real ipc://
sockets, stepped with run_once on a fake clock (see tests/test_broker.py for the `Net`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from brokers import journal as journal_mod
from brokers.journal import FILE_NAME, TaskJournal, read_records
from pipeline.protocol import Cmd, encode
from tests.test_broker import Net, decision, ids, make_net, net, task

__all__ = ["make_net", "net"]  # fixtures, re-exported for this module's tests


@pytest.fixture
def jnet(make_net: Callable[..., Net], tmp_path: Path) -> Net:
    return make_net(journal_dir=str(tmp_path / "journal"))


def _journal_kinds(net: Net) -> list[str]:
    """Record kinds, a whole-SUBMIT record ("b") counted as one "s" per task and a
    whole-DECISION record ("e") as one "d" per decision."""
    assert net.config.journal_dir is not None
    records, _ = read_records(Path(net.config.journal_dir) / FILE_NAME)
    out = []
    for r in records:
        if r["k"] in ("b", "e"):
            header = msgpack.unpackb(r["h"])
            out += ["s"] * len(header.get("tasks", [])) + ["d"] * len(header.get("decisions", []))
        else:
            out.append(r["k"])
    return out


def _dlq(net: Net, sock: zmq.Socket[Any], cmd: Cmd, **header: Any) -> dict[str, Any]:
    sock.send_multipart(encode(cmd, header))
    return net.expect(sock, Cmd.DLQ)


def test_accepted_means_journaled_and_a_restart_queues_undecided_tasks(jnet: Net) -> None:
    prod, sink = jnet.producer(), jnet.sink()
    assert jnet.submit(prod, task("t1"), task("t2"), task("t3"))["ids"] == ["t1", "t2", "t3"]
    assert _journal_kinds(jnet) == ["s", "s", "s"]  # on disk before the ACCEPTED left
    worker = jnet.worker(["p"], credit=2)
    assert ids(jnet.expect(worker, Cmd.DISPATCH)) == ["t1", "t2"]
    jnet.decide(sink, decision("t1", version=5))
    jnet.expect(prod, Cmd.RESULT)
    assert jnet.broker.status()["journal"]["fsyncs"] >= 1
    jnet.restart()
    status = jnet.broker.status()
    assert (status["tasks"], status["queues"]) == (2, {"p": 2})  # t2 was in flight
    assert status["counters"]["journal.restored"] == 2
    fresh = jnet.worker(["p"], credit=5, name="fresh")
    assert ids(jnet.expect(fresh, Cmd.DISPATCH)) == ["t2", "t3"]
    again = jnet.producer()  # a reconnected producer resubmits; t1's decision survived
    again.send_multipart(encode(Cmd.SUBMIT, {"tasks": [task("t1"), task("t2")]}))
    assert jnet.expect(again, Cmd.RESULT)["decisions"][0]["version"] == 5
    assert jnet.expect(again, Cmd.ACCEPTED)["ids"] == ["t1", "t2"]
    assert jnet.broker.status()["tasks"] == 2, "a resubmit is not queued twice"
    sink2 = jnet.sink()
    jnet.decide(sink2, decision("t2"), decision("t3"))
    got = jnet.expect(again, Cmd.RESULT)["decisions"]
    assert [d["task"] for d in got] == ["t2"]  # t3's producer never came back


def held_fsync(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make the journal's fsyncs wait: (gate, started); an fsync sets `started`, then
    waits until the test sets `gate`."""
    gate, started = threading.Event(), threading.Event()
    real = journal_mod._datasync

    def slow_sync(fd: int) -> None:
        started.set()
        gate.wait(10)
        real(fd)

    monkeypatch.setattr(journal_mod, "_datasync", slow_sync)
    return gate, started


def test_dispatch_does_not_wait_for_the_fsync_but_accepted_does(
        jnet: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync runs in the journal's thread: a task is dispatched (and even decided)
    while its fsync is still running; its ACCEPTED leaves only after the fsync is done."""
    gate, started = held_fsync(monkeypatch)
    prod, sink = jnet.producer(), jnet.sink()
    worker = jnet.worker(["p"], credit=5)
    prod.send_multipart(encode(Cmd.SUBMIT, {"tasks": [task("t1"), task("t2")]}))
    assert ids(jnet.expect(worker, Cmd.DISPATCH)) == ["t1", "t2"]
    assert started.wait(5)
    jnet.decide(sink, decision("t1"))
    assert jnet.expect(prod, Cmd.RESULT)["decisions"][0]["task"] == "t1"
    for _ in range(20):
        jnet.broker.run_once(1)
    assert not prod.poll(0), "ACCEPTED before the fsync that covers the tasks"
    gate.set()
    assert jnet.expect(prod, Cmd.ACCEPTED)["ids"] == ["t1", "t2"]
    assert jnet.broker.status()["journal"]["fsyncs"] >= 1
    jnet.restart()  # t2 undecided, on disk
    assert jnet.broker.status()["queues"] == {"p": 1}


def test_batch_records_replay_like_single_ones(tmp_path: Path) -> None:
    journal = TaskJournal(tmp_path)
    journal.replay()
    journal.submitted_raw(msgpack.packb({"tasks": [task("a"), task("b"), task("c")]}), 3, 1234)
    journal.submitted(task("d"))
    journal.decided_raw(msgpack.packb({"decisions": [decision("a"), decision("b")]}), 2)
    journal.decided(decision("d"))
    journal.close()
    again = TaskJournal(tmp_path)
    state = again.replay()
    again.close()
    assert list(state.pending) == ["c"] and list(state.decided) == ["a", "b", "d"]
    assert state.pending["c"]["born_ms"] == 1234  # the stamp the broker gave the batch
    assert again.records == 7  # tasks and decisions, whatever records hold them


def test_a_torn_tail_is_cut_off(tmp_path: Path) -> None:
    journal = TaskJournal(tmp_path)
    journal.replay()
    journal.submitted(task("a"))
    journal.submitted(task("b"))
    journal.commit()
    journal.close()
    with (tmp_path / FILE_NAME).open("ab") as f:
        f.write(b"\x10\x00\x00\x00garbage")
    again = TaskJournal(tmp_path)
    state = again.replay()
    assert list(state.pending) == ["a", "b"] and state.truncated_bytes == 11
    again.decided(decision("a"))
    again.close()
    third = TaskJournal(tmp_path)
    assert list(third.replay().pending) == ["b"]
    third.close()


def test_compaction_keeps_only_live_tasks(make_net: Callable[..., Net], tmp_path: Path) -> None:
    net = make_net(journal_dir=str(tmp_path / "j"), journal_compact_min_records=20)
    prod, sink = net.producer(), net.sink()
    worker = net.worker(["p"], credit=100)
    net.submit(prod, *(task(f"t{i}") for i in range(30)))
    net.expect(worker, Cmd.DISPATCH)
    net.decide(sink, *(decision(f"t{i}") for i in range(28)))
    net.expect(prod, Cmd.RESULT)
    net.clock.advance(0.06)
    net.broker.run_once(0)
    assert net.broker.status()["journal"]["compactions"] == 1
    # the two live tasks in one "b" record, and their dispatch stamp in one "x" record
    assert _journal_kinds(net) == ["s", "s", "x"]
    net.restart()
    assert net.broker.status()["tasks"] == 2


def test_dead_letters_are_journaled_listed_requeued_and_purged(
        make_net: Callable[..., Net], tmp_path: Path) -> None:
    net = make_net(journal_dir=str(tmp_path / "j"), max_attempts=5,
                   max_attempts_per_process={"p": 2})
    prod = net.producer()
    net.submit(prod, task("t1", x=1), task("t2"))
    for n in (1, 2):  # two workers take the tasks and leave: the process's limit is 2
        worker = net.worker(["p"], credit=5, name=f"w{n}")
        net.expect(worker, Cmd.DISPATCH)
        worker.send_multipart(encode(Cmd.DISCONNECT))
        net.pump(lambda: net.broker.status()["workers"] == [])
    dead = net.expect(prod, Cmd.RESULT)["decisions"]
    assert {(d["status"], d["rule"]) for d in dead} == {("failed", "max_attempts")}
    net.restart()
    admin = net.dealer(net.config.control)
    listed = _dlq(net, admin, Cmd.DLQ_LIST)
    assert (listed["total"], listed["affected"]) == (2, ["t1", "t2"])
    one = listed["items"][0]
    assert (one["process"], one["task"], one["attempt"]) == ("p", task("t1", x=1), 2)
    assert "disconnect" in one["reason"] and one["failures"] == 2
    assert _dlq(net, admin, Cmd.DLQ_LIST, ids=["t2", "nope"])["affected"] == ["t2"]
    assert _dlq(net, admin, Cmd.DLQ_REQUEUE, ids=["t1"])["affected"] == ["t1"]
    worker = net.worker(["p"], credit=5, name="again")
    assert [(t["id"], t["attempt"]) for t in net.expect(worker, Cmd.DISPATCH)["tasks"]] == [
        ("t1", 3)]
    assert _dlq(net, admin, Cmd.DLQ_PURGE, all=True) == {"items": [], "affected": ["t2"],
                                                         "total": 0}
    admin.send_multipart(encode(Cmd.DLQ_PURGE, {}))  # neither ids nor all: refused
    assert net.expect(admin, Cmd.ERROR)["code"] == "invalid"
    net.restart()
    assert net.broker.status()["dead_letters"] == 0
    assert net.broker.status()["queues"] == {"p": 1}  # t1, requeued, still undecided


def test_dlq_works_without_a_journal(make_net: Callable[..., Net]) -> None:
    net = make_net(max_attempts=1)
    prod, admin = net.producer(), net.dealer(net.config.control)
    net.submit(prod, task("t1"))
    w = net.worker(["p"], credit=1)
    net.expect(w, Cmd.DISPATCH)
    w.send_multipart(encode(Cmd.DISCONNECT))
    net.expect(prod, Cmd.RESULT)
    assert _dlq(net, admin, Cmd.DLQ_LIST)["affected"] == ["t1"]


def test_an_expired_lease_dispatches_again(make_net: Callable[..., Net]) -> None:
    net = make_net(task_lease_ms=1000, heartbeat_interval_ms=1000, liveness=10)
    prod = net.producer()
    net.submit(prod, task("t1"), task("t2"))
    worker = net.worker(["p"], credit=1)
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["t1"]
    net.clock.advance(0.9)
    net.ready(worker, 1)
    assert ids(net.expect(worker, Cmd.DISPATCH)) == ["t2"]
    net.clock.advance(0.6)  # t1 held 1.5 s (the lease check runs every half heartbeat)
    net.ready(worker, 1)
    again = net.expect(worker, Cmd.DISPATCH)["tasks"]
    assert [(t["id"], t["attempt"]) for t in again] == [("t1", 2)]
    assert net.counter("lease.expired") == 1


def test_a_restarted_sink_gets_the_tasks_in_flight_again(net: Net) -> None:
    prod, sink = net.producer(), net.sink()
    net.submit(prod, task("t1"))
    worker = net.worker(["p"], credit=5)
    net.expect(worker, Cmd.DISPATCH)
    net.sink()  # a new sink process says HELLO
    again = net.expect(worker, Cmd.DISPATCH)["tasks"]
    assert [(t["id"], t["attempt"]) for t in again] == [("t1", 2)]
    net.decide(sink, decision("t1", "duplicate", attempt=1))  # the original attempt
    assert net.expect(prod, Cmd.RESULT)["decisions"][0]["status"] == "duplicate"
    assert net.counter("sink.restarted") == 1


def test_repeated_losses_back_off_with_jitter(make_net: Callable[..., Net]) -> None:
    net = make_net(retry_base_backoff_ms=100, retry_jitter_pct=50, heartbeat_interval_ms=1000)
    prod = net.producer()
    net.submit(prod, task("t1"))
    first = net.worker(["p"], credit=1, name="first")
    net.expect(first, Cmd.DISPATCH)
    first.send_multipart(encode(Cmd.DISCONNECT))
    net.pump(lambda: net.broker.status()["workers"] == [])
    second = net.worker(["p"], credit=1, name="second")
    net.expect(second, Cmd.DISPATCH)  # the first loss: at once
    second.send_multipart(encode(Cmd.DISCONNECT))
    net.pump(lambda: net.broker.status()["workers"] == [])
    third = net.worker(["p"], credit=1, name="third")
    assert net.broker.status()["delayed"] == 1  # the second: 100..150 ms later
    net.clock.advance(0.099)
    net.broker.run_once(0)
    assert not third.poll(0)
    net.clock.advance(0.052)
    assert [t["attempt"] for t in net.expect(third, Cmd.DISPATCH)["tasks"]] == [3]


def test_born_ms_is_stamped_kept_across_attempts_and_renewed_only_when_safe(jnet: Net) -> None:
    """The sink's de-duplication horizon relies on `born_ms` never growing across a task's
    attempts: it is stamped at the first dispatch (journaled before the DISPATCH leaves) and
    kept; only a task that never ran (no dispatch record) is stamped afresh after a
    restart."""
    prod, sink = jnet.producer(), jnet.sink()
    before = time.time_ns() // 1_000_000
    jnet.submit(prod, task("t1"), task("t2"))
    worker = jnet.worker(["p"], credit=1)
    (first,) = jnet.expect(worker, Cmd.DISPATCH)["tasks"]
    born = first["born_ms"]
    assert first["id"] == "t1" and before <= born <= time.time_ns() // 1_000_000
    jnet.decide(sink, decision("t1", "conflict", version=1, retry_after_ms=0))
    jnet.ready(worker, 1)
    (again,) = jnet.expect(worker, Cmd.DISPATCH)["tasks"]
    assert (again["id"], again["attempt"], again["born_ms"]) == ("t1", 2, born)
    # The sink cannot check it any more: dead-lettered with the rule, nothing committed.
    jnet.decide(sink, decision("t1", "expired", attempt=2, rule="dedup_horizon",
                               reason="born at or before the horizon"))
    (dead,) = jnet.expect(prod, Cmd.RESULT)["decisions"]
    assert (dead["status"], dead["rule"]) == ("failed", "dedup_horizon")
    assert "expired: born at or before the horizon" in dead["reason"]
    assert jnet.counter("decided.expired") == 1
    restarted = time.time_ns() // 1_000_000
    jnet.restart()  # t2 never ran: its first dispatch stamps it, as if new
    assert jnet.config.journal_dir is not None
    records, _ = read_records(Path(jnet.config.journal_dir) / FILE_NAME)
    assert [r["ids"] for r in records if r["k"] == "x"] == [["t1"]]
    admin = jnet.dealer(jnet.config.control)
    (letter,) = _dlq(jnet, admin, Cmd.DLQ_LIST)["items"]
    assert (letter["rule"], letter["born_ms"], letter["task"]) == ("dedup_horizon", born,
                                                                    task("t1"))
    worker = jnet.worker(["p"], credit=1, name="w2")
    (restored,) = jnet.expect(worker, Cmd.DISPATCH)["tasks"]
    assert restored["id"] == "t2" and restored["born_ms"] >= restarted
    t2_born = restored["born_ms"]
    # Requeueing an expired task is the operator's word that it did not commit: it runs
    # afresh, with a new stamp (journaled, so a restart keeps it).
    time.sleep(0.005)
    assert _dlq(jnet, admin, Cmd.DLQ_REQUEUE, ids=["t1"])["affected"] == ["t1"]
    jnet.restart()
    worker = jnet.worker(["p"], credit=2, name="w3")
    tasks = {t["id"]: t for t in jnet.expect(worker, Cmd.DISPATCH)["tasks"]}
    assert tasks["t1"]["born_ms"] > born and tasks["t2"]["born_ms"] == t2_born


def test_lost_attempts_count_across_restarts_and_compaction(make_net: Callable[..., Net],
                                                            tmp_path: Path) -> None:
    """A task that keeps killing its workers reaches the dead-letter queue even if the
    broker restarts in between (before, a restart gave it a fresh budget); its stamp and
    count survive a compaction too."""
    net = make_net(journal_dir=str(tmp_path / "j"), max_attempts=3,
                   journal_compact_min_records=3, journal_compact_ratio=1)
    prod = net.producer()
    net.submit(prod, task("t1"))
    borns = []
    for n in (1, 2):
        worker = net.worker(["p"], credit=1, name=f"w{n}")
        (t,) = net.expect(worker, Cmd.DISPATCH)["tasks"]
        assert t["attempt"] == n
        borns.append(t["born_ms"])
        worker.send_multipart(encode(Cmd.DISCONNECT))
        net.pump(lambda: net.broker.status()["workers"] == [])
        if n == 1:
            net.restart()
        else:  # enough records for a compaction, then a restart from the compacted file
            net.submit(prod, task("x1"), task("x2"))
            net.clock.advance(0.06)
            net.broker.run_once(0)
            assert net.broker.status()["journal"]["compactions"] >= 1
            net.restart()
    assert net.broker.status()["counters"]["journal.restored"] == 3
    worker = net.worker(["p"], credit=1, name="w3")
    (t,) = net.expect(worker, Cmd.DISPATCH)["tasks"]
    # The first dispatch's stamp, kept through both restarts and the compaction.
    assert borns[1] == borns[0]
    assert (t["id"], t["attempt"], t["born_ms"]) == ("t1", 3, borns[1])
    worker.send_multipart(encode(Cmd.DISCONNECT))
    net.pump(lambda: net.broker.status()["dead_letters"] == 1)
    admin = net.dealer(net.config.control)
    (letter,) = _dlq(net, admin, Cmd.DLQ_LIST)["items"]
    assert (letter["failures"], letter["attempt"], letter["rule"]) == (3, 3, "max_attempts")


def test_compaction_batches_keep_order_stamps_starts_and_failures(tmp_path: Path) -> None:
    """A compaction writes runs of tasks that never lost an attempt as "b" records and
    their dispatch stamps as "x" records: replay gives back the same pending tasks, in
    order, with the same born_ms, started flags and (failures, attempt)."""
    pending = []
    for i in range(12):
        t = {"id": f"t{i}", "process": "p", "args": {"i": i}, "born_ms": 1000 + i // 4}
        failures = 2 if i in (5, 9) else 0
        pending.append((t, failures, failures + 1, i % 3 != 0))
    journal = TaskJournal(tmp_path)
    journal.replay()
    journal.compact(pending, [])
    journal.close()
    again = TaskJournal(tmp_path)
    state = again.replay()
    again.close()
    assert list(state.pending) == [t["id"] for t, *_ in pending]
    assert [state.pending[t["id"]]["born_ms"] for t, *_ in pending] == \
        [t["born_ms"] for t, *_ in pending]
    assert state.started == {t["id"] for t, _, _, started in pending if started}
    assert state.failures == {"t5": (2, 3), "t9": (2, 3)}
    kinds = [r["k"] for r in read_records(tmp_path / FILE_NAME)[0]]
    assert kinds.count("s") == 2 and kinds.count("b") == 3 and "x" in kinds
