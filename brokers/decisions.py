"""The sink's side of the broker: HELLO, DECISION, BLOCKED and UNBLOCKED on the control
socket, and tasks leaving the broker.

A DECISION with a commit index (every decision in it a plain commit, docs/PROTOCOL.md) is
finished from the index alone and sent on whole as its producer's RESULT, its header never
decoded (`_on_commits`). Any other takes the general path (`_on_decision`): each valid
decision is applied; the final ones finish their tasks together (the recent table, one
RESULT per producer per pass, one journal record for the whole header when it can), a
conflict comes back with attempt + 1 after a jittered back-off, a blocked process is parked,
an expired task is dead-lettered. Attempts lost elsewhere (a worker, a lease, a sink
restart) are queued again here too; past the process's attempt limit a task goes to the
dead-letter queue as a broker-made `failed` decision.

`DecisionPath` is one mixin of `Broker` (brokers/broker.py), not an object of its own: these
handlers are the hot path of every task, which shares the broker's tables and flags, and a
call through another object per task would cost. What it uses of the broker is declared on
the class below.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import TYPE_CHECKING, Any

import zmq

from brokers.config import BrokerConfig
from brokers.dlq import DeadLetters, letter
from brokers.journal import RAW_RECORD_MAX, TaskJournal
from brokers.state import Entry, RecentDecisions, TaskQueues, Worker
from brokers.validate import FINAL, STATUSES, check_versions, decision_ok
from pipeline.protocol import Cmd, Message, commit_index, encode, encode_raw, error

log = logging.getLogger("brokers.broker")  # the broker's logger: its lines keep their name

DECIDED = {s: f"decided.{s}" for s in STATUSES}  # counter keys, built once


class DecisionPath:
    """The control socket's sink commands and the end of a task's stay (mixin of Broker)."""

    # The broker's state this mixin reads and writes (set by Broker.__init__).
    config: BrokerConfig
    counters: Counter[str]
    control: zmq.Socket[Any]
    frontend: zmq.Socket[Any]
    _entries: dict[str, Entry]
    _recent: RecentDecisions
    _queues: TaskQueues
    _workers: dict[bytes, Worker]
    _results: dict[bytes, list[dict[str, Any]]]
    _raw_results: list[tuple[bytes, list[Any]]]
    _dlq: DeadLetters
    _journal: TaskJournal | None
    _raw: bytes
    _rng: random.Random
    _sink: bytes | None
    _dirty: bool
    _now: float

    if TYPE_CHECKING:
        def _send(self, sock: zmq.Socket[Any], identity: bytes,
                  frames: list[Any]) -> str | None: ...

    # -- control: the sink --------------------------------------------------------------
    def _on_hello(self, identity: bytes, msg: Message) -> None:
        check_versions(msg.header.get("versions", [1]))
        role = msg.header["role"]
        if role == "sink":
            if self._sink is not None and self._sink != identity:
                self._sink_restarted()
            self._sink = identity
        log.info("control: hello from %s (%s)", role, identity.hex())

    def _sink_restarted(self) -> None:
        """A new sink lost the updates its predecessor had not decided: dispatch the tasks
        in flight again (the sink answers `duplicate` for those it had committed)."""
        entries: list[Entry] = []
        for w in self._workers.values():
            entries.extend(self._entries[t] for t in w.inflight if t in self._entries)
            w.inflight.clear()
        self.counters["sink.restarted"] += 1
        log.warning("broker: the sink restarted; %d tasks in flight go back to the queue",
                    len(entries))
        for e in entries:
            e.worker = None
            e.next_attempt()
        self._queues.push_front(entries)
        self._dirty = True

    def _on_decision(self, identity: bytes, msg: Message) -> None:
        """The general path (any decision; `_on_commits` takes plain commits first): act on
        each valid decision, then finish the final ones together."""
        bad = 0
        decisions, done, finals = msg.header["decisions"], [], []
        for decision in decisions:
            if decision_ok(decision):
                entry = self._apply(decision)
                if entry is not None:
                    done.append(decision)
                    finals.append(entry)
            else:
                bad += 1
        if finals:
            whole = len(done) == len(decisions)
            self._finish(finals, done)
            if self._journal is not None:
                self._journal.decided_batch(self._raw, done, whole)
            producers = {e.producer for e in finals}
            if whole and len(producers) == 1:
                self._forward_raw(producers.pop(), len(done), msg.blobs)
        if bad:  # the good ones were applied; the sender hears about the rest
            self.counters["control.decision-invalid"] += bad
            self.counters["malformed"] += bad
            self._send(self.control, identity,
                       error("malformed", f"{bad} invalid decisions ignored"))

    def _forward_raw(self, producer: bytes, n: int, index: list[Any]) -> None:
        """Every decision of this DECISION went to one producer, and nothing else did in
        this pass: its RESULT is the DECISION header as received (with its commit index)."""
        if producer and len(self._results.get(producer, ())) == n \
                and len(self._raw) <= RAW_RECORD_MAX:
            del self._results[producer]
            self._raw_results.append((producer, [self._raw, *index[:1]]))

    def _on_commits(self, raw: bytes, index: bytes) -> bool:
        """A DECISION with a commit index (every decision a plain commit, see
        docs/PROTOCOL.md): finish its tasks from the index alone and forward the message as
        the producer's RESULT. False, with nothing changed, when the general path must take
        it (a bad index, an unknown, stale or repeated task, several producers, a producer
        with other results in this pass, a header too big to journal whole)."""
        parsed = commit_index(index)
        if parsed is None or len(raw) > RAW_RECORD_MAX:
            return False
        ids, attempts, version = parsed
        entries, batch = self._entries, []
        producer = None
        for tid, attempt in zip(ids, attempts, strict=True):
            e = entries.get(tid)
            if e is None or e.worker is None or e.task["attempt"] != attempt:
                return False
            if producer is None:
                producer = e.producer
            elif e.producer != producer:
                return False
            batch.append(e)
        if not producer or producer in self._results or len(set(ids)) != len(ids):
            return False
        self._finish(batch, None, version)
        if self._raw_results:  # after the RESULTs queued before it
            self._raw_results.append((producer, [raw, index]))
        else:  # at once: nothing else of this pass goes to that producer before it
            self._send_raw_result(producer, [raw, index])
        if self._journal is not None:
            self._journal.decided_raw(raw, len(batch))  # as received: no re-encode
        return True

    def _apply(self, d: dict[str, Any]) -> Entry | None:
        """Act on one decision; the task's entry when it was final (the caller finishes
        it), else None. Either way the task is no longer in flight."""
        entry = self._entries.get(d["task"])
        if entry is None:
            self.counters["decision.unknown"] += 1
            return None
        # A duplicate carries the original attempt's number: it is final whatever attempt
        # is in flight now (after a sink or broker restart the task was dispatched again).
        if entry.worker is None or (d["attempt"] != entry.task["attempt"]
                                    and d["status"] != "duplicate"):
            self.counters["decision.stale"] += 1
            return None
        self._leave_workers((entry,))  # a second decision of it in this message is stale
        status = d["status"]
        if status in FINAL:
            return entry
        self.counters[DECIDED[status]] += 1
        if status == "conflict":
            self._conflict(entry, d)
        elif status == "expired":
            # The sink can no longer tell whether an earlier attempt committed: it did not
            # commit this one, and an operator decides (`pipeline dlq requeue` runs it again).
            self._dead_letter(entry, f"expired: {d.get('reason', '')}", "dedup_horizon")
        else:
            self._park(entry, d)
        return None

    def _conflict(self, entry: Entry, d: dict[str, Any]) -> None:
        # A conflict is optimistic concurrency at work, not a fault of the task: each one
        # means another update committed. Under contention on one key a task may lose many
        # times in a row, so conflicts have their own, much larger budget.
        entry.conflicts += 1
        if entry.conflicts >= self.config.max_conflicts:
            self._dead_letter(entry, f"conflict: {d.get('reason', '')}", "max_conflicts")
            return
        entry.next_attempt()
        version = d.get("version", 0)
        entry.task["after"] = version if isinstance(version, int) and version > 0 else 0
        delay_ms = d.get("retry_after_ms")
        if not isinstance(delay_ms, int) or delay_ms < 0:
            delay_ms = self.config.backoff_ms(entry.conflicts)
        self._retry_later(entry, min(delay_ms, self.config.conflict_max_backoff_ms))

    def _park(self, entry: Entry, d: dict[str, Any]) -> None:
        entry.next_attempt()
        self._queues.push_front([entry])
        if d.get("blocked", True) is not False:
            reason = d.get("reason")
            self._block(entry.process, reason if isinstance(reason, str) else "blocked")
        self._dirty = True

    def _on_blocked(self, identity: bytes, msg: Message) -> None:
        self._block(msg.header["process"], msg.header["reason"])

    def _block(self, process: str, reason: str) -> None:
        if self._queues.block(process, reason):
            self.counters["blocked"] += 1
            log.warning("process %s blocked: %s", process, reason)

    def _on_unblocked(self, identity: bytes, msg: Message) -> None:
        process = msg.header["process"]
        if self._queues.unblock(process):
            self.counters["unblocked"] += 1
            log.info("process %s unblocked", process)
            self._dirty = True
        else:
            self.counters["control.unblock-not-blocked"] += 1

    # -- RESULTs ------------------------------------------------------------------------
    def _flush_results(self) -> None:
        results, self._results = self._results, {}
        results.pop(b"", None)  # restored from the journal: the producer resubmits to hear
        for producer, decisions in results.items():
            if self._send(self.frontend, producer, encode(Cmd.RESULT, {"decisions": decisions})):
                self.counters["result.undelivered"] += len(decisions)
        raw, self._raw_results = self._raw_results, []
        for producer, frames in raw:
            self._send_raw_result(producer, frames)

    def _send_raw_result(self, producer: bytes, frames: list[Any]) -> None:
        """A DECISION header (and its commit index) sent on as a RESULT: it is a valid one."""
        if self._send(self.frontend, producer, encode_raw(Cmd.RESULT, *frames)):
            self.counters["result.undelivered-batches"] += 1

    # -- tasks leaving the broker -------------------------------------------------------
    def _finish(self, batch: list[Entry], decisions: list[dict[str, Any]] | None = None,
                version: int = 0) -> None:
        """These tasks were decided for good: they leave their workers (if still with one)
        and the broker, and their decisions go to the recent table and, one RESULT per
        producer, to their producers. `decisions` None: plain commits, versions `version`,
        `version + 1`, ... (a commit index), whose RESULT the caller forwards whole."""
        self._leave_workers(batch, forget=True)
        if decisions is None:
            self._recent.add_commits(batch, version)
            self.counters["decided.committed"] += len(batch)
            return
        recent, results, counters = self._recent, self._results, self.counters
        for e, d in zip(batch, decisions, strict=True):
            recent.add(e.id, d)
            counters[DECIDED[d["status"]]] += 1
            if e.producer:  # b"": restored from the journal, kept in recent for resubmits
                mine = results.get(e.producer)
                if mine is None:
                    results[e.producer] = [d]
                else:
                    mine.append(d)

    def _leave_workers(self, batch: list[Entry] | tuple[Entry, ...], *,
                       forget: bool = False) -> None:
        """Tasks no longer in flight: out of their workers' in-flight sets; with `forget`,
        out of the broker's table too."""
        entries, workers, wid, inflight = self._entries, self._workers, None, None
        bound = self.config.max_worker_credit
        for e in batch:
            if e.worker is not None:
                if e.worker != wid:  # one lookup per run of tasks of one worker
                    wid = e.worker
                    w = workers.get(wid)
                    inflight = None if w is None else w.inflight
                    if inflight is not None and len(inflight) >= bound:
                        self._dirty = True  # it was held at the bound: dispatch again
                if inflight is not None:
                    inflight.pop(e.id, None)
                e.worker = None
            if forget:
                del entries[e.id]

    def _requeue(self, entries: list[Entry], why: str) -> None:
        """Queue undecided tasks again with attempt + 1: at once after their first failure,
        after a jittered exponential back-off later (or dead-letter them)."""
        again = []
        for e in entries:
            e.worker = None
            e.failures += 1
            if e.failures >= self.config.attempts_for(e.process):
                self._dead_letter(e, f"{why} on attempt {e.attempt}")
                continue
            e.next_attempt()
            if self._journal is not None:
                self._journal.failed(e.id, e.failures, e.attempt)
            if e.failures == 1:
                again.append(e)
            else:
                self._retry_later(e, self.config.backoff_ms(e.failures - 1))
        self._queues.push_front(again)
        self.counters["redelivered"] += len(entries)
        self._dirty = True

    def _retry_later(self, entry: Entry, delay_ms: int) -> None:
        delay = self.config.jittered_ms(delay_ms, self._rng.random())
        if delay <= 0:
            self._queues.push_front([entry])
            self._dirty = True
        else:
            self._queues.delay(entry, self._now + delay / 1000)

    def _dead_letter(self, entry: Entry, reason: str, rule: str = "max_attempts") -> None:
        why = f"dead letter after {entry.failures} attempts: {reason}"
        decision = {"task": entry.id, "status": "failed", "process": entry.process,
                    "attempt": entry.attempt, "version": 0, "reason": why,
                    "rule": rule, "level": None, "retry_after_ms": 0,
                    "error": None, "blocked": False}
        dead = letter(entry.task, entry.failures, why, rule)
        self._dlq.add(dead)
        if self._journal is not None:
            self._journal.dead_lettered(dead["task"], dead)
        self.counters["dead_lettered"] += 1
        log.warning("task %s dead-lettered: %s", entry.id, why,
                    extra={"task": entry.id, "proc": entry.process})
        self._finish([entry], [decision])
