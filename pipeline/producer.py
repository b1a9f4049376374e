"""Producers publish tasks to the broker and collect their decisions.

    producer = Producer("ipc:///run/pipeline/frontend.sock")
    handle = producer.submit("increment", by=2)
    decision = handle.result(timeout=5)     # Decision(status=committed, version=...)

A Producer owns one DEALER socket and is used from one thread. Submissions are pipelined:
`submit` sends at once and returns a `TaskHandle`; acknowledgements and results are read
whenever any handle waits. Every task is kept until its decision arrives: tasks without an
ACCEPTED are sent again (same ids) when the broker has said nothing for `ack_timeout_s`,
and every undecided task is sent again when the socket reconnects (a restarted broker);
the broker accepts a known id again without queuing it twice.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from pipeline import protocol as proto
from pipeline.api import Decision
from pipeline.errors import DecodeError, PipelineError, TaskTimeout
from pipeline.ledger import LedgerViews, SubmitLedger, rejection, task_maps
from pipeline.protocol import Cmd
from pipeline.sockets import send_frames


class TaskHandle:
    """A submitted task: its id, and its decision once the sink has made it."""

    __slots__ = ("_producer", "id", "process")

    def __init__(self, producer: Producer, task_id: str, process: str) -> None:
        self._producer = producer
        self.id = task_id
        self.process = process

    def done(self) -> bool:
        self._producer.poll(0)
        return self.id in self._producer._decisions

    def result(self, timeout: float | None = None) -> Decision:
        """Wait for the decision (committed with its version, or why not)."""
        return self._producer.wait(self.id, timeout)

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r}, {self.process!r})"


class Producer(LedgerViews):
    def __init__(self, endpoint: str, *, ctx: zmq.Context[Any] | None = None,
                 heavy: Any = None, namespace: str | None = None,
                 max_message_bytes: int = 256 * 1024 * 1024,
                 ack_timeout_s: float = 5.0, keep_decisions: int = 1_000_000) -> None:
        self.ctx = ctx or zmq.Context()
        self._own_ctx = ctx is None
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self._monitor = self.sock.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.sock.connect(endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.ledger = SubmitLedger(ack_timeout_s)
        self._lost = False  # the connection dropped: resend everything on reconnect
        self._heavy = heavy
        self._namespace = namespace or os.environ.get("PIPELINE_NAMESPACE", "default")
        self._prefix = f"{uuid.uuid4().hex[:12]}-{os.getpid()}-"
        self._seq = itertools.count(1)
        self._decisions: dict[str, Decision] = {}
        # Decisions wait here until claimed (by handle or by task id). A fire-and-forget
        # producer never claims them: past `keep_decisions` the oldest are dropped.
        self._keep = keep_decisions
        self._rejected: dict[str, PipelineError] = {}

    def close(self) -> None:
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close(linger=2000)
        if self._heavy is not None and hasattr(self._heavy, "close"):
            self._heavy.close()
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submitting ------------------------------------------------------------------------
    def submit(self, process: str, /, *, heavy: Mapping[str, Any] | None = None,
               task_id: str | None = None, **args: Any) -> TaskHandle:
        """Publish one task. `heavy` attaches numpy arrays (sent as shared-memory
        descriptors); `task_id` makes a resubmission idempotent."""
        ids = [task_id] if task_id else None
        return self.submit_many(process, [args], heavy=heavy, task_ids=ids)[0]

    def submit_many(self, process: str, args_list: Iterable[Mapping[str, Any]], *,
                    heavy: Mapping[str, Any] | None = None,
                    task_ids: list[str] | None = None) -> list[TaskHandle]:
        """Publish many tasks of one process in one message."""
        tasks = task_maps(process, args_list, self._prefix, self._seq, task_ids,
                          partial(self._attach, heavy) if heavy else None)
        self._send(tasks)
        return [TaskHandle(self, t["id"], process) for t in tasks]

    def _attach(self, heavy: Mapping[str, Any]) -> dict[str, Any]:
        if self._heavy is None:
            from pipeline.heavy import HeavyAllocator
            self._heavy = HeavyAllocator(self._namespace)
        return {name: self._heavy.export(arr) for name, arr in heavy.items()}

    def _send(self, tasks: list[dict[str, Any]]) -> None:
        self.ledger.sent(tasks)
        send_frames(self.sock, proto.encode(Cmd.SUBMIT, {"tasks": tasks}))

    def _resend(self, tasks: list[dict[str, Any]]) -> None:
        """Send tasks again under their ids (idempotent at the broker)."""
        for frames in self.ledger.resend_frames(tasks):
            send_frames(self.sock, frames)

    # -- receiving -------------------------------------------------------------------------
    def poll(self, timeout_ms: int) -> int:
        """Read acknowledgements and results for up to `timeout_ms`; return messages read."""
        n = 0
        for sock, _ in self._poller.poll(timeout_ms):
            if sock is self.sock:
                n += self._drain()
            else:
                self._on_monitor(recv_monitor_message(self._monitor))
                n += 1
        overdue = self.ledger.overdue()
        if overdue:
            self._resend(overdue)
        return n

    def _drain(self) -> int:
        """Read every message waiting on the socket (no second poll to find them)."""
        n, sock, handle = 0, self.sock, self._handle
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            handle(frames)
            n += 1
        if n:
            self.ledger.heard = time.monotonic()
        return n

    def _on_monitor(self, event: Mapping[str, Any]) -> None:
        if event["event"] == zmq.EVENT_DISCONNECTED:
            self._lost = True
        elif event["event"] == zmq.EVENT_CONNECTED and self._lost:
            self._lost = False
            self._resend(self.ledger.outstanding())

    def _handle(self, frames: list[bytes]) -> None:
        commits = self.ledger.commits(frames)
        if commits is not None:  # plain commits, from the RESULT's commit index
            decisions = self._decisions
            for decision in commits:
                decisions[decision.task] = decision
            self._trim(decisions)
            return
        try:
            msg = proto.decode(frames)
        except DecodeError:
            return
        if msg.cmd is Cmd.RESULT:
            decisions = self._decisions
            for d in msg.header["decisions"]:
                try:
                    decision = Decision.from_wire(d)
                except (AttributeError, TypeError, ValueError):
                    continue  # not a decision map: nothing to deliver
                decisions[decision.task] = decision
                self.ledger.settled(decision.task)
            self._trim(decisions)
        elif msg.cmd is Cmd.ACCEPTED:
            self.ledger.accepted(msg.header["ids"])
        elif msg.cmd is Cmd.REJECTED:
            self._on_rejected(msg.header)

    def _trim(self, unclaimed: dict[str, Any]) -> None:
        """Drop the oldest unclaimed decisions past `keep_decisions` (dicts keep order)."""
        excess = len(unclaimed) - self._keep
        if excess > 0:
            for tid in list(itertools.islice(unclaimed, excess)):
                del unclaimed[tid]

    def _on_rejected(self, header: dict[str, Any]) -> None:
        exc = rejection(header)
        for tid in header["ids"]:
            if isinstance(tid, str):
                self._rejected[tid] = exc
                self.ledger.settled(tid)
        self._trim(self._rejected)

    def wait(self, task_id: str, timeout: float | None = None) -> Decision:
        deadline = None if timeout is None else time.monotonic() + timeout
        while task_id not in self._decisions:
            if task_id in self._rejected:
                raise self._rejected.pop(task_id)
            left = 1000 if deadline is None else int((deadline - time.monotonic()) * 1000)
            if left <= 0:
                raise TaskTimeout(f"no decision for task {task_id} within {timeout}s")
            self.poll(min(left, 1000))
        return self._decisions.pop(task_id)

    def as_completed(self, handles: Iterable[TaskHandle], timeout: float | None = None
                     ) -> Iterator[Decision]:
        """Yield decisions in the order they arrive; TaskTimeout if the deadline passes."""
        waiting = {h.id for h in handles}
        deadline = None if timeout is None else time.monotonic() + timeout
        while waiting:
            for tid in [t for t in self._decisions if t in waiting]:
                waiting.discard(tid)
                yield self._decisions.pop(tid)
            for tid in [t for t in self._rejected if t in waiting]:
                waiting.discard(tid)
                raise self._rejected.pop(tid)
            if not waiting:
                return
            left = 1000 if deadline is None else int((deadline - time.monotonic()) * 1000)
            if left <= 0:
                raise TaskTimeout(f"{len(waiting)} tasks without a decision after {timeout}s")
            self.poll(min(left, 200))

    def results(self, handles: Iterable[TaskHandle], timeout: float | None = None
                ) -> list[Decision]:
        """Wait for many decisions (one deadline for all)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out, decisions = [], self._decisions
        for h in handles:
            decision = decisions.pop(h.id, None)  # already here: what `wait` would return
            if decision is None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                decision = self.wait(h.id, left)
            out.append(decision)
        return out
