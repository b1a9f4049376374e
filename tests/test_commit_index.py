"""The commit index (frame 2 of DECISION and RESULT, docs/PROTOCOL.md): the sink adds it
when every decision is a plain commit; the broker and the producers act on it without
decoding the header, and fall back to the header whenever it does not fit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from pipeline.api import Decision, Status
from pipeline.ledger import SubmitLedger
from pipeline.protocol import (
    Cmd,
    commit_index,
    decode,
    encode,
    encode_raw,
    event_index,
    pack_commit_index,
    pack_event_index,
)
from tests.test_broker import Net, decision, task


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    n = Net(tmp_path)
    yield n
    n.close()


def _decide_indexed(sink: zmq.Socket[Any], decisions: list[dict[str, Any]],
                    index: bytes) -> None:
    header = msgpack.packb({"decisions": decisions})
    sink.send_multipart(encode_raw(Cmd.DECISION, header, index))


def test_index_round_trip_and_refusals() -> None:
    assert commit_index(pack_commit_index(["a", "b"], [1, 2], 7)) == (["a", "b"], [1, 2], 7)
    for bad in ([["a"], [1]], [["a"], [1, 2], 1], [[1], [1], 1], [["a"], ["1"], 1],
                [[], [], 1], [["a"], [1], 0], {"a": 1}):
        assert commit_index(msgpack.packb(bad)) is None
    assert commit_index(b"\xc1") is None
    assert event_index(pack_event_index(3, 2, ["a"])) == (3, 2, ["a"])
    for bad in ([3, 2], [0, 1, []], [1, 0, []], [1, 1, [2]], [1, 1, "a"], [True, 1, []]):
        assert event_index(msgpack.packb(bad)) is None


def test_broker_finishes_indexed_commits_and_forwards_the_index(net: Net) -> None:
    prod, sink = net.producer(), net.sink()
    net.submit(prod, task("t1"), task("t2"))
    worker = net.worker(["p"], credit=10)
    assert len(net.expect(worker, Cmd.DISPATCH)["tasks"]) == 2
    decisions = [decision("t1", version=5), decision("t2", version=6)]
    index = pack_commit_index(["t1", "t2"], [1, 1], 5)
    _decide_indexed(sink, decisions, index)
    net.pump(lambda: prod.poll(0))
    frames = prod.recv_multipart()
    assert len(frames) == 3 and frames[2] == index
    assert decode(frames).header["decisions"] == decisions
    status = net.broker.status()
    assert (status["tasks"], status["in_flight"]) == (0, 0)
    assert status["counters"]["decided.committed"] == 2
    # a resubmit of a decided task is answered with the decision, as for the header path
    prod.send_multipart(encode(Cmd.SUBMIT, {"tasks": [task("t2")]}))
    net.pump(lambda: net.counter("resubmitted") == 1)
    replies = [net.recv(prod) for _ in range(2)]
    result = next(m for m in replies if m.cmd is Cmd.RESULT)
    assert result.header["decisions"] == [decisions[1]]


def test_an_index_that_does_not_fit_takes_the_header_path(net: Net) -> None:
    prod, sink = net.producer(), net.sink()
    net.submit(prod, task("t1"))
    worker = net.worker(["p"], credit=10)
    net.expect(worker, Cmd.DISPATCH)
    # the index names attempt 2 (stale), the header attempt 1: the header decides
    _decide_indexed(sink, [decision("t1", version=3)], pack_commit_index(["t1"], [2], 3))
    assert net.expect(prod, Cmd.RESULT)["decisions"][0]["task"] == "t1"
    assert net.broker.status()["tasks"] == 0
    assert net.counter("decided.committed") == 1


def test_ledger_builds_the_same_decisions_as_the_header() -> None:
    ledger = SubmitLedger(5.0)
    ledger.sent([task("a", "p"), task("b", "q")])
    ledger.accepted(["a"])
    wire = [decision("a", version=8, process="p"), decision("b", attempt=2, version=9,
                                                            process="q")]
    frames = encode_raw(Cmd.RESULT, msgpack.packb({"decisions": wire}),
                        pack_commit_index(["a", "b"], [1, 2], 8))
    got = ledger.commits(frames)
    assert got == [Decision.from_wire(d) for d in wire]
    assert got is not None and got[0].status is Status.COMMITTED
    assert not ledger.unacked and not ledger.undecided
    ledger.sent([task("c")])
    unknown = encode_raw(Cmd.RESULT, b"", pack_commit_index(["c", "zz"], [1, 1], 1))
    assert ledger.commits(unknown) is None and "c" in ledger.unacked  # nothing settled
    assert ledger.commits(encode(Cmd.RESULT, {"decisions": []})) is None


def test_no_accepted_for_tasks_decided_before_their_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone task is usually decided before the fsync of its intake: its RESULT ended it
    for the producer, so no ACCEPTED follows (one wake-up less for the producer)."""
    from tests.test_broker_journal import held_fsync

    gate, started = held_fsync(monkeypatch)
    n = Net(tmp_path, journal_dir=str(tmp_path / "journal"))
    try:
        prod, sink = n.producer(), n.sink()
        worker = n.worker(["p"], credit=5)
        prod.send_multipart(encode(Cmd.SUBMIT, {"tasks": [task("t1")]}))
        n.expect(worker, Cmd.DISPATCH)
        assert started.wait(5)
        n.decide(sink, decision("t1", version=1))
        assert n.expect(prod, Cmd.RESULT)["decisions"][0]["task"] == "t1"
        gate.set()
        n.pump(lambda: n.broker.status()["journal"]["fsyncs"] >= 1)
        for _ in range(20):
            n.broker.run_once(1)
        assert not prod.poll(0), "an ACCEPTED for a task already decided"
        prod.send_multipart(encode(Cmd.SUBMIT, {"tasks": [task("t2")]}))  # undecided: sent
        assert n.expect(prod, Cmd.ACCEPTED)["ids"] == ["t2"]
    finally:
        n.close()


def test_worker_takes_versions_from_the_event_index_only_when_no_key_of_its_matters(
        tmp_path: Path) -> None:
    """A COMMIT whose event index names none of the keys the worker's processes declare
    only advances its replica; one naming such a key, one that does not follow the
    replica's version, or one without an index is decoded (gaps still resync)."""
    from pipeline.api import process, spec_of
    from pipeline.config import Endpoints, WorkerConfig
    from pipeline.worker import Worker

    @process(inputs=["mine"], outputs=["mine"])
    def p(ctx: Any) -> dict[str, Any]:
        return {}

    class NoHeavy:  # this test runs no task: no heavy zone (and no segment) is needed
        def seal(self) -> None:
            pass

    ctx = zmq.Context()
    w = Worker(WorkerConfig(endpoints=Endpoints.embedded(str(tmp_path)), app="x"),
               specs={"p": spec_of(p)}, heavy=NoHeavy(), ctx=ctx)  # type: ignore[arg-type,dict-item]
    try:
        w.replica.load_snapshot({"version": 4, "state": {"mine": [4, 1], "other": [3, 0]}})

        def commit(first: int, writes: list[dict[str, Any]], keys: list[str] | None) -> None:
            events = [{"version": first + i, "task": f"t{first + i}", "process": "q",
                       "writes": wr, "signals": []} for i, wr in enumerate(writes)]
            frames = encode(Cmd.COMMIT, {"events": events})
            if keys is not None:
                frames.append(pack_event_index(first, len(events), keys))
            w._handle(w.events, frames)

        commit(5, [{"other": 1}, {"other": 2}], ["other"])  # skipped: versions only
        assert (w.replica.version, w.replica.get("other")) == (6, 0)
        commit(7, [{"mine": 9}], ["mine", "other"])  # a key of ours: decoded
        assert (w.replica.version, w.replica.get("mine"), w.replica.key_version("mine")) \
            == (7, 9, 7)
        commit(8, [{"mine": 10}], None)  # no index: decoded
        assert (w.replica.version, w.replica.get("mine")) == (8, 10)
        commit(7, [{"mine": 11}], [])  # old versions: decoded and skipped
        assert (w.replica.version, w.replica.get("mine")) == (8, 10)
        commit(10, [{"other": 3}], ["other"])  # a gap: decoded, and a resync asked for
        assert not w.replica.synced and w.counters["resyncs"] == 1
    finally:
        w.close()
        ctx.term()
