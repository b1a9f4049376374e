"""The broker: three ROUTER sockets, one poller, one small handler per command.

    frontend  producers (DEALER): SUBMIT -> ACCEPTED / REJECTED, later RESULT
    backend   workers (DEALER):   READY, HEARTBEAT, DISCONNECT <-> DISPATCH, HEARTBEAT
    control   sink and admins:    HELLO, DECISION, BLOCKED, UNBLOCKED, STATUS_REQ -> STATUS

Each `run_once` pass polls, drains what is ready (control first: decisions free work), does
housekeeping (due retries, worker liveness and task leases, credit-based dispatch, RESULT
batches, journal compaction), then writes the task journal (one write for the pass) and
asks for its fsync, which runs in the journal's own thread. An ACCEPTED waits for the fsync
that covers its tasks and for `accepted_delay_ms`, and is left out if its tasks were all
decided meanwhile (brokers/answers.py); the thread wakes the poller through a pipe only when
an answer waits on it. Tasks are dispatched at once, before they are durable: a producer
that gets no ACCEPTED resends under the same id, and the sink de-duplicates by id.
A task stays with the broker from SUBMIT until the sink decides it; conflicts come back with
attempt + 1 after a jittered back-off, blocked processes are parked, lost workers' tasks are
queued again; past the process's attempt limit a task goes to the dead-letter queue.
Every message is validated; a bad one is counted by reason, answered with ERROR, and dropped.

This module holds the loop, the producers' side (SUBMIT) and the workers' side (READY,
HEARTBEAT, DISCONNECT, liveness, leases, eviction, dispatch). The sink's side (HELLO,
DECISION, BLOCKED, UNBLOCKED), RESULTs and tasks leaving the broker (finish, retry, dead
letters) are brokers/decisions.py, a mixin of `Broker`; STATUS and the DLQ commands are
brokers/operator.py.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from brokers.answers import Accepted, HeldAnswers
from brokers.config import BrokerConfig
from brokers.decisions import DecisionPath
from brokers.dlq import DeadLetters, stored_task
from brokers.journal import Replayed, TaskJournal
from brokers.operator import OperatorCommands
from brokers.state import Entry, RecentDecisions, TaskQueues, Worker, wall_ms
from brokers.validate import (
    MAX_ID_CHARS,
    Refused,
    check_versions,
    rejected,
    str_list,
    task_id,
    task_problem,
)
from pipeline.errors import DecodeError
from pipeline.protocol import VERSION, Cmd, Message, decode, encode, error
from pipeline.sockets import MORE, NOBLOCK, recv_frames, send_frames

log = logging.getLogger(__name__)

MAX_PROCESSES = 1024
CREDIT_LIMIT = 1 << 31  # the most credit a READY may carry, and a worker may hold
STOP_CHECK_MS = 100
_DECISION_PREFIX = bytes((VERSION, Cmd.DECISION))
_MORE = MORE | NOBLOCK  # the identity frame's send flags, as a plain int

Handler = Callable[[bytes, Message], None]


class Broker(DecisionPath):
    """The broker loop. Step it with `run_once` (tests) or loop with `run` (the CLI)."""

    def __init__(self, config: BrokerConfig, ctx: zmq.Context[Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._own_ctx = ctx is None
        self.ctx: zmq.Context[Any] = zmq.Context() if ctx is None else ctx
        self._clock = clock
        self.frontend = self._socket()
        self.backend = self._socket()
        self.control = self._socket()
        self._poller = zmq.Poller()
        for sock in (self.frontend, self.backend, self.control):
            self._poller.register(sock, zmq.POLLIN)
        self._entries: dict[str, Entry] = {}
        self._recent = RecentDecisions(config.recent_decided)
        self._queues = TaskQueues()
        self._workers: dict[bytes, Worker] = {}
        self._results: dict[bytes, list[dict[str, Any]]] = {}
        # whole DECISION headers for one producer, sent on as its RESULT (no re-encode)
        self._raw_results: list[tuple[bytes, list[Any]]] = []
        self._dlq = DeadLetters()
        # answers that wait for the fsync of this pass's journal write (and ACCEPTEDs)
        self._answers = HeldAnswers(self._send, config.accepted_delay_ms)
        self._raw = b""  # frame 1 (the header bytes) of the message being handled
        self._rng = random.Random()
        self.counters: Counter[str] = Counter()
        self._sink: bytes | None = None
        self._dirty = False
        self._rr = 0
        self._now = clock()
        self._next_tick = self._now
        self._bound = False
        self._closed = False
        self._journal: TaskJournal | None = None
        if config.journal_dir is not None:
            self._journal = TaskJournal(
                config.journal_dir, fsync=config.journal_fsync,
                compact_min_records=config.journal_compact_min_records,
                compact_ratio=config.journal_compact_ratio)
            self._restore(self._journal.replay())
        self._wake_fd = None if self._journal is None else self._journal.wake_fd
        if self._wake_fd is not None:
            self._poller.register(self._wake_fd, zmq.POLLIN)
        self._operator = OperatorCommands(
            config, entries=self._entries, queues=self._queues, workers=self._workers,
            recent=self._recent, dlq=self._dlq, journal=self._journal, counters=self.counters,
            control=self.control, send=self._send, answers=self._answers,
            enqueue=self._enqueue)
        op = self._operator
        self._tables: dict[zmq.Socket[Any], tuple[str, dict[Cmd, Handler]]] = {
            self.control: ("control", {
                Cmd.HELLO: self._on_hello, Cmd.DECISION: self._on_decision,
                Cmd.BLOCKED: self._on_blocked, Cmd.UNBLOCKED: self._on_unblocked,
                Cmd.STATUS_REQ: self._on_status_req, Cmd.HEARTBEAT: self._on_nothing,
                Cmd.DLQ_LIST: op.on_dlq_list, Cmd.DLQ_REQUEUE: op.on_dlq_requeue,
                Cmd.DLQ_PURGE: op.on_dlq_purge, Cmd.ERROR: self._on_peer_error}),
            self.backend: ("backend", {
                Cmd.READY: self._on_ready, Cmd.HEARTBEAT: self._on_heartbeat,
                Cmd.DISCONNECT: self._on_disconnect, Cmd.ERROR: self._on_peer_error}),
            self.frontend: ("frontend", {
                Cmd.SUBMIT: self._on_submit, Cmd.HEARTBEAT: self._on_nothing,
                Cmd.DISCONNECT: self._on_nothing, Cmd.ERROR: self._on_peer_error}),
        }

    def _restore(self, state: Replayed) -> None:
        """Queue the journal's undecided tasks again; restore dead letters and decisions."""
        for tid, task in state.pending.items():
            failures, attempt = state.failures.get(tid, (0, 1))
            self._enqueue(task, b"", journal=False, attempt=attempt)
            entry = self._entries[tid]
            entry.failures = failures  # lost attempts count across restarts
            entry.fresh = tid not in state.started  # never ran: stamped at its dispatch
        for dead in state.dead.values():
            self._dlq.add(dead)
        for tid, decision in list(state.decided.items())[-self._recent.limit:]:
            self._recent.add(tid, decision)
        self.counters["journal.restored"] = len(state.pending)
        if state.records:
            log.info("broker: journal replayed (%d records): %d tasks queued again, "
                     "%d dead letters", state.records, len(state.pending), len(state.dead))

    # -- life cycle ---------------------------------------------------------------------
    def _socket(self) -> zmq.Socket[Any]:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, self.config.linger_ms)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, self.config.hwm_messages)
        sock.setsockopt(zmq.RCVHWM, self.config.hwm_messages)
        return sock

    def bind(self) -> dict[str, str]:
        """Bind the three sockets; return the endpoints actually bound (tcp port 0 works)."""
        cfg = self.config
        for sock, endpoint in ((self.frontend, cfg.frontend), (self.backend, cfg.backend),
                               (self.control, cfg.control)):
            sock.bind(endpoint)
        self._bound = True
        log.info("broker bound frontend=%s backend=%s control=%s",
                 cfg.frontend, cfg.backend, cfg.control)
        return self.endpoints()

    def endpoints(self) -> dict[str, str]:
        return {name: sock.getsockopt_string(zmq.LAST_ENDPOINT) for name, sock in
                (("frontend", self.frontend), ("backend", self.backend),
                 ("control", self.control))}

    def close(self) -> None:
        """Close the sockets with the configured linger; end the context if it is ours."""
        if self._closed:
            return
        self._closed = True
        self._hand_off()
        if self._journal is not None:
            self._journal.close()  # everything written is durable now
        self._answers.release(self._durable(), self._now, self._entries, force=True)
        for sock in (self.frontend, self.backend, self.control):
            sock.close(linger=self.config.linger_ms)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop -----------------------------------------------------------------------
    def run(self, ready: Callable[[], None] | None = None,
            stop: threading.Event | None = None,
            on_pass: Callable[[], None] | None = None) -> None:
        """Bind if needed, call `ready`, then loop until `stop` is set; `on_pass` runs on
        the broker's own thread after every pass (metrics)."""
        if not self._bound:
            self.bind()
        if ready is not None:
            ready()
        cap = STOP_CHECK_MS if stop is not None else self.config.heartbeat_interval_ms
        while stop is None or not stop.is_set():
            self.run_once(min(self.next_timeout_ms(), cap))
            if on_pass is not None:
                on_pass()

    def run_once(self, timeout_ms: int = 0) -> int:
        """One pass: poll up to timeout_ms, handle what is ready, housekeeping. Messages read."""
        ready = dict(self._poller.poll(timeout_ms))
        self._now = self._clock()
        handled = 0
        for sock in (self.control, self.backend, self.frontend):
            if ready.get(sock):
                handled += self._drain(sock)
        if self._wake_fd is not None and ready.get(self._wake_fd):
            self._journal.drain_wakeups()  # type: ignore[union-attr]
        self._housekeeping()  # dispatch first: a lone task does not wait for the disk
        self._hand_off()
        return handled

    def _hand_off(self) -> None:
        """End of a pass: group commit (one write, then the fsync request: after this
        pass's messages left); send the held answers that may leave."""
        j = self._journal
        if j is not None:
            j.commit()
        if self._answers.end_pass(0 if j is None else j.wanted, self._now):
            self._release()

    def _release(self) -> None:
        j, answers = self._journal, self._answers
        while True:
            need = answers.release(0 if j is None else j.durable, self._now, self._entries)
            if need is None or j is None or not j.wake_when(need):
                return  # the fsync thread wakes the poller once `need` is durable

    def _durable(self) -> int:
        return 0 if self._journal is None else self._journal.durable

    def next_timeout_ms(self) -> int:
        """Poll timeout: min(heartbeat, time to the next deadline), never negative."""
        deadline = self._next_tick
        due = self._queues.next_due()
        if due is not None:
            deadline = min(deadline, due)
        due = self._answers.next_due
        if due is not None:
            deadline = min(deadline, due)
        left_ms = math.ceil((deadline - self._clock()) * 1000)
        return max(0, min(self.config.heartbeat_interval_ms, left_ms))

    def _drain(self, sock: zmq.Socket[Any]) -> int:
        where, table = self._tables[sock]
        is_backend = sock is self.backend
        for n in range(self.config.max_recv_per_pass):
            try:
                frames = [f.bytes for f in recv_frames(sock)]
            except zmq.Again:
                return n
            if is_backend:
                self._touch(frames[0])
            self._handle(sock, where, table, frames)
        return self.config.max_recv_per_pass

    def _handle(self, sock: zmq.Socket[Any], where: str, table: dict[Cmd, Handler],
                frames: list[bytes]) -> None:
        identity = frames[0]
        if len(frames) == 4 and frames[1] == _DECISION_PREFIX and sock is self.control \
                and self._on_commits(frames[2], frames[3]):
            return  # plain commits, taken from the commit index: the header is not decoded
        try:
            msg = decode(frames[1:])
            self._raw = frames[2]
            handler = table.get(msg.cmd)
            if handler is None:
                raise DecodeError(f"unexpected-command:{msg.cmd.name}")
            handler(identity, msg)
        except DecodeError as exc:
            self._malformed(sock, where, identity, exc)
        except Exception:  # a bug must not let one message stop the broker
            self.counters["internal-error"] += 1
            log.exception("%s: internal error handling a message from %s", where, identity.hex())
            self._send(sock, identity, error("internal", "the broker failed on this message"))

    def _malformed(self, sock: zmq.Socket[Any], where: str, identity: bytes,
                   exc: DecodeError) -> None:
        key = f"{where}.{exc.reason}"
        self.counters[key] += 1
        self.counters["malformed"] += 1
        level = logging.WARNING if self.counters[key] == 1 else logging.DEBUG
        log.log(level, "%s: dropped a message from %s: %s", where, identity.hex(), exc.reason)
        code = getattr(exc, "code", "version" if exc.reason == "version" else "malformed")
        reply = error(code, getattr(exc, "message", exc.reason))
        self._send(sock, identity, reply)

    def _send(self, sock: zmq.Socket[Any], identity: bytes, frames: list[Any]) -> str | None:
        """Send without blocking; None on success, else "again" or "unroutable" (counted).
        A ROUTER refuses a message at its first frame (unknown peer, full pipe), never
        midway."""
        try:
            sock.send(identity, _MORE)
            send_frames(sock, frames, NOBLOCK)
            return None
        except zmq.Again:
            why = "again"
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            why = "unroutable"
        self.counters[f"send.{why}"] += 1
        return why

    # -- housekeeping -------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = self._now
        if self._queues.release_due(now):
            self._dirty = True
        if now >= self._next_tick:
            self._liveness(now)
        if self._dirty:
            self._dispatch()
        if self._results or self._raw_results:
            self._flush_results()

    def _liveness(self, now: float) -> None:
        """Evict silent workers, send HEARTBEAT to idle ones (every half interval)."""
        interval = self.config.heartbeat_interval_ms / 1000
        self._next_tick = now + interval / 2
        beat = encode(Cmd.HEARTBEAT)
        for w in list(self._workers.values()):
            if now >= w.expires_at:
                self._evict(w, "expired")
            elif now >= w.beat_at:
                w.beat_at = now + interval
                if self._send(self.backend, w.identity, beat) == "unroutable":
                    self._evict(w, "unroutable")
        self._expire_leases(now)
        self._queues.prune()
        self._maybe_compact()

    def _expire_leases(self, now: float) -> None:
        """Dispatch again tasks in flight longer than the lease (their update was lost)."""
        lease = self.config.task_lease_ms / 1000
        if not lease:
            return
        expired: list[Entry] = []
        for w in self._workers.values():
            for tid in list(w.inflight):  # dispatch order: stop at the first one still fine
                e = self._entries.get(tid)
                if e is not None and e.sent_at + lease > now:
                    break
                del w.inflight[tid]
                if e is not None:
                    expired.append(e)
        if expired:
            self.counters["lease.expired"] += len(expired)
            self._requeue(expired, "lease expired")

    def _maybe_compact(self) -> None:
        j = self._journal
        if j is None or not j.should_compact(len(self._entries) + len(self._dlq)):
            return
        j.compact([(stored_task(e.task), e.failures, e.attempt, not e.fresh)
                   for e in self._entries.values()],
                  [(d["task"], d) for d in self._dlq.items.values()])

    def _touch(self, identity: bytes) -> None:
        w = self._workers.get(identity)
        if w is not None:
            w.expires_at = self._now + self.config.expiry_ms / 1000

    # -- dispatch -----------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Give queued tasks to workers with credit: one batch per worker per round."""
        self._dirty = False
        if not self._queues.has_work():
            return
        ready = [w for w in self._workers.values() if w.credit > 0]
        if not ready:
            return
        self._rr = (self._rr + 1) % len(ready)
        ready = ready[self._rr:] + ready[:self._rr]
        while ready:  # rounds: a worker stays while it has credit and got tasks
            still = []
            for w in ready:
                if w.credit > 0 and self._dispatch_one(w):
                    still.append(w)
            ready = still

    def _dispatch_one(self, w: Worker) -> bool:
        """Send one DISPATCH to w; True when w may get more in another round (a full
        batch: a short one emptied every queue it can take from)."""
        n = min(w.credit, self.config.max_dispatch_batch,
                self.config.max_worker_credit - len(w.inflight))
        if n <= 0:
            return False  # at the in-flight bound: more once some are decided
        batch = self._queues.take(w.processes, n)
        if not batch:
            return False
        born, fresh = 0, []
        for e in batch:
            if e.fresh:  # no attempt ran yet: the de-duplication window starts now
                e.task["born_ms"] = born = born or wall_ms()
                fresh.append(e.id)
        if fresh and self._journal is not None:
            # In the file before the task can run: after a crash, a task without this
            # record never ran, and only such a task may be stamped afresh. The fsync is
            # asked for at the end of the pass, once the DISPATCH has left.
            self._journal.dispatched(fresh, born)
            self._journal.write()
        why = self._send(self.backend, w.identity,
                         encode(Cmd.DISPATCH, {"tasks": [e.task for e in batch]}))
        if why is not None:
            self._queues.push_front(batch)  # never delivered: same attempt
            if why == "unroutable":
                self._evict(w, "unroutable")
            else:
                self._dirty = True  # its queue is full: try again next pass
            return False
        now, wid, inflight = self._now, w.identity, w.inflight
        for e in batch:
            e.worker = wid
            e.sent_at = now
            inflight[e.id] = None
            e.fresh = False
        w.credit -= len(batch)
        w.beat_at = now + self.config.heartbeat_interval_ms / 1000
        self.counters["dispatched"] += len(batch)
        return len(batch) == n

    # -- frontend: producers ------------------------------------------------------------
    def _on_submit(self, producer: bytes, msg: Message) -> None:
        if msg.blobs:
            raise Refused("unsupported", "submit-blobs", "SUBMIT blobs are not supported")
        accepted: list[str] = []
        answered: list[str] = []
        busy: list[str] = []
        invalid: dict[str, list[str]] = {}
        room = self.config.max_queue - len(self._entries)
        tasks, fresh, born = msg.header["tasks"], [], wall_ms()
        entries, recent, queues = self._entries, self._recent.ids(), self._queues
        queue, queued = None, ""  # the queue of the last process seen: most SUBMITs have one
        for task in tasks:
            # The usual task, inlined: well-formed (exact types, as task_problem's fast
            # path), new, and room for it. It is queued as _enqueue(task, born=born) does.
            if (type(task) is dict and type(tid := task.get("id")) is str
                    and type(process := task.get("process")) is str
                    and type(task.get("args")) is dict and task.get("heavy") is None
                    and 0 < len(tid) <= MAX_ID_CHARS and process and room > 0
                    and tid not in entries and tid not in recent):
                room -= 1
                task["born_ms"] = born
                task["attempt"] = 1
                task["after"] = 0
                entries[tid] = entry = Entry(task, producer, True)
                if process != queued:
                    queue, queued = queues.queue(process), process
                queue.append(entry)  # type: ignore[union-attr]
                fresh.append(task)
                accepted.append(tid)
                continue
            problem = task_problem(task)
            if problem is not None:
                invalid.setdefault(problem, []).append(task_id(task))
            elif self._known(task["id"], producer):
                accepted.append(task["id"])
                if task["id"] not in self._entries:
                    answered.append(task["id"])  # decided earlier: RESULT now, ACCEPTED too
            elif room <= 0:
                busy.append(task["id"])
            else:
                room -= 1
                fresh.append(task)
                self._enqueue(task, producer, journal=False, born=born)
                queues.size -= 1  # counted with the others below
                accepted.append(task["id"])
        if fresh:
            queues.size += len(fresh)  # those queued here (_enqueue counted its own)
            self._dirty = True
            if self._journal is not None:
                self._journal.submitted_batch(self._raw, fresh, len(fresh) == len(tasks), born)
        self._answer_submit(producer, accepted, busy, invalid, answered)

    def _answer_submit(self, producer: bytes, accepted: list[str], busy: list[str],
                       invalid: dict[str, list[str]], answered: list[str] | None = None
                       ) -> None:
        """Answer a SUBMIT: the ACCEPTED is held (brokers/answers.py), REJECTEDs leave at
        once (nothing of theirs needs the disk)."""
        self.counters["accepted"] += len(accepted)
        if accepted or not (busy or invalid):
            self._answers.accepted(Accepted(self.frontend, producer, accepted, answered or ()))
        if busy:
            self.counters["rejected.busy"] += len(busy)
            self._send(self.frontend, producer, rejected(
                busy, "busy", "the broker's queue is full", self.config.busy_retry_after_ms))
        for reason, ids in invalid.items():
            self.counters[f"rejected.{reason}"] += len(ids)
            self._send(self.frontend, producer,
                       rejected([i for i in ids if i], "invalid", reason, 0))

    def _known(self, task_id: str, producer: bytes) -> bool:
        """A resubmit: the latest submitter gets the result; a decided task's is sent again."""
        entry = self._entries.get(task_id)
        if entry is not None:
            entry.producer = producer
        else:
            decision = self._recent.get(task_id)
            if decision is None:
                return False
            self._results.setdefault(producer, []).append(decision)
        self.counters["resubmitted"] += 1
        return True

    def _enqueue(self, task: dict[str, Any], producer: bytes, *, journal: bool = True,
                 attempt: int = 1, born: int | None = None) -> None:
        """Queue a task. `born` (wall-clock ms) stamps a task that was never dispatched (a
        new submit, a requeue the operator asked to run afresh): its first dispatch stamps it
        again. Without it the task keeps the `born_ms` it has (restored from the journal,
        requeued as it was), or gets now if it has none."""
        if born is not None:
            task["born_ms"] = born
        elif type(task.get("born_ms")) is not int:
            task["born_ms"] = wall_ms()
        if journal and self._journal is not None:
            self._journal.submitted(task)  # packed now, before attempt and after are set
        task["attempt"] = attempt
        task["after"] = 0
        entry = Entry(task, producer, fresh=born is not None)
        self._entries[entry.id] = entry
        self._queues.push(entry)
        self._dirty = True

    # -- backend: workers ---------------------------------------------------------------
    def _on_ready(self, identity: bytes, msg: Message) -> None:
        credit = msg.header["credit"]
        if not 0 <= credit <= CREDIT_LIMIT:
            raise DecodeError("header-field:credit")
        w = self._workers.get(identity)
        if w is not None and "processes" in msg.header:  # it starts over: a fresh READY
            self._evict(w, "re-registered")
            w = None
        if w is None:
            w = self._register(identity, msg.header)
        # all of it (`_dispatch_one` bounds the tasks in flight), below a limit no honest
        # worker nears, so that STATUS can always encode it
        w.credit = min(w.credit + credit, CREDIT_LIMIT)
        if credit:
            self._dirty = True

    def _register(self, identity: bytes, header: dict[str, Any]) -> Worker:
        processes = header.get("processes")
        if not str_list(processes, MAX_PROCESSES):
            raise Refused("unknown-worker", "ready-without-processes",
                          "the first READY must list the worker's processes (non-empty strings)")
        check_versions(header.get("versions", [1]))
        name = header.get("name", identity.hex())
        if not isinstance(name, str):
            raise DecodeError("header-field:name")
        w = Worker(identity, name, frozenset(processes))
        w.expires_at = self._now + self.config.expiry_ms / 1000
        w.beat_at = self._now + self.config.heartbeat_interval_ms / 1000
        self._workers[identity] = w
        self.counters["worker.registered"] += 1
        log.info("worker %s registered for %s", name, ", ".join(sorted(w.processes)))
        return w

    def _on_heartbeat(self, identity: bytes, msg: Message) -> None:
        if identity not in self._workers:
            raise Refused("unknown-worker", "heartbeat-unknown-worker",
                          "unknown worker: register with READY {credit, processes} first")

    def _on_disconnect(self, identity: bytes, msg: Message) -> None:
        w = self._workers.get(identity)
        if w is None:
            self.counters["backend.disconnect-unknown"] += 1
            return
        self._evict(w, "disconnect")

    def _evict(self, w: Worker, why: str) -> None:
        if self._workers.pop(w.identity, None) is None:
            return
        w.credit = 0
        entries = [self._entries[t] for t in w.inflight if t in self._entries]
        w.inflight.clear()
        self.counters[f"worker.{why}"] += 1
        # A worker that says goodbye with nothing in hand is routine, not a warning.
        level = logging.INFO if why == "disconnect" and not entries else logging.WARNING
        log.log(level, "worker %s removed (%s); %d tasks go back to the queue",
                w.name, why, len(entries))
        if why == "expired":  # a slow worker learns it must register again
            self._send(self.backend, w.identity, encode(Cmd.DISCONNECT))
        self._requeue(entries, f"worker {w.name} {why}")

    # -- control: operators (brokers/operator.py) ---------------------------------------
    def _on_status_req(self, identity: bytes, msg: Message) -> None:
        self._send(self.control, identity, encode(Cmd.STATUS, self.status()))

    def status(self) -> dict[str, Any]:
        """The figures STATUS reports (brokers/operator.py)."""
        return self._operator.status(self._sink is not None)

    # -- any socket ---------------------------------------------------------------------
    def _on_nothing(self, identity: bytes, msg: Message) -> None:
        return None

    def _on_peer_error(self, identity: bytes, msg: Message) -> None:
        self.counters["peer-error"] += 1
        log.warning("peer %s sent ERROR %s: %s", identity.hex(), msg.header["code"],
                    msg.header["reason"])


# -- entry point --------------------------------------------------------------------------
def serve(config: BrokerConfig, ready: Callable[[], None] | None = None,
          stop: threading.Event | None = None, *, broker: Broker | None = None,
          on_pass: Callable[[], None] | None = None) -> int:
    """Entry point for `pipeline broker`: bind, call `ready`, run until `stop`; exit code.
    Closes the broker it made; a `broker` passed in is the caller's to close."""
    own = broker is None
    b = Broker(config) if broker is None else broker
    try:
        try:
            b.bind()
        except zmq.ZMQError as exc:
            log.error("broker: cannot bind: %s", exc)
            return 1
        b.run(ready=ready, stop=stop, on_pass=on_pass)
    finally:
        if own:
            b.close()
    c = b.counters
    log.info("broker stopped: %d accepted, %d dispatched, %d committed, %d malformed",
             c["accepted"], c["dispatched"], c["decided.committed"], c["malformed"])
    return 0
