"""The worker runtime: pure Python (never imports pipeline._engine).

One thread, one poller over four sockets:

    backend  DEALER -> broker   READY / HEARTBEAT  <-  DISPATCH / HEARTBEAT
    updates  PUSH   -> sink     UPDATE
    events   SUB    <- sink     COMMIT (keeps the state replica current; subscribed only
                                while the worker follows the stream, see `following`)
    sync     DEALER -> sink     SNAPSHOT_REQ  <-  SNAPSHOT

The worker asks for a snapshot, then tells the broker it is READY with its credit. Every
dispatched task runs through the one context factory; its StateUpdate (or its exception)
goes to the sink, and the credit goes back to the broker.

Liveness: a broker silent for `liveness` heartbeat intervals (or one that answers DISCONNECT
or ERROR unknown-worker) is left: the worker drops the tasks it has not run (the broker
dispatches them again), opens a new backend socket and sends a full READY, retrying with
exponential back-off and jitter. Drain: after `stop` is set the worker takes no new credit,
runs what it holds, sends the updates, then DISCONNECT (see `drain`).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from pipeline import protocol as proto
from pipeline.api import ProcessSpec, load_app
from pipeline.config import WorkerConfig
from pipeline.context import HeavyBackend, build_context, error_update, to_update
from pipeline.credit import CreditWindow
from pipeline.errors import DecodeError, UnknownProcessError
from pipeline.protocol import Cmd
from pipeline.replica import StateReplica
from pipeline.sockets import send_frames

log = logging.getLogger(__name__)

_COMMIT_PREFIX = bytes((proto.VERSION, Cmd.COMMIT))

AFTER_WAIT_S = 2.0  # run a task anyway if the replica has not caught up by then
STALE_AFTER_S = 0.1  # waiting this long for an `after` version triggers a resync
UNSENT_RETRY_S = 0.02  # a SNAPSHOT_REQ that found no live connection is tried again after
GATE_S = 0.2
STUCK_REPORT_S = 5.0  # a key written by an undecided update stays gated at most this long
RECONNECT_BASE_S = 0.1  # back-off before re-registering: base * 2^(n-1), jittered, capped
RECONNECT_MAX_S = 5.0
DRAIN_S = 10.0  # the most a graceful stop spends finishing held tasks
# A batch of held tasks runs at most about this long before its UPDATE goes, its credit is
# counted and the sockets are read again (heartbeats both ways): a worker holding a large
# credit of tasks that turned slow must not fall silent for seconds.
RUN_BUDGET_S = 0.02
# Exported heavy pages turn read-only (mprotect, O(pages)) when the commit of their update
# comes back, before any further task code runs, or at the latest this long after the send.
SEAL_WAIT_S = 0.05


class Worker:
    def __init__(self, config: WorkerConfig, specs: dict[str, ProcessSpec] | None = None,
                 heavy: HeavyBackend | None = None, ctx: zmq.Context[Any] | None = None) -> None:
        self.config = config
        self.specs = specs if specs is not None else load_app(config.app)
        self.ctx = ctx or zmq.Context()
        self._own_ctx = ctx is None
        self.heavy = heavy if heavy is not None else _default_heavy(config, self.ctx)
        # A worker on another host than the sink: heavy outputs travel as blob frames.
        self._blobs: Callable[[], list[Any]] | None = getattr(self.heavy, "take_frames", None)
        self.replica = StateReplica()
        # The keys our processes declare: the only ones a task here can read or write, so
        # the only ones the replica must keep current (see _skip_commit).
        self._interest = frozenset(k for spec in self.specs.values() for k in spec.keys)
        # Whether the worker follows the commit stream (subscribes to COMMIT). A worker whose
        # processes declare no key needs it only for the global version: until a task shows
        # that it does (`_follow_commits`), it does not subscribe, and the sink's PUB sends
        # it no COMMIT at all (docs/ARCHITECTURE.md, "Who follows the commit stream").
        self.following = bool(self._interest)
        self._version_read = False  # a process read ctx.version while we did not follow
        self.pending: deque[tuple[float, dict[str, Any]]] = deque()
        self.gate = KeyGate()
        self._stuck_reported = 0.0
        self.counters: dict[str, int] = {"tasks": 0, "errors": 0, "resyncs": 0, "malformed": 0,
                                         "snapshot.unsent": 0}
        self._buffered: list[dict[str, Any]] = []
        # Called with each batch of updates sent (pipeline.metrics.WorkerMetrics.on_batch).
        self.on_batch: Callable[[list[dict[str, Any]]], None] | None = None
        self._snapshot_sent = 0.0
        self._registered = False
        self._unsealed: set[str] = set()  # tasks whose exported arrays await their seal
        self._seal_by: float | None = None
        self._last_send = self._last_recv = time.monotonic()
        self._reconnects = 0  # consecutive re-registrations without hearing the broker
        self._register_at: float | None = None  # a re-registration waiting for its back-off
        self._draining = False
        # Credit for tasks run goes back once a quarter of it is owed (or with the next
        # heartbeat), resized to the worker's pace between `credit` and `max_credit`.
        self.credit = CreditWindow(config.credit, config.max_credit, time.monotonic())
        self._sockets()

    # -- sockets ---------------------------------------------------------------------------
    def _sockets(self) -> None:
        ep = self.config.endpoints
        self.backend = self._socket(zmq.DEALER, ep.backend)
        self.updates = self._socket(zmq.PUSH, ep.updates)
        self.events = self._socket(zmq.SUB, ep.events)
        if self.following:
            self.events.setsockopt(zmq.SUBSCRIBE, _COMMIT_PREFIX)
        # IMMEDIATE: a SNAPSHOT_REQ is queued only on a live connection. Without it, requests
        # repeated while the sink is down would pile up and each get a full snapshot once
        # it is back.
        self.sync = self._socket(zmq.DEALER, ep.sync, immediate=True)
        self.poller = zmq.Poller()
        for sock in (self.backend, self.events, self.sync):
            self.poller.register(sock, zmq.POLLIN)

    def _socket(self, kind: int, endpoint: str, *, immediate: bool = False) -> zmq.Socket[Any]:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        if immediate:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(endpoint)
        return sock

    def close(self) -> None:
        if self._registered:
            self._send_backend(Cmd.DISCONNECT, {})
        for sock in (self.backend, self.updates, self.events, self.sync):
            sock.close(linger=1000)
        close = getattr(self.heavy, "close", None)
        if close is not None:
            close()
        if self._own_ctx:
            self.ctx.term()

    # -- loop ------------------------------------------------------------------------------
    def run(self, ready: Callable[[], None] | None = None,
            stop: threading.Event | None = None) -> int:
        self.request_snapshot()
        announced = False
        while stop is None or not stop.is_set():
            self.run_once(100)
            if self._registered and not announced and ready is not None:
                ready()
                announced = True
        self.drain()
        log.info("worker %s stopping after %d tasks", self.config.name, self.counters["tasks"])
        return 0

    def drain(self, timeout_s: float = DRAIN_S) -> None:
        """Graceful stop: return no more credit, run the tasks held, send their updates.
        `close` then says DISCONNECT; the broker re-dispatches anything left undecided."""
        self._draining = True
        deadline = time.monotonic() + timeout_s
        while self.pending and self._registered and time.monotonic() < deadline:
            self.run_once(50)
        if self.pending:
            log.warning("worker: %d tasks left undone at stop", len(self.pending))

    def run_once(self, timeout_ms: int = 100) -> None:
        """One pass: receive what is ready, run runnable tasks, then housekeeping."""
        wait = 0 if self._runnable() else timeout_ms
        if self._seal_by is not None:
            wait = min(wait, max(0, math.ceil((self._seal_by - time.monotonic()) * 1000)))
        for sock, _ in self.poller.poll(wait):
            self._drain(sock)
        self._run_pending()
        if self._seal_by is not None and time.monotonic() >= self._seal_by:
            self._seal()
        self._housekeeping()

    def _drain(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            self._handle(sock, frames)

    def _handle(self, sock: zmq.Socket[Any], frames: list[bytes]) -> None:
        if len(frames) == 3 and sock is self.events and self._skip_commit(frames):
            return
        try:
            msg = proto.decode(frames)
        except DecodeError as exc:
            self.counters["malformed"] += 1
            log.warning("worker: malformed message dropped (%s)", exc.reason)
            return
        if sock is self.backend:
            self._last_recv = time.monotonic()
            self._reconnects = 0
        handler = self._handlers.get(msg.cmd)
        if handler is None:
            self.counters["malformed"] += 1
            log.warning("worker: unexpected command %s", msg.cmd.name)
            return
        try:
            handler(self, msg.header)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            # a well-framed message with bad content (a forged COMMIT or SNAPSHOT, say)
            self.counters["malformed"] += 1
            log.warning("worker: %s with bad content dropped (%s: %s)", msg.cmd.name,
                        type(exc).__name__, exc)

    # -- handlers --------------------------------------------------------------------------
    def _on_dispatch(self, header: dict[str, Any]) -> None:
        now, pending = time.monotonic(), self.pending
        for task in header["tasks"]:
            # the common well-formed task, checked with exact types (anything else takes
            # `check_task`, which also accepts heavy attachments)
            if (type(task) is dict and type(task.get("id")) is str
                    and type(task.get("process")) is str and type(task.get("args")) is dict
                    and task.get("heavy") is None):
                pending.append((now, task))
                continue
            try:
                pending.append((now, proto.check_task(task)))
            except DecodeError as exc:
                self.counters["malformed"] += 1
                self.credit.dropped(1)
                log.warning("worker: bad task in DISPATCH (%s)", exc.reason)

    def _follow_commits(self) -> None:
        """Subscribe to COMMIT (for good) and take a snapshot: the replica's version is
        current once it arrives (a commit published before the subscription took effect
        shows up as a gap, and a gap as a resync), and the stream keeps it so."""
        self.following, self._version_read = True, False
        self.counters["follow"] = self.counters.get("follow", 0) + 1
        log.info("worker %s: following the commit stream (a task needs the global "
                 "version)", self.config.name)
        self.events.setsockopt(zmq.SUBSCRIBE, _COMMIT_PREFIX)
        self.request_snapshot()

    def _on_commit(self, header: dict[str, Any]) -> None:
        self.gate.release(ev["task"] for ev in header["events"])
        if self._unsealed and not self._unsealed.isdisjoint(ev["task"] for ev in header["events"]):
            self._seal()
        if not self.replica.synced:
            self._buffered.extend(header["events"])
            return
        if not self.replica.apply(header["events"]):
            self.counters["resyncs"] += 1
            log.info("worker: gap in the commit stream at %d; resyncing", self.replica.version)
            self.request_snapshot()

    def _skip_commit(self, frames: list[bytes]) -> bool:
        """A COMMIT with an event index (docs/PROTOCOL.md) that writes none of the keys our
        processes declare, following our replica's version, while none of our updates
        waits for its commit (to free its keys or seal its arrays): take its versions
        without decoding its events. False, with
        nothing changed, when the header must be decoded."""
        if frames[0] != _COMMIT_PREFIX or not self.replica.synced or not self.gate.idle() \
                or self._unsealed:  # the commit of an update that exported arrays seals them
            return False
        index = proto.event_index(frames[2])
        if index is None:
            return False
        first, count, keys = index
        if keys and not self._interest.isdisjoint(keys):
            return False
        return self.replica.advance(first, count)

    def _on_snapshot(self, header: dict[str, Any]) -> None:
        if self.replica.synced and header["version"] <= self.replica.version:
            return  # an older reply to an earlier request: the stream is already past it
        self.replica.load_snapshot(header)
        buffered, self._buffered = self._buffered, []
        if not self.replica.apply(buffered):
            self.request_snapshot()
            return
        if not self._registered and self._register_at is None:  # not during a back-off
            self._register()

    def _on_heartbeat(self, header: dict[str, Any]) -> None:
        pass

    def _on_error(self, header: dict[str, Any]) -> None:
        log.warning("worker: peer reported error %s: %s", header["code"], header["reason"])
        if header["code"] == "unknown-worker" and self._registered:
            self._reregister("the broker does not know this worker")

    def _on_disconnect(self, header: dict[str, Any]) -> None:
        if self._registered:
            self._reregister("the broker sent DISCONNECT")

    _handlers: dict[Cmd, Callable[[Worker, dict[str, Any]], None]] = {
        Cmd.DISPATCH: _on_dispatch,
        Cmd.COMMIT: _on_commit,
        Cmd.SNAPSHOT: _on_snapshot,
        Cmd.HEARTBEAT: _on_heartbeat,
        Cmd.DISCONNECT: _on_disconnect,
        Cmd.ERROR: _on_error,
    }

    # -- work ------------------------------------------------------------------------------
    def request_snapshot(self) -> None:
        self.replica.synced = False
        self._snapshot_sent = time.monotonic()
        try:
            self.sync.send_multipart(proto.encode(Cmd.SNAPSHOT_REQ, {"keys": None}),
                                     zmq.NOBLOCK)
        except zmq.Again:  # no live connection to the sink yet: ask again shortly
            self.counters["snapshot.unsent"] += 1
            self._snapshot_sent -= self.config.snapshot_timeout_ms / 1000 - UNSENT_RETRY_S

    def _register(self) -> None:
        self._send_backend(Cmd.READY, {  # a fresh registration: the whole floor credit
            "credit": self.credit.register(time.monotonic()), "processes": sorted(self.specs),
            "name": self.config.name, "versions": list(proto.SUPPORTED_VERSIONS),
        })
        self._registered = True

    def _runnable(self) -> bool:
        return bool(self.pending) and self.replica.synced and any(
            self._ready(since, task, time.monotonic()) for since, task in self.pending)

    def _ready(self, since: float, task: dict[str, Any], now: float) -> bool:
        """A task runs once the replica has reached its `after` version and none of the
        keys its process declares is written by an update of ours still undecided."""
        if task.get("after", 0) > self.replica.version:
            if not self.following:
                # a retry after a conflict on the global version (`assert_version`, say):
                # a replica that does not follow the stream would not reach it
                self._follow_commits()
            if now - since < AFTER_WAIT_S:
                return False
        spec = self.specs.get(task["process"])
        return spec is None or not self.gate.blocks(spec, now)

    def _run_pending(self) -> None:
        if not self.replica.synced:
            return
        deferred: deque[tuple[float, dict[str, Any]]]  # an annotation only: no runtime cost
        updates, ran, deferred, now = [], [], deque(), time.monotonic()
        if self._blobs is not None:
            self._blobs()  # frames are numbered per UPDATE: drop any left from elsewhere
        pending, gate, version = self.pending, self.gate, self.replica.version
        held, wrote, seal = gate.held, False, True
        while pending:
            since, task = pending.popleft()
            # ready at once: no `after` beyond our version, and no key held (`_ready`)
            if (task.get("after", 0) > version or held) and not self._ready(since, task, now):
                deferred.append((since, task))
                if not self.replica.synced:  # `_ready` made us follow: wait for the snapshot
                    deferred.extend(pending)
                    pending.clear()
                continue
            if seal:  # no task code runs while an exported array is still writable
                self._seal()
                seal = False
            update = self.execute(task, check=False)
            arrays = update.get("heavy")  # absent from a plain update (docs/PROTOCOL.md)
            if update["data"] or arrays:  # later tasks of this batch must wait too
                gate.hold(update["task"], [*update["data"], *(arrays or ())], now + GATE_S)
                wrote = True
            # only a task that exported arrays (an error may have come after an export)
            # leaves something to seal before the next one runs
            seal = bool(arrays) or update.get("error") is not None
            updates.append(update)
            ran.append(task)
            if time.monotonic() - now >= RUN_BUDGET_S:  # the rest after the sockets are read
                break
        deferred.extend(pending)
        self.pending = deferred
        if self._version_read:
            self._follow_commits()  # a process read ctx.version: keep it current from now on
        if updates:
            frames = self._encode(updates, ran)
            self.counters["tasks"] += len(updates)
            if self.on_batch is not None:
                self.on_batch(updates)
            if len(frames) > proto.FIRST_BLOB_FRAME:
                # Zero-copy: ZeroMQ reads the (read-only, soon mprotected) arrays themselves
                # and holds a reference to each until its frame is on the wire.
                send_frames(self.updates, frames, copy=False)
            else:
                send_frames(self.updates, frames)
            if wrote:
                self._hold_written(updates)
            # Not sealed here: the mprotect (O(pages), 2 ms per 100 MB) could hold up ZeroMQ's
            # I/O thread, which may not have sent the UPDATE yet (under load the sink got it
            # only once the seal had ended). The commit coming back proves it was sent.
            heavy = {u["task"] for u in updates if u.get("heavy")}
            if heavy:
                self._unsealed |= heavy
                if self._seal_by is None:
                    self._seal_by = time.monotonic() + SEAL_WAIT_S
            done = time.monotonic()
            if not self._draining and self.credit.ran(len(updates), done, done - now):
                self._return_credit()

    def _return_credit(self) -> bool:
        """READY with the credit owed (resized); False when none went (the window shrank
        by what was owed)."""
        give = self.credit.take()
        if give:
            self._send_backend(Cmd.READY, {"credit": give})
        return give > 0

    def _hold_written(self, updates: list[dict[str, Any]]) -> None:
        """Gate the keys these updates write until their commits come back (or time out):
        held as each task ran, the deadline now restarts from the send, however long the
        batch took."""
        deadline = time.monotonic() + GATE_S
        for update in updates:
            arrays = update.get("heavy")
            if update["data"] or arrays:
                self.gate.hold(update["task"], [*update["data"], *(arrays or ())], deadline)

    def _seal(self) -> None:
        self._unsealed.clear()
        self._seal_by = None
        if self.heavy is not None:
            self.heavy.seal()

    def execute(self, task: dict[str, Any], *, check: bool = True) -> dict[str, Any]:
        """Run one task; return its wire Update (or the error it raised). With `check`, a
        result that cannot be encoded becomes the error; the batch path checks it once per
        batch instead (`_encode`)."""
        started = time.perf_counter()
        try:
            update = self._run(task)
            if check:
                proto.pack(update)  # every value must cross the wire: fail here, not later
        except Exception as exc:  # the process's own failure is data for the sink
            update = self._failed(task, exc)
        update["worker"] = self.config.name
        update["args"] = task.get("args", {})
        update["run_us"] = int((time.perf_counter() - started) * 1e6)
        return update

    def _failed(self, task: dict[str, Any], exc: Exception) -> dict[str, Any]:
        self.counters["errors"] += 1
        log.info("task %s: process %s raised %s", task["id"], task["process"],
                 type(exc).__name__, extra={"task": task["id"]})
        return error_update(task, exc, traceback.format_exc(limit=20))

    def _encode(self, updates: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> list[Any]:
        """UPDATE frames for a batch. One encode for the whole batch; only when it fails is
        each update encoded alone, and one that cannot cross the wire becomes its error."""
        blobs = self._blobs() if self._blobs is not None else None
        try:
            return encode_updates(updates, blobs)
        except Exception:  # some process returned a value msgpack cannot carry
            for i, (update, task) in enumerate(zip(updates, tasks, strict=True)):
                try:
                    proto.pack(update)
                except Exception as exc:
                    bad = self._failed(task, exc)
                    bad.update(worker=update["worker"], args=update["args"],
                               run_us=update["run_us"])
                    updates[i] = bad
                    self.gate.release([task["id"]])  # it writes nothing now
            return encode_updates(updates, blobs)

    def _run(self, task: dict[str, Any]) -> dict[str, Any]:
        spec = self.specs.get(task["process"])
        if spec is None:
            raise UnknownProcessError(f"process {task['process']!r} is not loaded here")
        follows = self.following
        ctx = build_context(task, spec, self.replica, self.heavy, follows)
        result = spec.func(ctx, **task["args"])
        if not follows and ctx.base is not None:
            self._version_read = True  # the process read ctx.version (`_run_pending`)
        return to_update(ctx, result, self.heavy)

    # -- housekeeping ----------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        self.gate.sweep(now)
        interval = self.config.heartbeat_interval_ms / 1000
        # any message is a heartbeat: READY when credit goes back, else HEARTBEAT
        if self._registered and now - self._last_send > interval and (
                self._draining or not self.credit.owed or not self._return_credit()):
            self._send_backend(Cmd.HEARTBEAT, {})
        if self._registered and now - self._last_recv > interval * self.config.liveness:
            self._reconnect(now)
        if self._register_at is not None and now >= self._register_at and not self._draining:
            self._register_at = None
            self._last_recv = now  # the new connection gets a full liveness period
            self._register()
        if not self.replica.synced and now - self._snapshot_sent > \
                self.config.snapshot_timeout_ms / 1000:
            self.request_snapshot()
        self._report_stuck(now)
        if self.replica.synced and self._behind(now):
            # A task waits for a version our replica has not seen: a commit event was
            # missed (e.g. published while we were reconnecting to a restarted sink).
            self.counters["resyncs"] += 1
            self.request_snapshot()

    def _report_stuck(self, now: float) -> None:
        """Say so when held tasks have waited long: an operator sees why in the log."""
        if not self.pending or now - self.pending[0][0] < STUCK_REPORT_S or \
                now < self._stuck_reported + STUCK_REPORT_S:
            return
        self._stuck_reported = now
        since, task = self.pending[0]
        log.warning("worker %s: %d tasks waiting, oldest %.1fs (after=%s, replica v%d, "
                    "synced=%s, gated=%d keys)", self.config.name, len(self.pending),
                    now - since, task.get("after", 0), self.replica.version,
                    self.replica.synced, len(self.gate))

    def _behind(self, now: float) -> bool:
        if now - self._snapshot_sent < STALE_AFTER_S:
            return False
        return any(task.get("after", 0) > self.replica.version and now - since > STALE_AFTER_S
                   for since, task in self.pending)

    def _reregister(self, why: str) -> None:
        """Same connection, fresh registration: drop unrun tasks, READY with full credit."""
        log.warning("worker %s: %s; registering again", self.config.name, why)
        self._drop_pending()
        self._register()

    def _reconnect(self, now: float) -> None:
        """The broker fell silent: new backend socket, READY again after a jittered back-off."""
        self._reconnects += 1
        self.counters["reconnects"] = self.counters.get("reconnects", 0) + 1
        backoff = min(RECONNECT_MAX_S, RECONNECT_BASE_S * 2 ** (self._reconnects - 1))
        delay = backoff * random.uniform(0.5, 1.0)
        log.warning("worker %s: no word from the broker for %.1fs; reconnecting in %.2fs",
                    self.config.name, now - self._last_recv, delay)
        self._drop_pending()
        self.poller.unregister(self.backend)
        self.backend.close(linger=0)
        self.backend = self._socket(zmq.DEALER, self.config.endpoints.backend)
        self.poller.register(self.backend, zmq.POLLIN)
        self._registered = False
        self._register_at = now + delay

    def _drop_pending(self) -> None:
        if self.pending:
            self.counters["dropped"] = self.counters.get("dropped", 0) + len(self.pending)
            self.pending.clear()

    def _send_backend(self, cmd: Cmd, header: dict[str, Any]) -> None:
        send_frames(self.backend, proto.encode(cmd, header))
        self._last_send = time.monotonic()


def encode_updates(updates: list[dict[str, Any]], blobs: list[Any] | None = None) -> list[Any]:
    """UPDATE frames; heavy descriptors are also listed in frame 2 for the sink to vet.

    `blobs` (a worker on another host): the arrays that placeholders `{frame: i, ...}` name,
    appended from frame FIRST_BLOB_FRAME on; one no update refers to any more (its update
    became an error) is sent as an empty frame, so that the numbering holds."""
    heavy = [desc for u in updates if (h := u.get("heavy")) for desc in h.values()]
    frames = proto.encode(Cmd.UPDATE, {"updates": updates})
    if heavy or blobs:
        frames.append(proto.pack(heavy))
    if blobs:
        used = {d["frame"] for d in heavy if proto.is_placeholder(d)}
        frames.extend(blob if proto.FIRST_BLOB_FRAME + i in used else b""
                      for i, blob in enumerate(blobs))
    return frames


class KeyGate:
    """Keys written by this worker's updates that the sink has not committed yet.

    A task whose process declares such a key waits: run now, it would read the value from
    before our own pending write and conflict. A key is released by the commit event of the
    task that wrote it (only if that task still owns it), or at its deadline (the update may
    have been rejected, or have conflicted: no commit event comes then).
    """

    __slots__ = ("_by_task", "held")

    def __init__(self) -> None:
        # key -> (deadline, owning task); read only outside (empty: nothing is held)
        self.held: dict[str, tuple[float, str]] = {}
        self._by_task: dict[str, tuple[float, list[str]]] = {}

    def __len__(self) -> int:
        return len(self.held)

    def hold(self, task_id: str, keys: list[str], deadline: float) -> None:
        if keys:
            self._by_task[task_id] = (deadline, keys)
            for key in keys:
                self.held[key] = (deadline, task_id)

    def idle(self) -> bool:
        """Whether no update of ours waits for its commit."""
        return not self._by_task

    def release(self, task_ids: Any) -> None:
        if not self._by_task:
            return
        for tid in task_ids:
            held = self._by_task.pop(tid, None)
            if held is not None:
                self._drop(tid, held[1])

    def _drop(self, tid: str, keys: list[str]) -> None:
        for key in keys:
            owner = self.held.get(key)
            if owner is not None and owner[1] == tid:
                del self.held[key]

    def sweep(self, now: float) -> None:
        """Forget the holds whose deadline passed (their updates were never committed)."""
        for tid in [t for t, (deadline, _) in self._by_task.items() if deadline <= now]:
            self._drop(tid, self._by_task.pop(tid)[1])

    def blocks(self, spec: ProcessSpec, now: float) -> bool:
        """Whether a key of `spec`'s contract is held (its key set is built only then)."""
        if not self.held:
            return False
        for key in spec.keys:
            held = self.held.get(key)
            if held is not None and held[0] > now:
                return True
        return False


def _default_heavy(config: WorkerConfig, ctx: zmq.Context[Any]) -> HeavyBackend:
    from pipeline.heavy import remote

    if remote.is_remote(config.heavy_remote, config.endpoints.updates):
        log.info("worker %s: heavy arrays travel as frames (the sink is on another host)",
                 config.name)
        return remote.RemoteHeavy(ctx, config.endpoints.sync, namespace=config.namespace,
                                  cache_bytes=config.heavy_cache_bytes,
                                  max_message_bytes=config.max_message_bytes)
    from pipeline.heavy import HeavyAllocator

    return HeavyAllocator(config.namespace)
