"""The broker's operator commands on the control socket: the STATUS figures, and DLQ_LIST,
DLQ_REQUEUE and DLQ_PURGE on the dead-letter queue (`pipeline status`, `pipeline dlq`; the
frames are in docs/PROTOCOL.md). Each DLQ command answers DLQ {items, affected, total}.

None of them is on a task's path. `OperatorCommands` holds the broker's own tables (the same
objects, never copies) and three callables for what it does to the broker: `send` (an answer
now), `answers` (an answer held until this pass's journal write is durable, so a DLQ change
is on disk when its answer arrives) and `enqueue` (a requeued dead letter queued again).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from brokers.answers import HeldAnswers
from brokers.config import BrokerConfig
from brokers.dlq import MAX_LIST, DeadLetters
from brokers.journal import TaskJournal
from brokers.state import Entry, RecentDecisions, TaskQueues, Worker, wall_ms
from brokers.validate import dlq_ids
from pipeline.protocol import Cmd, Message, encode

Send = Callable[[zmq.Socket[Any], bytes, list[Any]], object]
Enqueue = Callable[..., None]


class OperatorCommands:
    """The handlers of STATUS_REQ and the DLQ commands, and the status figures."""

    def __init__(self, config: BrokerConfig, *, entries: dict[str, Entry],
                 queues: TaskQueues, workers: dict[bytes, Worker], recent: RecentDecisions,
                 dlq: DeadLetters, journal: TaskJournal | None, counters: Counter[str],
                 control: zmq.Socket[Any], send: Send, answers: HeldAnswers,
                 enqueue: Enqueue) -> None:
        self.config = config
        self._entries = entries
        self._queues = queues
        self._workers = workers
        self._recent = recent
        self._dlq = dlq
        self._journal = journal
        self.counters = counters
        self._control = control
        self._send = send
        self._answers = answers
        self._enqueue = enqueue

    # -- STATUS -------------------------------------------------------------------------
    def status(self, sink: bool) -> dict[str, Any]:
        """The figures STATUS reports; `sink`: whether a sink said HELLO."""
        q = self._queues
        return {
            "role": "broker",
            "queues": q.counts(),
            "parked": q.parked(),
            "delayed": q.delayed(),
            "in_flight": sum(len(w.inflight) for w in self._workers.values()),
            "tasks": len(self._entries),
            "workers": [w.status() for w in self._workers.values()],
            "counters": dict(self.counters),
            "blocked": [{"process": p, "reason": r} for p, r in q.blocked.items()],
            "recent_decided": len(self._recent),
            "dead_letters": len(self._dlq),
            "dead_by_process": self._dlq.by_process(),
            "sink": sink,
            "journal": None if self._journal is None else {
                **self._journal.counters, "file_records": self._journal.records},
        }

    # -- the dead-letter queue ----------------------------------------------------------
    def on_dlq_list(self, identity: bytes, msg: Message) -> None:
        ids = dlq_ids(msg.header, allow_none=True)
        items = self._dlq.select(ids)
        self._dlq_reply(identity, items[:MAX_LIST], [d["id"] for d in items])

    def on_dlq_requeue(self, identity: bytes, msg: Message) -> None:
        ids = dlq_ids(msg.header, allow_none=False)
        done = self._dlq.remove(ids if ids is not None else list(self._dlq.items))
        room = self.config.max_queue - len(self._entries)
        for dead in done:
            self._requeue_dead(dead, room > 0)
            room -= 1
        self.counters["dlq.requeued"] += len(done)
        self._dlq_reply(identity, done[:MAX_LIST], [d["id"] for d in done])

    def _requeue_dead(self, dead: dict[str, Any], fits: bool) -> None:
        tid = dead["id"]
        if tid in self._entries or not fits:
            self.counters["dlq.requeue-skipped"] += 1
            self._dlq.add(dead)
            return
        # A task the sink refused as expired runs afresh: requeueing it is the operator's
        # word that it did not commit (see docs/RELIABILITY.md). Others keep their stamp.
        born = wall_ms() if dead.get("rule") == "dedup_horizon" else None
        if self._journal is not None:
            self._journal.requeued(tid, born)
        self._recent.pop(tid)
        task = dict(dead["task"])
        if born is None and type(dead.get("born_ms")) is int:
            task["born_ms"] = dead["born_ms"]
        self._enqueue(task, b"", journal=False, attempt=dead["attempt"] + 1, born=born)

    def on_dlq_purge(self, identity: bytes, msg: Message) -> None:
        ids = dlq_ids(msg.header, allow_none=False)
        done = self._dlq.remove(ids if ids is not None else list(self._dlq.items))
        if self._journal is not None:
            for dead in done:
                self._journal.purged(dead["id"])
        self.counters["dlq.purged"] += len(done)
        self._dlq_reply(identity, [], [d["id"] for d in done])

    def _dlq_reply(self, identity: bytes, items: list[dict[str, Any]],
                   affected: list[str]) -> None:
        """Answer after this pass's journal write: the change is durable when it arrives."""
        frames = encode(Cmd.DLQ, {"items": items, "affected": affected, "total": len(self._dlq)})
        if self._journal is None:
            self._send(self._control, identity, frames)
        else:
            self._answers.add(self._control, identity, frames)
