"""The heavy zone end to end: arrays from producer to committed state and back, through
real processes and real shared memory, without a copy; forged descriptors refused."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from pipeline import Producer, Status, Subscriber
from pipeline import protocol as proto
from pipeline.aio import AsyncProducer
from pipeline.config import Endpoints
from pipeline.heavy import HeavyAllocator
from pipeline.heavy.names import namespace_dir
from pipeline.protocol import Cmd
from pipeline.runner import spawn, stop_children

pytestmark = pytest.mark.timeout(120)
APP = "tests.apps.frames"
RECIPE = str(Path(__file__).parent / "recipes" / "frames.toml")
N = 200_000  # 1.6 MB of float64: well above the inline threshold


def _state(cluster) -> tuple[Subscriber, Any]:
    sub = Subscriber(cluster.endpoints.events, cluster.endpoints.sync, from_version=0,
                     namespace=cluster.namespace)
    return sub, sub.next(timeout=10)


def _sink_status(cluster) -> dict[str, Any]:
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(cluster.endpoints.sync)
        sock.send_multipart(proto.encode(Cmd.STATUS_REQ, {}))
        assert sock.poll(10_000)
        return proto.decode(sock.recv_multipart()).header


def test_array_round_trip_is_zero_copy_and_read_only(cluster_factory):
    cluster = cluster_factory(app=APP, workers=2).start()
    frame = np.arange(N, dtype=np.float64)
    with Producer(cluster.endpoints.frontend, namespace=cluster.namespace) as producer:
        first = producer.submit("scale", heavy={"frame": frame}, factor=2.0).result(timeout=30)
        assert first.committed, first.reason
        second = producer.submit("total").result(timeout=30)  # reads heavy.scaled from state
        assert second.committed, second.reason
    sub, snap = _state(cluster)
    with sub:
        scaled = sub.array(snap, "heavy.scaled")
        assert np.array_equal(scaled, frame * 2)
        assert not scaled.flags.writeable
        with pytest.raises(ValueError):
            scaled[0] = 1.0
        assert snap.values["scaled_sum"] == float((frame * 2).sum())
        assert snap.values["frame_sum"] == float(frame.sum())
        del scaled


def test_async_producer_attaches_arrays(cluster_factory):
    cluster = cluster_factory(app=APP, workers=1).start()
    frame = np.arange(N, dtype=np.float64)

    async def main() -> Any:
        async with AsyncProducer(cluster.endpoints.frontend,
                                 namespace=cluster.namespace) as producer:
            handles = await producer.submit_many("scale", [{"factor": 3.0}] * 2,
                                                 heavy={"frame": frame})
            return [await h.result(timeout=30) for h in handles]

    decisions = asyncio.run(asyncio.wait_for(main(), 60))
    assert all(d.committed for d in decisions), [d.reason for d in decisions]
    sub, snap = _state(cluster)
    with sub:
        scaled = sub.array(snap, "heavy.scaled")
        assert np.array_equal(scaled, frame * 3)
        assert snap.values["frame_sum"] == float(frame.sum())
        del scaled


def test_declared_heavy_inputs_always_arrive(cluster_factory):
    """INC-014: whatever path dispatched a task (first dispatch, or again after its worker
    was killed), its context carries the heavy inputs its contract declares."""
    cluster = cluster_factory(app=APP, workers=2, heartbeat_interval_ms=200).start()
    frame = np.ones(N)
    with Subscriber(cluster.endpoints.events, cluster.endpoints.sync) as sub:
        sub.wait_connected()
        with Producer(cluster.endpoints.frontend, namespace=cluster.namespace) as producer:
            handles = [producer.submit("inspect", heavy={"frame": frame}) for _ in range(60)]
            list(producer.as_completed(handles[:5], timeout=30))
            victim = cluster.worker_children[0]
            os.kill(victim.pid, signal.SIGKILL)
            victim.proc.wait()
            decisions = producer.results(handles[5:], timeout=60)
        assert all(d.committed for d in decisions)
        seen = [c.values["seen"] for c in sub.changes(timeout=2)]
    assert len(seen) == 60
    assert all(s == ["heavy.frame"] for s in seen)


def test_rejected_and_orphaned_segments_are_freed(cluster_factory):
    cluster = cluster_factory(app=APP, workers=1, recipes=RECIPE).start()
    with Producer(cluster.endpoints.frontend) as producer:
        ok = producer.submit("fill", n=N, value=1.0).result(timeout=30)
        assert ok.committed, ok.reason
        bad = [producer.submit("fill", n=N, value=500.0) for _ in range(5)]
        for d in producer.results(bad, timeout=30):
            assert d.status is Status.REJECTED and d.rule == "bounded"
    heavy = _sink_status(cluster)["heavy"]
    assert heavy["committed"] == 1
    assert heavy["segments"] == 1, heavy  # the rejected arrays went back to the pool


def test_sink_restart_keeps_committed_arrays_readable(cluster_factory):
    cluster = cluster_factory(app=APP, workers=1).start()
    with Producer(cluster.endpoints.frontend) as producer:
        assert producer.submit("fill", n=N, value=3.0).result(timeout=30).committed
    assert cluster.sink_child is not None
    os.kill(cluster.sink_child.pid, signal.SIGKILL)
    cluster.sink_child.proc.wait()
    cluster.start_sink()
    sub, snap = _state(cluster)
    with sub:
        arr = sub.array(snap, "heavy.result")
        assert arr.shape == (N,) and np.all(arr == 3.0)
        del arr
    assert _sink_status(cluster)["heavy"]["committed"] == 1


def test_worker_cannot_change_bytes_after_sending(cluster_factory):
    cluster = cluster_factory(app=APP, workers=1).start()
    with Producer(cluster.endpoints.frontend) as producer:
        assert producer.submit("fill", n=N, value=7.0, keep=True).result(timeout=30).committed
        tampered = producer.submit("tamper").result(timeout=30)
    assert tampered.status is Status.FAILED and tampered.error_type == "ValueError"
    sub, snap = _state(cluster)
    with sub:
        arr = sub.array(snap, "heavy.result")
        assert np.all(arr == 7.0)
        del arr


# -- forged descriptors, sent straight to a real sink -----------------------------------
class FakeBroker:
    """Binds the broker's control endpoint to read the sink's decisions."""

    def __init__(self, ctx: zmq.Context, ep: Endpoints) -> None:
        self.control = ctx.socket(zmq.ROUTER)
        self.control.bind(ep.control)
        self.push = ctx.socket(zmq.PUSH)
        self.push.connect(ep.updates)

    def decide(self, update: dict[str, Any], index: list[Any] | None) -> dict[str, Any] | None:
        """The sink's decision, or None if it dropped the update as malformed."""
        frames = proto.encode(Cmd.UPDATE, {"updates": [update]})
        if index is not None:
            frames.append(proto.pack(index))
        return self.exchange(frames)

    def exchange(self, frames: list[Any]) -> dict[str, Any] | None:
        """Push one UPDATE message; the first decision of the sink's DECISION for it."""
        self.push.send_multipart(frames, copy=False)
        while self.control.poll(10_000):
            msg = proto.decode(self.control.recv_multipart()[1:])
            if msg.cmd is Cmd.DECISION:
                return msg.header["decisions"][0] if msg.header["decisions"] else None
        raise AssertionError("no decision from the sink")

    def close(self) -> None:
        self.control.close(0)
        self.push.close(0)


def _forgeries(good: dict[str, Any], victim: dict[str, Any]) -> dict[str, dict[str, Any]]:
    def forged(**change: Any) -> dict[str, Any]:
        d = copy.deepcopy(good)
        d.update(change)
        return d

    return {
        "parent path": forged(seg="../../etc/passwd"),
        "slash in name": forged(seg=f"pool/{good['seg']}"),
        "nul byte": forged(seg=good["seg"] + "\x00x"),
        "offset past end": forged(off=1 << 40),
        "negative offset": forged(off=-8),
        "length overflow": forged(len=1 << 62),
        "length/shape mismatch": forged(len=good["len"] - 8),
        "object dtype": forged(dtype="|O"),
        "string dtype": forged(dtype="<U8"),
        "strides past bounds": forged(strides=[1 << 30]),
        "negative shape": forged(shape=[-1]),
        "stale generation": forged(gen=good["gen"] + 1),
        "other namespace": forged(ns="someone-else"),
        "segment deleted underneath": victim,
        "not a map": "heavy!",  # type: ignore[dict-item]
    }


def test_forged_descriptors_are_refused_and_the_sink_keeps_running(run_dir):
    ep = Endpoints.embedded(run_dir / "ep")
    ns = f"p{os.getpid()}-forge"
    ctx = zmq.Context()
    fake = FakeBroker(ctx, ep)
    alloc = HeavyAllocator(ns)
    sink = spawn("sink", ["--app", APP, "--journal", str(run_dir / "journal"), "--namespace",
                          ns, "--frontend", ep.frontend, "--backend", ep.backend, "--control",
                          ep.control, "--updates", ep.updates, "--events", ep.events, "--sync",
                          ep.sync])
    try:
        good = alloc.export(np.ones(N))
        victim = alloc.export(np.zeros(N))
        (namespace_dir(ns) / victim["seg"]).unlink()

        def update(task: str, desc: Any) -> dict[str, Any]:
            return {"task": task, "process": "fill", "attempt": 1, "worker": "evil",
                    "reads": {"heavy.result": 0}, "base": 0, "args": {}, "data": {},
                    "heavy": {"heavy.result": desc}, "error": None, "signals": [], "tasks": [],
                    "run_us": 1}

        dropped = []
        for i, (case, desc) in enumerate(_forgeries(good, victim).items()):
            d = fake.decide(update(f"forged-{i}", desc), [desc])
            if d is None:  # not even a descriptor's shape: the update is malformed
                dropped.append(case)
                continue
            assert (d["status"], d["rule"]) == ("rejected", "heavy"), (case, d)
            assert d["reason"], case
        # Wrong types (negative ints, a non-map, an object dtype) already fail the engine's
        # decoding of the update: dropped, counted and logged with the reason.
        assert set(dropped) <= {"negative offset", "negative shape", "not a map",
                                "object dtype", "length overflow"}, dropped
        with ctx.socket(zmq.DEALER) as admin:
            admin.connect(ep.sync)
            admin.send_multipart(proto.encode(Cmd.STATUS_REQ, {}))
            assert admin.poll(10_000)
            status = proto.decode(admin.recv_multipart()).header
            admin.close(0)
        assert sum(status["malformed"].values()) >= len(dropped)
        unvetted = fake.decide(update("unvetted", good), None)
        assert unvetted["status"] == "rejected" and "vetted" in unvetted["reason"]
        fine = fake.decide(update("fine", good), [good])
        assert fine is not None and fine["status"] == "committed", fine["reason"] if fine else None
        assert sink.alive()
    finally:
        stop_children([sink])
        alloc.close()
        fake.close()
        ctx.term()
        from pipeline.heavy import purge_namespace

        purge_namespace(namespace_dir(ns))
