"""The sink supervisor: the only writer of the state.

One thread, one poller:

    updates  PULL   <- workers   UPDATE (passed to the engine as raw header bytes)
    events   PUB    -> everyone  COMMIT
    sync     ROUTER <- clients   SNAPSHOT_REQ / UNBLOCK / STATUS_REQ
    control  DEALER -> broker    HELLO, DECISION, BLOCKED, UNBLOCKED

Each pass drains up to `batch_max` UPDATE messages and hands them to the Rust engine in
one `apply_batch` call (decode, de-duplicate, contract, audit, compare-and-swap, journal,
all without the GIL). The commits are published, then the decisions go to the broker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import zmq

from pipeline import protocol as proto
from pipeline._engine import Batch, Engine
from pipeline.api import HEAVY_PREFIX, ProcessSpec, load_app
from pipeline.config import SinkConfig
from pipeline.errors import DecodeError, HeavyError
from pipeline.heavy import HeavyAllocator, HeavyReader, HeavyStore, descriptor
from pipeline.heavy.names import namespace_dir
from pipeline.heavy.remote import c_strides, check_blob, placeholder_layout
from pipeline.protocol import Cmd
from pipeline.security import apply_curve, stamp_identity
from pipeline.sockets import recv_frames, send_frames

if TYPE_CHECKING:
    from pipeline.metrics import TimedEngine

log = logging.getLogger(__name__)

RECLAIM_INTERVAL_S = 5.0
# PIPELINE_FAULT=crash-after-journal makes the sink die right after a batch that committed
# is journaled and before anything is published: the crash the outbox must survive.
FAULT_EXIT = 70


class Sink:
    # the Rust engine, or the same wrapped for metrics (`serve_sink` in pipeline/roles.py)
    engine: Engine | TimedEngine

    def __init__(self, config: SinkConfig, specs: dict[str, ProcessSpec] | None = None,
                 ctx: zmq.Context[Any] | None = None) -> None:
        self.config = config
        self.specs = specs if specs is not None else load_app(config.app)
        self.engine = Engine(config.journal_dir, fsync=config.fsync,  # type: ignore[arg-type]
                             fsync_interval_ms=config.fsync_interval_ms,
                             strict=config.strict, recipes=config.recipes,
                             heavy_dir=str(namespace_dir(config.namespace)),
                             dedup_window_ms=round(config.dedup_window_s * 1000),
                             dedup_max_entries=config.dedup_max_entries)
        for spec in self.specs.values():
            self.engine.register(spec.name, list(spec.inputs), list(spec.outputs))
        self._fault = os.environ.get("PIPELINE_FAULT")
        self.heavy = HeavyStore(config.namespace)
        self._vetted: dict[bytes, str | None] = {}
        # Heavy arrays from workers on other hosts (blob frames): placed in segments made
        # here, and served to them (HEAVY_REQ) through reader leases. Both made on first use.
        self._placer: HeavyAllocator | None = None
        self._placed: set[bytes] = set()
        self._refused = 0
        self._server: HeavyReader | None = None
        self._reattach()
        self._next_reclaim = time.monotonic() + RECLAIM_INTERVAL_S
        self.ctx = ctx or zmq.Context()
        self._own_ctx = ctx is None
        self.counters: dict[str, int] = {"updates": 0, "commits": 0, "batches": 0}
        self.malformed: dict[str, int] = {}
        self.stop_reason: str | None = None
        self._releasing = True  # False after a failed SUBMIT: leave the rest to a restart
        self._sockets()
        self._release_unreleased()

    def _sockets(self) -> None:
        ep = self.config.endpoints
        self.updates = self._socket(zmq.PULL, ep.updates, bind=True)
        self.events = self._socket(zmq.PUB, ep.events, bind=True)
        self.sync = self._socket(zmq.ROUTER, ep.sync, bind=True)
        self.sync.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.control = self._socket(zmq.DEALER, ep.control, bind=False)
        self.control.send_multipart(proto.encode(
            Cmd.HELLO, {"role": "sink", "versions": list(proto.SUPPORTED_VERSIONS)}))
        self.poller = zmq.Poller()
        self.poller.register(self.updates, zmq.POLLIN)
        self.poller.register(self.sync, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)
        self.outbox = self._socket(zmq.DEALER, ep.frontend, bind=False)
        self.poller.register(self.outbox, zmq.POLLIN)

    def _socket(self, kind: int, endpoint: str, *, bind: bool) -> zmq.Socket[Any]:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        if kind == zmq.PUB:
            sock.setsockopt(zmq.SNDHWM, 1_000_000)
        apply_curve(sock, self.config.curve, server=bind)
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
        return sock

    def _reattach(self) -> None:
        """After a restart, adopt the committed heavy segments, then free orphans."""
        state = proto.unpack(self.engine.snapshot())["state"]
        descs = {k: v[1] for k, v in state.items() if k.startswith(HEAVY_PREFIX)}
        for key, reason in self.heavy.reattach(descs).items():
            log.error("sink: committed heavy value %s is lost: %s", key, reason)
        self.heavy.reclaim()

    def close(self) -> None:
        self.engine.flush()
        self.engine.close()
        self.heavy.close()
        if self._placer is not None:
            self._placer.close()
        if self._server is not None:
            self._server.close()
        for sock in (self.updates, self.events, self.sync, self.control, self.outbox):
            sock.close(linger=2000)
        if self._own_ctx:
            self.ctx.term()

    # -- loop ------------------------------------------------------------------------------
    def run(self, ready: Callable[[], None] | None = None,
            stop: threading.Event | None = None) -> int:
        if ready is not None:
            ready()
        while (stop is None or not stop.is_set()) and self.stop_reason is None:
            self.run_once(50)
        if self.stop_reason is not None:
            log.error("sink: pipeline stopped by an S-level rule: %s", self.stop_reason)
            return 3
        return 0

    def run_once(self, timeout_ms: int = 50) -> None:
        for sock, _ in self.poller.poll(timeout_ms):
            if sock is self.updates:
                self._on_updates()
            elif sock is self.sync:
                self._drain_sync()
            elif sock is self.outbox:
                self._drain_outbox()
            else:
                self._drain_control()
        self.engine.tick()
        if time.monotonic() >= self._next_reclaim:
            self.heavy.reclaim()
            self._next_reclaim = time.monotonic() + RECLAIM_INTERVAL_S

    def _on_updates(self) -> None:
        """Decide the UPDATEs waiting, up to `batch_max` messages in one batch. A lone
        message (a lone task: the case whose latency counts) is known to be alone by one
        look at the socket (ZMQ_EVENTS) rather than by a receive failing with an exception
        (a few microseconds more); a burst is then drained until the socket is empty."""
        sock, frames = self.updates, []
        for n in range(self.config.batch_max):
            if n == 1 and not cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                break
            try:
                msg = self._recv_update(sock)
            except zmq.Again:
                break
            header = self._update_header(msg)
            if header is not None:
                frames.append(header)
        if frames:
            self._decide(frames)

    def _recv_update(self, sock: zmq.Socket[Any]) -> list[Any]:
        """One UPDATE. Header frames are returned as bytes; blob frames (heavy arrays from
        another host) stay zmq.Frames, so their bytes are copied once, into a segment, and
        not first into a bytes object."""
        msg = recv_frames(sock)
        head = proto.FIRST_BLOB_FRAME
        if self.config.curve is not None:
            # CURVE: the journal records the authenticated sender (see pipeline/security.py)
            return [*stamp_identity(msg[:head]), *msg[head:]]
        if len(msg) == 2:  # the usual UPDATE: prefix and header
            return [msg[0].bytes, msg[1].bytes]
        return [f.bytes for f in msg[:head]] + msg[head:]

    def _update_header(self, msg: list[bytes]) -> bytes | None:
        try:
            if len(msg) < 2:
                raise DecodeError("too-few-frames")
            if proto.decode_prefix(msg[0]) is not Cmd.UPDATE:
                raise DecodeError("unexpected-command")
        except DecodeError as exc:
            self._count_malformed(exc.reason)
            return None
        if len(msg) > proto.FIRST_BLOB_FRAME:
            return self._place_blobs(msg)
        if len(msg) > 2:
            self._vet(msg[2])
        return msg[1]

    def _vet(self, index: bytes) -> None:
        """Validate the heavy descriptors a worker lists in frame 2 of an UPDATE. The engine
        commits a heavy value only if its descriptor was vetted here without a reason."""
        try:
            descs = proto.unpack(index)
        except DecodeError as exc:
            self._count_malformed(exc.reason)
            return
        for desc in descs if isinstance(descs, list) else ():
            self._vet_one(desc)

    def _vet_one(self, desc: Any) -> None:
        try:
            self.heavy.vet(desc)
            reason = None
        except HeavyError as exc:
            reason = str(exc)
            self._count_malformed("heavy-descriptor")
        self._vetted[proto.pack(desc)] = reason

    # -- heavy arrays from workers on other hosts ---------------------------------------
    def _place_blobs(self, msg: list[Any]) -> bytes:
        """An UPDATE with blob frames: copy each blob a placeholder names into a segment of
        our own, put its descriptor in the placeholder's stead (vetted: we made it), and
        return the re-encoded header. A bad placeholder is replaced by a refusal marker
        vetted with the reason, so its update is rejected (rule "heavy"). A header that does
        not decode goes to the engine as it is (it reports the malformed update)."""
        try:
            header = proto.unpack(_frame_bytes(msg[1]))
            updates = header["updates"]
        except (DecodeError, KeyError, TypeError):
            return _frame_bytes(msg[1])
        used: set[int] = set()
        for update in updates if isinstance(updates, list) else ():
            heavy = update.get("heavy") if isinstance(update, dict) else None
            if not isinstance(heavy, dict):
                continue
            for key, value in heavy.items():
                if proto.is_placeholder(value):
                    heavy[key] = self._place(value, msg, used)
                else:
                    self._vet_one(value)
        return proto.pack(header)

    def _place(self, ph: dict[str, Any], msg: list[Any], used: set[int]) -> dict[str, Any]:
        try:
            index, dtype, shape = placeholder_layout(ph, len(msg), self.heavy.max_bytes)
            if index in used:
                raise HeavyError(f"blob frame {index} is named by two placeholders")
            used.add(index)
            blob = msg[index]
            buf = blob.buffer if isinstance(blob, zmq.Frame) else memoryview(blob)
            check_blob(buf.nbytes, dtype, shape)
            desc = self._segment_for(np.frombuffer(buf, dtype=dtype).reshape(shape))
        except HeavyError as exc:
            self._count_malformed("heavy-placeholder")
            return self._refusal(f"heavy frame refused: {exc}")
        packed = proto.pack(desc)
        self._vetted[packed] = None
        self.counters["heavy_placed"] = self.counters.get("heavy_placed", 0) + 1
        if not descriptor.is_inline(desc):
            self._placed.add(packed)
        return desc

    def _segment_for(self, src: np.ndarray) -> dict[str, Any]:
        """`src`'s bytes in a new segment of ours (or inline when small): the one copy."""
        if self._placer is None:
            self._placer = HeavyAllocator(self.config.namespace)
        if src.nbytes < self._placer.inline_threshold_bytes:
            return descriptor.encode_inline(src)
        arr = self._placer.alloc(src.shape, src.dtype)
        np.copyto(arr, src, casting="no")
        desc = self._placer.export(arr)
        del arr  # the allocator's lease goes with it: the store decides from here on
        return desc

    def _refusal(self, reason: str) -> dict[str, Any]:
        """An empty inline value standing for a refused placeholder, vetted with `reason`
        (`ns` makes each one unique, so each keeps its own reason)."""
        self._refused += 1
        marker = {"inline": b"", "dtype": "|u1", "shape": [0], "ns": f"refused-{self._refused}"}
        self._vetted[proto.pack(marker)] = reason
        return marker

    def _decide(self, frames: list[bytes]) -> None:
        vetted, self._vetted = self._vetted, {}
        placed, self._placed = self._placed, set()
        batch = self.engine.apply_batch(frames, vetted or None)
        if self._fault == "crash-after-journal" and batch.commits:
            os._exit(FAULT_EXIT)  # fault injection (tests): journaled, nothing published
        self.counters["batches"] += 1
        self.counters["updates"] += len(batch)
        self.counters["commits"] += batch.commits
        for reason in batch.malformed:
            self._count_malformed(reason)
        self._publish(batch)
        # After the publish: adopting segments and freeing superseded ones is bookkeeping of
        # this thread (the journal already holds the commit), not on the commit's path.
        self._settle_heavy(batch, vetted, placed)
        if self._releasing:
            self.engine.mark_released(self.engine.version)
        self._after_batch(batch)

    def _publish(self, batch: Batch) -> None:
        """The COMMIT (to every subscriber), the follow-up tasks, then the DECISION, with
        their index frames (docs/PROTOCOL.md, "The commit index", "The event index"), which
        come ready-made from the engine. Everything is built before the COMMIT goes, so
        that nothing but the follow-ups (usually none) stands between the two sends."""
        events, followups = batch.events, batch.followups
        decision = _indexed(Cmd.DECISION, batch.decisions, batch.commit_index)
        if events is not None:
            send_frames(self.events, _indexed(Cmd.COMMIT, events, batch.event_index))
        if followups:
            self._submit_followups(followups)
        self._send_control(decision)

    # -- outbox: follow-up tasks to the broker, re-release after a restart ----------------
    def _release_unreleased(self) -> None:
        """Publish what the journal committed after its last release mark (a crash between
        the journal write and the publish), then mark it released. Receivers drop repeats
        (subscribers by version, the broker by the follow-ups' deterministic ids)."""
        upto, events, followups = self.engine.unreleased()
        if events is not None:
            self.events.send_multipart(proto.encode_raw(Cmd.COMMIT, events))
        self._submit_followups(followups)
        if self._releasing:
            self.engine.mark_released(upto)

    def _submit_followups(self, tasks: list[bytes]) -> None:
        """SUBMIT committed follow-up tasks to the broker. If they cannot be queued, no
        more release marks are written: they and every later commit stay unreleased in the
        journal and go out again at the next start."""
        if not tasks:
            return
        header = {"tasks": [proto.unpack(t) for t in tasks]}
        try:
            self.outbox.send_multipart(proto.encode(Cmd.SUBMIT, header), zmq.NOBLOCK)
        except zmq.Again:
            log.error("sink: %d follow-up tasks not submitted (broker unreachable); they "
                      "are released again at the next start", len(tasks))
            self._releasing = False

    def _drain_outbox(self) -> None:
        """Replies to follow-up SUBMITs: ACCEPTED and RESULT need nothing; REJECTED is logged."""
        for msg in self._messages(self.outbox):
            if msg.cmd is Cmd.REJECTED:
                log.warning("sink: broker rejected follow-up tasks %s: %s",
                            msg.header.get("ids"), msg.header.get("reason"))

    def _messages(self, sock: zmq.Socket[Any]) -> Iterator[proto.Message]:
        """Decoded messages waiting on a DEALER (at most 1000 a pass); bad ones counted."""
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                yield proto.decode(frames)
            except DecodeError as exc:
                self._count_malformed(exc.reason)

    def _settle_heavy(self, batch: Batch, vetted: dict[bytes, str | None],
                      placed: set[bytes] | None = None) -> None:
        """Take ownership of committed segments (superseding older ones); free the rest,
        but only those whose descriptor passed vetting: a forged descriptor naming someone
        else's segment must not get it freed. Segments placed here from blob frames that
        did not commit (their update was dropped as malformed too) are freed as well."""
        placed = placed if placed is not None else set()
        for key, desc in batch.heavy_committed:
            placed.discard(desc)
            try:
                self.heavy.commit(key, proto.unpack(desc))
            except HeavyError as exc:
                log.error("sink: committed heavy value %s could not be adopted: %s", key, exc)
        for desc in batch.heavy_dropped:
            if desc in vetted and vetted[desc] is None:
                placed.discard(desc)
                self.heavy.reject(proto.unpack(desc))
        for desc in placed:
            self.heavy.reject(proto.unpack(desc))

    def _after_batch(self, batch: Batch) -> None:
        for process, reason in batch.newly_blocked:
            log.warning("sink: process %s blocked: %s", process, reason)
            self._send_control(proto.encode(Cmd.BLOCKED, {"process": process, "reason": reason}))
        if batch.stop is not None:
            self.stop_reason = batch.stop

    def _count_malformed(self, reason: str) -> None:
        self.malformed[reason] = self.malformed.get(reason, 0) + 1
        log.warning("sink: malformed update dropped (%s)", reason)

    def _send_control(self, frames: list[Any]) -> None:
        send_frames(self.control, frames)

    # -- sync socket -----------------------------------------------------------------------
    def _drain_sync(self) -> None:
        for _ in range(1000):
            try:
                frames = self.sync.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_sync(frames)

    def _on_sync(self, frames: list[bytes]) -> None:
        try:
            ident, rest = proto.split_envelope(frames)
            msg = proto.decode(rest)
        except DecodeError as exc:
            self._count_malformed(exc.reason)
            if len(frames) > 1:
                self._reply(frames[0], proto.error("malformed", exc.reason))
            return
        if msg.cmd is Cmd.SNAPSHOT_REQ:
            self._reply(ident, proto.encode_raw(Cmd.SNAPSHOT, self.engine.snapshot()))
        elif msg.cmd is Cmd.HEAVY_REQ:
            self._serve_heavy(ident, msg.header)
        elif msg.cmd is Cmd.UNBLOCK:
            self._unblock(ident, msg.header["process"])
        elif msg.cmd is Cmd.STATUS_REQ:
            self._reply(ident, proto.encode(Cmd.STATUS, self.status()))
        else:
            self._count_malformed("unexpected-command")
            self._reply(ident, proto.error("unexpected-command", msg.cmd.name))

    def _serve_heavy(self, ident: bytes, req: dict[str, Any]) -> None:
        """HEAVY_REQ {key, version}: the key's committed array as one blob frame, sent
        zero-copy from the segment under a reader lease (the segment is not freed while
        ZeroMQ still sends from it). The current value is served even when it is newer than
        the version asked for: the reply says which, and the worker's update then conflicts
        on that key and runs again. ERROR `not-found` when the key holds no array."""
        key, echo = req["key"], {"req": req.get("req")}
        got = self.engine.get(key) if key.startswith(HEAVY_PREFIX) else None
        if got is None:
            self._reply(ident, proto.encode(Cmd.ERROR, {
                "code": "not-found", "reason": f"no committed heavy value {key[:200]!r}",
                "supported": list(proto.SUPPORTED_VERSIONS), **echo}))
            return
        version, raw = got
        try:
            if self._server is None:
                self._server = HeavyReader(self.config.namespace)
            arr = np.ascontiguousarray(self._server.open_array(proto.unpack(raw)))
        except (HeavyError, DecodeError) as exc:
            self._reply(ident, proto.encode(Cmd.ERROR, {
                "code": "heavy", "reason": str(exc), "supported": list(proto.SUPPORTED_VERSIONS),
                **echo}))
            return
        self.counters["heavy_served"] = self.counters.get("heavy_served", 0) + 1
        header = {"key": key, "version": version, "dtype": arr.dtype.str,
                  "shape": list(arr.shape), "strides": c_strides(arr.shape, arr.itemsize),
                  **echo}
        self._reply(ident, proto.encode(Cmd.HEAVY, header, arr), copy=False)

    def _unblock(self, ident: bytes, process: str) -> None:
        was = self.engine.unblock(process)
        self._send_control(proto.encode(Cmd.UNBLOCKED, {"process": process}))
        self._reply(ident, proto.encode(Cmd.STATUS, {"role": "sink", "unblocked": was}))

    def _reply(self, ident: bytes, frames: list[Any], *, copy: bool = True) -> None:
        try:
            self.sync.send_multipart([ident, *frames], zmq.NOBLOCK, copy=copy)
        except (zmq.Again, zmq.ZMQError) as exc:
            log.warning("sink: reply to a sync client failed: %s", exc)

    def _drain_control(self) -> None:
        for msg in self._messages(self.control):
            if msg.cmd is Cmd.ERROR:
                log.warning("sink: broker reported %s", msg.header.get("reason"))

    def status(self) -> dict[str, Any]:
        return {
            "role": "sink", "version": self.engine.version, "blocked": self.engine.blocked(),
            "counters": dict(self.counters), "malformed": dict(self.malformed),
            "time": time.time(), "journal_bytes": _dir_bytes(self.config.journal_dir),
            "heavy": self.heavy.stats(), "dedup": self.engine.dedup_stats(),
        }


def _indexed(cmd: Cmd, header: bytes, index: bytes | None) -> list[Any]:
    """The frames of a message whose header the engine encoded, with its index frame when
    the batch has one (docs/PROTOCOL.md)."""
    frames = proto.encode_raw(cmd, header)
    if index is not None:
        frames.append(index)
    return frames


def _frame_bytes(frame: Any) -> bytes:
    return frame.bytes if isinstance(frame, zmq.Frame) else frame


def _dir_bytes(path: str) -> int:
    """Bytes in the files of a directory (the journal's size on disk)."""
    total = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total
