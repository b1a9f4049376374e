"""An asyncio producer: submit tasks and await their decisions from coroutines.

    async with AsyncProducer("ipc:///run/pipeline/frontend.sock") as producer:
        handle = await producer.submit("increment", by=2)
        decision = await handle.result(timeout=5)

An AsyncProducer owns one zmq.asyncio DEALER socket and one background reader task, both
bound to the event loop that entered it. `submit` sends at once; the reader task resolves
each handle's future when its RESULT (or REJECTED) arrives, so any number of coroutines can
await their handles concurrently. Like the blocking `Producer`, every task is kept until its
decision arrives: tasks without an ACCEPTED are sent again (same ids) after `ack_timeout_s`
of silence, and every undecided task is sent again when the socket reconnects.
Heavy arrays are not supported here (use `Producer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from pipeline import protocol as proto
from pipeline.api import Decision
from pipeline.errors import DecodeError, PipelineError, TaskTimeout
from pipeline.ledger import LedgerViews, SubmitLedger, rejection, task_maps
from pipeline.protocol import Cmd

log = logging.getLogger(__name__)



class AsyncTaskHandle:
    """A submitted task: its id, and an awaitable decision."""

    __slots__ = ("_future", "id", "process")

    def __init__(self, task_id: str, process: str, future: asyncio.Future[Decision]) -> None:
        self.id = task_id
        self.process = process
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    async def result(self, timeout: float | None = None) -> Decision:
        """Wait for the decision; TaskTimeout if none arrives within `timeout` seconds.
        A timeout does not give the task up: awaiting again can still get its decision."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._future), timeout)
        except TimeoutError:
            raise TaskTimeout(f"no decision for task {self.id} within {timeout}s") from None

    def __repr__(self) -> str:
        return f"AsyncTaskHandle({self.id!r}, {self.process!r})"


class AsyncProducer(LedgerViews):
    def __init__(self, endpoint: str, *, ctx: zmq.asyncio.Context | None = None,
                 heavy: Any = None, namespace: str | None = None,
                 max_message_bytes: int = 256 * 1024 * 1024,
                 ack_timeout_s: float = 5.0) -> None:
        self.endpoint = endpoint
        self._heavy = heavy  # allocator for attachments, made on first use (as Producer)
        self._namespace = namespace or os.environ.get("PIPELINE_NAMESPACE", "default")
        self.ctx = ctx or zmq.asyncio.Context()
        self._own_ctx = ctx is None
        self._max_message_bytes = max_message_bytes
        self.ledger = SubmitLedger(ack_timeout_s)
        self._prefix = f"{uuid.uuid4().hex[:12]}-{os.getpid()}-"
        self._seq = itertools.count(1)
        self._futures: dict[str, asyncio.Future[Decision]] = {}
        self._lost = False
        self._sock: zmq.asyncio.Socket | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()  # set whenever the broker answers

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> AsyncProducer:
        """Connect and start the reader task (`async with` does this)."""
        if self._sock is not None:
            return self
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, 0)
        self._monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.endpoint)
        self._sock = sock
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        return self

    async def close(self) -> None:
        """Stop the reader, fail every handle still waiting, close the socket."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        self._fail_all(PipelineError("the producer was closed before the decision"))
        if self._sock is not None and self._monitor is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._sock.close(linger=2000)
            self._sock = self._monitor = None
        if self._heavy is not None and hasattr(self._heavy, "close"):
            self._heavy.close()
            self._heavy = None
        if self._own_ctx:
            self.ctx.term()

    async def __aenter__(self) -> AsyncProducer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- submitting ------------------------------------------------------------------------
    async def submit(self, process: str, /, *, heavy: Mapping[str, Any] | None = None,
                     task_id: str | None = None, **args: Any) -> AsyncTaskHandle:
        """Publish one task. `heavy` attaches numpy arrays (sent as shared-memory
        descriptors, as with Producer); `task_id` makes a resubmission idempotent."""
        ids = [task_id] if task_id else None
        return (await self.submit_many(process, [args], heavy=heavy, task_ids=ids))[0]

    async def submit_many(self, process: str, args_list: Iterable[Mapping[str, Any]], *,
                          heavy: Mapping[str, Any] | None = None,
                          task_ids: list[str] | None = None) -> list[AsyncTaskHandle]:
        """Publish many tasks of one process in one message. The arrays of `heavy` are
        exported here, in the caller's thread: each becomes read-only (an mprotect, about
        1-2 ms per 100 MB) before the call returns."""
        loop = asyncio.get_running_loop()
        tasks = task_maps(process, args_list, self._prefix, self._seq, task_ids,
                          partial(self._attach, heavy) if heavy else None)
        handles: list[AsyncTaskHandle] = []
        for task in tasks:
            tid = task["id"]
            future = self._futures.get(tid) or loop.create_future()
            self._futures[tid] = future
            handles.append(AsyncTaskHandle(tid, process, future))
        await self._send(tasks)
        return handles

    def _attach(self, heavy: Mapping[str, Any]) -> dict[str, Any]:
        if self._heavy is None:
            from pipeline.heavy import HeavyAllocator

            self._heavy = HeavyAllocator(self._namespace)
        return {name: self._heavy.export(arr) for name, arr in heavy.items()}

    async def _send(self, tasks: list[dict[str, Any]]) -> None:
        sock = self._socket()
        self.ledger.sent(tasks)
        await sock.send_multipart(proto.encode(Cmd.SUBMIT, {"tasks": tasks}))

    async def _resend(self, tasks: list[dict[str, Any]]) -> None:
        """Send tasks again under their ids (idempotent at the broker)."""
        sock = self._socket()
        for frames in self.ledger.resend_frames(tasks):
            await sock.send_multipart(frames)

    async def wait_accepted(self, timeout: float | None = None) -> None:
        """Wait until the broker has answered every task submitted so far (ACCEPTED, which
        with a journal means on its disk, REJECTED or a decision); TaskTimeout otherwise."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.unacked:
            self._progress.clear()
            left = None if deadline is None else deadline - time.monotonic()
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except TimeoutError:
                raise TaskTimeout(f"{len(self.unacked)} tasks not accepted within "
                                  f"{timeout}s") from None

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            raise PipelineError("AsyncProducer is not started: use `async with` or start()")
        return self._sock

    # -- the reader task -------------------------------------------------------------------
    async def _read_loop(self) -> None:
        sock, monitor = self._socket(), self._monitor
        poller = zmq.asyncio.Poller()
        poller.register(sock, zmq.POLLIN)
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        try:
            while True:
                ready = dict(await poller.poll(self._poll_ms()))
                if monitor is not None and ready.get(monitor):
                    await self._on_monitor(parse_monitor_message(await monitor.recv_multipart()))
                if ready.get(sock):
                    self._handle(await sock.recv_multipart())
                    self.ledger.heard = time.monotonic()
                overdue = self.ledger.overdue()
                if overdue:
                    await self._resend(overdue)
        except Exception as exc:  # a broken reader must not leave awaiters hanging
            log.exception("AsyncProducer reader failed")
            self._fail_all(PipelineError(f"the producer's reader failed: {exc!r}"))

    def _poll_ms(self) -> int:
        return int(min(1.0, self.ledger.ack_timeout_s) * 1000)

    async def _on_monitor(self, event: Mapping[str, Any]) -> None:
        if event["event"] == zmq.EVENT_DISCONNECTED:
            self._lost = True
        elif event["event"] == zmq.EVENT_CONNECTED and self._lost:
            self._lost = False
            await self._resend(self.ledger.outstanding())

    def _handle(self, frames: list[bytes]) -> None:
        commits = self.ledger.commits(frames)
        if commits is not None:  # plain commits, from the RESULT's commit index
            self._progress.set()
            for decision in commits:
                self._resolve(decision)
            return
        try:
            msg = proto.decode(frames)
        except DecodeError:
            return
        self._progress.set()
        if msg.cmd is Cmd.RESULT:
            for d in msg.header["decisions"]:
                self._decided(Decision.from_wire(d))
        elif msg.cmd is Cmd.ACCEPTED:
            self.ledger.accepted(msg.header["ids"])
        elif msg.cmd is Cmd.REJECTED:
            self._on_rejected(msg.header)

    def _decided(self, decision: Decision) -> None:
        self.ledger.settled(decision.task)
        self._resolve(decision)

    def _resolve(self, decision: Decision) -> None:
        future = self._futures.pop(decision.task, None)
        if future is not None and not future.done():
            future.set_result(decision)

    def _on_rejected(self, header: dict[str, Any]) -> None:
        exc = rejection(header)
        for tid in header["ids"]:
            if isinstance(tid, str):
                self.ledger.settled(tid)
                _fail(self._futures.pop(tid, None), exc)

    def _fail_all(self, exc: PipelineError) -> None:
        futures, self._futures = self._futures, {}
        for future in futures.values():
            _fail(future, exc)


def _fail(future: asyncio.Future[Decision] | None, exc: PipelineError) -> None:
    if future is None or future.done():
        return
    future.set_exception(exc)
    # Awaiting the handle still raises; a handle nobody awaits is not logged as an error.
    future.exception()
