"""Hostile input: at least 10,000 malformed messages (hypothesis) to each of the broker's
frontend, backend and control sockets and the sink's updates and sync sockets, over real
ipc:// sockets to real processes (a Cluster). Then: every process is alive, every message
was counted as malformed in the STATUS counters, and a normal workload still completes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipeline import Producer, Status
from pipeline.protocol import SCHEMA, Cmd, decode, encode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PER_SOCKET = int(os.environ.get("FUZZ_PER_SOCKET", "10000"))
BATCH = 50
KNOWN = {int(c) for c in Cmd}
SAMPLE = {list: [], str: "x", int: 1, dict: {}}
INTS = st.integers(-2**40, 2**40)
VALUES = st.one_of(st.none(), st.booleans(), INTS, st.floats(allow_nan=False),
                   st.text(max_size=8), st.binary(max_size=8), st.lists(INTS, max_size=3),
                   st.dictionaries(st.text(max_size=4), INTS, max_size=3))

# Commands each socket acts on; anything else (or these, broken) is malformed there.
ACCEPTS = {
    "frontend": {Cmd.SUBMIT, Cmd.HEARTBEAT, Cmd.DISCONNECT, Cmd.ERROR},
    "backend": {Cmd.READY, Cmd.HEARTBEAT, Cmd.DISCONNECT, Cmd.ERROR},
    "control": {Cmd.HELLO, Cmd.DECISION, Cmd.BLOCKED, Cmd.UNBLOCKED, Cmd.STATUS_REQ,
                Cmd.HEARTBEAT, Cmd.DLQ_LIST, Cmd.DLQ_REQUEUE, Cmd.DLQ_PURGE, Cmd.ERROR},
    "updates": {Cmd.UPDATE},
    "sync": {Cmd.SNAPSHOT_REQ, Cmd.UNBLOCK, Cmd.STATUS_REQ, Cmd.HEAVY_REQ},
}


def _good_header(cmd: Cmd) -> dict[str, Any]:
    return {name: SAMPLE[typ if isinstance(typ, type) else typ[0]]
            for name, typ in SCHEMA[cmd].items()}


def _wrong(typ: Any) -> Callable[[Any], bool]:
    return lambda v: v is None or not isinstance(v, typ) or (typ is int and isinstance(v, bool))


@st.composite
def broken_header(draw: st.DrawFn, cmd: Cmd) -> bytes:
    """A header missing a required field or holding one of the wrong type."""
    header = _good_header(cmd)
    name = draw(st.sampled_from(sorted(header)))
    if draw(st.booleans()):
        del header[name]
    else:
        header[name] = draw(VALUES.filter(_wrong(SCHEMA[cmd][name])))
    return bytes(msgpack.packb(header))


def malformed(where: str) -> st.SearchStrategy[list[bytes]]:
    cmds = sorted(Cmd)
    with_fields = [c for c in cmds if SCHEMA[c]]
    wrong = [c for c in cmds if c not in ACCEPTS[where] and c is not Cmd.ERROR]
    junk = st.binary(max_size=24)
    not_a_map = st.one_of(junk.map(lambda b: b"\xc1" + b),
                          VALUES.filter(lambda v: not isinstance(v, dict)).map(msgpack.packb),
                          st.just(msgpack.packb({1: 2})))
    return st.one_of(
        junk.map(lambda b: [b]),  # one frame
        st.tuples(st.binary(max_size=6).filter(lambda b: len(b) != 2), junk).map(list),
        st.tuples(st.integers(2, 255), st.sampled_from(cmds), junk).map(
            lambda t: [bytes((t[0], t[1])), t[2]]),  # unknown version
        st.tuples(st.integers(0, 255).filter(lambda c: c not in KNOWN), junk).map(
            lambda t: [bytes((1, t[0])), t[1]]),  # unknown command
        st.tuples(st.sampled_from(cmds), not_a_map).map(lambda t: [bytes((1, t[0])), t[1]]),
        st.sampled_from(with_fields).flatmap(
            lambda c: broken_header(c).map(lambda h: [bytes((1, c)), h])),
        st.sampled_from(wrong).map(lambda c: encode(c, _good_header(c))),  # wrong socket
    )


def _send_fuzz(sock: zmq.Socket[Any], where: str) -> int:
    """Send at least PER_SOCKET malformed messages drawn by hypothesis; return the count."""
    sent = [0]

    @settings(max_examples=PER_SOCKET // BATCH + 5, deadline=None, database=None,
              phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(malformed(where), min_size=BATCH, max_size=BATCH))
    def send(batch: list[list[bytes]]) -> None:
        for frames in batch:
            sock.send_multipart(frames)
        sent[0] += len(batch)

    while sent[0] < PER_SOCKET:
        send()
    return sent[0]


class Admin:
    """STATUS requests to the broker (control) and the sink (sync)."""

    def __init__(self, ctx: zmq.Context[Any], cluster: Any) -> None:
        self.socks = {}
        for role, ep in (("broker", cluster.endpoints.control), ("sink", cluster.endpoints.sync)):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(ep)
            self.socks[role] = sock

    def status(self, role: str) -> dict[str, Any]:
        sock = self.socks[role]
        sock.send_multipart(encode(Cmd.STATUS_REQ))
        assert sock.poll(5000), f"no STATUS from the {role}"
        return decode(sock.recv_multipart()).header

    def malformed(self, role: str) -> int:
        s = self.status(role)
        if role == "broker":
            assert "internal-error" not in s["counters"], s["counters"]
            return int(s["counters"].get("malformed", 0))
        return sum(s["malformed"].values())

    def wait_count(self, role: str, expected: int, timeout_s: float = 30.0) -> int:
        deadline = time.monotonic() + timeout_s
        while (got := self.malformed(role)) < expected and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a figure, not synchronising: the deadline bounds it
        return got


def test_malformed_floods_are_counted_and_survived(cluster_factory: Any, tmp_path: Path) -> None:
    cluster = cluster_factory(workers=1, log_dir=str(tmp_path / "logs")).start()
    ep = cluster.endpoints
    ctx: zmq.Context[Any] = zmq.Context()
    targets = [("broker", "frontend", zmq.DEALER, ep.frontend),
               ("broker", "backend", zmq.DEALER, ep.backend),
               ("broker", "control", zmq.DEALER, ep.control),
               ("sink", "updates", zmq.PUSH, ep.updates),
               ("sink", "sync", zmq.DEALER, ep.sync)]
    try:
        admin = Admin(ctx, cluster)
        for role, where, kind, endpoint in targets:
            before = admin.malformed(role)
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            started = time.monotonic()
            n = _send_fuzz(sock, where)
            got = admin.wait_count(role, before + n)
            sock.close(linger=0)
            print(f"fuzz {where}: {n} malformed messages in {time.monotonic() - started:.1f}s")
            assert got == before + n, (where, n, got - before)
        assert all(c.alive() for c in cluster.children())
        _workload_completes(cluster)
        for sock in admin.socks.values():
            sock.close(linger=0)
    finally:
        ctx.destroy(linger=0)


def _workload_completes(cluster: Any) -> None:
    with Producer(cluster.endpoints.frontend) as producer:
        handles = [producer.submit("increment", by=1) for _ in range(200)]
        decisions = producer.results(handles, timeout=60)
    bad = [(d.status, d.reason) for d in decisions if d.status is not Status.COMMITTED]
    assert not bad, bad[:5]
