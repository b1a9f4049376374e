"""Subscribers consume committed changes, in version order.

    with Subscriber(events_endpoint, sync_endpoint) as sub:
        for change in sub.changes(timeout=5):
            print(change.version, change.process, change.values)

A subscriber that starts from a version (`from_version`) or detects a gap asks the sink for a
snapshot and goes on from it; the snapshot is delivered as a `Change` with `resync=True`
holding every key.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from pipeline import protocol as proto
from pipeline.errors import DecodeError, TaskTimeout
from pipeline.protocol import Cmd

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Change:
    """One committed update (or, with `resync`, the whole state at `version`)."""

    version: int
    task: str
    process: str
    values: dict[str, Any]
    signals: list[dict[str, Any]] = field(default_factory=list)
    resync: bool = False

    @property
    def keys(self) -> list[str]:
        return list(self.values)

    @property
    def heavy_keys(self) -> list[str]:
        """Keys whose value is a heavy array (open them with `Subscriber.array`)."""
        return [k for k in self.values if k.startswith("heavy.")]


class Subscriber:
    def __init__(self, events: str, sync: str | None = None, *, from_version: int | None = None,
                 namespace: str | None = None, ctx: zmq.Context[Any] | None = None) -> None:
        self.ctx = ctx or zmq.Context()
        self._own_ctx = ctx is None
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, bytes((proto.VERSION, Cmd.COMMIT)))
        self.sub.connect(events)
        self.sync: zmq.Socket[Any] | None = None
        if sync is not None:
            self.sync = self.ctx.socket(zmq.DEALER)
            self.sync.setsockopt(zmq.LINGER, 0)
            self.sync.connect(sync)
        self.version = from_version if from_version is not None else -1
        self.namespace = namespace or os.environ.get("PIPELINE_NAMESPACE", "default")
        self._reader: Any = None
        self._queue: deque[Change] = deque()
        self._buffered: list[dict[str, Any]] = []
        self.malformed = 0
        self._resyncing = from_version is not None and self.sync is not None
        self._poller = zmq.Poller()
        self._poller.register(self.sub, zmq.POLLIN)
        if self.sync is not None:
            self._poller.register(self.sync, zmq.POLLIN)
        if self._resyncing:
            self._request_snapshot()

    def array(self, change: Change, key: str) -> Any:
        """A committed heavy value as a read-only zero-copy numpy array. The reader holds a
        lease on the segment while the array lives, so the sink does not free it."""
        if self._reader is None:
            from pipeline.heavy import HeavyReader

            self._reader = HeavyReader(self.namespace)
        return self._reader.open_array(change.values[key])

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self.sub.close()
        if self.sync is not None:
            self.sync.close()
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_connected(self, timeout: float = 5.0) -> None:
        """Block until the subscription is live (a snapshot round-trip proves the sink is
        reachable; PUB/SUB joins are asynchronous)."""
        if self.sync is None:
            return
        self._request_snapshot()
        self._resyncing = True
        self.next(timeout)

    def _request_snapshot(self) -> None:
        if self.sync is not None:
            self.sync.send_multipart(proto.encode(Cmd.SNAPSHOT_REQ, {"keys": None}))

    def next(self, timeout: float | None = None) -> Change:
        """The next change; raises TaskTimeout if none arrives in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._queue:
            left = 1000 if deadline is None else int((deadline - time.monotonic()) * 1000)
            if left <= 0:
                raise TaskTimeout(f"no committed change within {timeout}s")
            self._poll(left)
        return self._queue.popleft()

    def changes(self, timeout: float | None = None) -> Iterator[Change]:
        """Iterate changes until none arrives for `timeout` seconds (forever if None)."""
        while True:
            try:
                yield self.next(timeout)
            except TaskTimeout:
                return

    __iter__ = changes

    def _poll(self, timeout_ms: int) -> None:
        for sock, _ in self._poller.poll(timeout_ms):
            try:
                msg = proto.decode(sock.recv_multipart())
                if msg.cmd is Cmd.COMMIT:
                    self._on_events(msg.header["events"])
                elif msg.cmd is Cmd.SNAPSHOT:
                    self._on_snapshot(msg.header)
            except (DecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
                self.malformed += 1  # a forged or broken message: skipped, counted
                log.warning("subscriber: bad message dropped (%s)", exc)

    def _on_events(self, events: list[dict[str, Any]]) -> None:
        if self._resyncing:
            self._buffered.extend(events)
            return
        for ev in events:
            version = ev["version"]
            if version <= self.version:
                continue
            if self.version >= 0 and version != self.version + 1 and self.sync is not None:
                self._resyncing = True
                self._request_snapshot()
                return
            self.version = version
            self._queue.append(Change(version, ev["task"], ev["process"], ev["writes"],
                                      ev.get("signals") or []))

    def _on_snapshot(self, header: dict[str, Any]) -> None:
        if not self._resyncing:
            return
        self._resyncing = False
        self.version = header["version"]
        values = {k: v[1] for k, v in header["state"].items()}
        self._queue.append(Change(self.version, "", "", values, resync=True))
        buffered, self._buffered = self._buffered, []
        self._on_events(buffered)
